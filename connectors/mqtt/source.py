"""QoS 1 subscriptions as a partitioned Bytewax source, acknowledged after commit.

Each partition is one client with a persistent session and QoS 1
subscriptions to all the topics; a message is PUBACKed only once Bytewax has
committed the epoch it was emitted in (see the package documentation for the
delivery guarantees). At most about ``max_pending`` received messages wait
to be emitted: when the buffer is full the network thread stops reading the
socket (TCP pushes back to the broker), waking every ``keepalive/4`` s (at
most 1 s) to take one message so keepalive pings still flow; the bound is
therefore soft by one message per wait. ``next_batch`` never blocks.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Iterable, List, Optional, Tuple, Union

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from .connection import PROTOCOLS, MQTTConnection, Protocol
from .link import EventHook, Link, MQTTLinkStats
from .message import MQTTError, MQTTMessage

log = logging.getLogger("connectors.mqtt")

_SESSION_EXPIRY_S = 7 * 24 * 3600
_IDLE_POLL = timedelta(milliseconds=10)
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]+")

_Entry = Tuple[int, int, int]  # (mid, qos, session generation)


def check_client_id(client_id: str) -> None:
    """Refuse a client id that cannot name MQTT clients and share groups."""
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"client_id {client_id!r}: use 1 or more of A-Z a-z 0-9 _ -")


class _MQTTSourcePartition(StatefulSourcePartition[Union[MQTTMessage, MQTTError], None]):
    def __init__(self, source: MQTTSource, index: int) -> None:
        self._batch_size = source.batch_size
        self._max_pending = source.max_pending
        self._max_bytes = source.max_message_bytes
        self._v5 = source.protocol == "5"
        self._cond = threading.Condition()
        # Received, not yet emitted: (entry, item).
        self._buffer: deque[Tuple[_Entry, Union[MQTTMessage, MQTTError]]] = deque()
        # Emitted in the current epoch / before the last snapshot.
        self._emitted: List[_Entry] = []
        self._committable: List[_Entry] = []
        # (mid, generation) of every QoS>0 message held and not yet acked,
        # to skip the broker's redeliveries after a reconnect.
        self._held: set[Tuple[int, int]] = set()
        self._closing = False
        self._block_s = min(1.0, max(0.05, source.connection.keepalive / 4))
        client_id = source.client_id_for(index)
        self.stats = source.stats.setdefault(client_id, MQTTLinkStats())
        self._link = Link(
            source.connection,
            client_id,
            protocol=source.protocol,
            label=f"mqtt input #{index}",
            partition=f"in-{index}",
            persistent=True,
            resume_first=True,
            session_expiry=source.session_expiry,
            manual_ack=True,
            stats=self.stats,
            on_event=source.on_event,
        )
        # One session for all topics: the broker queues a disconnected
        # client's messages in one queue, in publish order across topics, so
        # a backlog (after an outage or a restart) comes back interleaved as
        # it was published instead of one topic after the other.
        plain = [(topic, 1) for topic in source.topics]
        shared = [(f"$share/{source.client_id}/{topic}", 1) for topic in source.topics]
        client = self._link.client
        if source.partitions == 1:
            # Plain subscriptions: restored with the session by a restarted
            # broker. Drop shared ones left by a run with more partitions
            # (UNSUBSCRIBE of an unknown filter is harmless).
            def after_connect(session_present: bool) -> None:
                if not session_present:
                    client.subscribe(plain)
                client.unsubscribe([f for f, _ in shared])
        else:
            # Mosquitto 2.0 does not restore shared subscriptions from its
            # persistence file although it reports the session present:
            # subscribe again on every connection (no retained messages
            # are sent for shared subscriptions, so this is harmless).
            def after_connect(session_present: bool) -> None:
                client.unsubscribe([f for f, _ in plain])
                client.subscribe(shared)

        self._link.after_connect = after_connect
        self._link.client.on_message = self._on_message
        self._link.start()

    # Paho's network thread.
    def _on_message(self, client, userdata, msg) -> None:
        gen = self._link.session_gen
        key = (msg.mid, gen)
        with self._cond:
            if msg.qos > 0 and key in self._held:
                self.stats.redeliveries_skipped += 1
                return
            # Stop reading the socket while the buffer is full, waking
            # now and then so paho can keep the connection alive.
            if len(self._buffer) >= self._max_pending and not self._closing:
                self._cond.wait(self._block_s)
            if msg.qos > 0:
                self._held.add(key)
            self._buffer.append(((msg.mid, msg.qos, gen), self._convert(msg)))

    def _convert(self, msg) -> Union[MQTTMessage, MQTTError]:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
            return MQTTError(MQTTMessage(topic, msg.payload), "topic is not UTF-8")
        props: Tuple[Tuple[str, str], ...] = ()
        if self._v5 and msg.properties is not None:
            props = tuple(getattr(msg.properties, "UserProperty", ()) or ())
        message = MQTTMessage(topic, bytes(msg.payload), props)
        size = len(message.payload)
        if self._max_bytes is not None and size > self._max_bytes:
            return MQTTError(message, f"too large: {size} bytes > max {self._max_bytes}")
        return message

    def _ack(self, entries: List[_Entry]) -> List[_Entry]:
        """PUBACK ``entries`` in order; return those that must wait for a connection."""
        if not entries:
            return entries
        if not self._link.connected:
            return entries  # acks queued now would be dropped by paho's reconnect
        gen = self._link.session_gen
        client = self._link.client
        with self._cond:
            for mid, qos, egen in entries:
                if qos > 0:
                    self._held.discard((mid, egen))
        acked = 0
        for mid, qos, egen in entries:
            if qos > 0 and egen == gen:
                client.ack(mid, qos)
                acked += 1
        log.debug("%s acknowledged %d messages", self._link.label, acked)
        return []

    def next_batch(self) -> List[Union[MQTTMessage, MQTTError]]:
        # Called only once the epoch of the last snapshot is committed.
        self._committable = self._ack(self._committable)
        with self._cond:
            self.stats.last_call = time.monotonic()
            self.stats.buffered = len(self._buffer)
            self.stats.unacked = len(self._held)
            n = min(self._batch_size, len(self._buffer))
            if n == 0:
                return []
            taken = [self._buffer.popleft() for _ in range(n)]
            self._cond.notify_all()
        self._emitted.extend(entry for entry, _ in taken)
        return [item for _, item in taken]

    def next_awake(self) -> Optional[datetime]:
        if self._buffer:
            return None
        return datetime.now(timezone.utc) + _IDLE_POLL

    def snapshot(self) -> None:
        # Anything before the previous snapshot is committed by now.
        waiting = self._ack(self._committable)
        self._committable = waiting + self._emitted
        self._emitted = []
        return None

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._link.stop()


class MQTTSource(FixedPartitionedSource[Union[MQTTMessage, MQTTError], None]):
    """QoS 1 subscriptions as a partitioned Bytewax source.

    Emits :class:`MQTTMessage`, or :class:`MQTTError` for a message larger
    than ``max_message_bytes`` (or with a topic that is not UTF-8). Partition
    keys are ``"in-<i>"``; each partition subscribes to every topic. The
    resume state is ``None``: the broker session is the resume state.

    Args:
        connection: The broker.
        topics: Plain topic names (no wildcards, not ``$...``).
        client_id: Stable identity: partition ``i`` is client
            ``<client_id>-in-<i>``, and ``<client_id>`` names the shared
            subscription group.
        partitions: 1 for plain subscriptions (publish order); more for
            shared subscriptions ``$share/<client_id>/<topic>``.
        max_pending: Received messages a partition buffers before it stops
            reading the socket.
        batch_size: Most messages per ``next_batch``.
        max_message_bytes: Larger payloads come out as :class:`MQTTError`.
        protocol: ``"3.1.1"`` (faster) or ``"5"`` (to receive user properties).
        session_expiry: MQTT 5 session expiry interval, seconds.
        on_event: ``on_event(event, client_id, detail)`` on each change of
            connection state.
    """

    def __init__(
        self,
        connection: MQTTConnection,
        topics: Iterable[str],
        *,
        client_id: str,
        partitions: int = 1,
        max_pending: int = 10_000,
        batch_size: int = 1000,
        max_message_bytes: Optional[int] = None,
        protocol: Protocol = "3.1.1",
        session_expiry: int = _SESSION_EXPIRY_S,
        on_event: Optional[EventHook] = None,
    ) -> None:
        self.connection = connection
        self.topics = list(topics)
        self.client_id = client_id
        self.partitions = partitions
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.protocol = protocol
        self.session_expiry = session_expiry
        self.on_event = on_event
        self.stats: dict[str, MQTTLinkStats] = {}
        """Counters per client id, filled as partitions start on this process."""
        check_client_id(client_id)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: use '3.1.1' or '5'")
        if partitions < 1 or max_pending < 1 or batch_size < 1:
            raise ValueError("partitions, max_pending and batch_size must be >= 1")
        if not self.topics:
            raise ValueError("no topics")
        for topic in self.topics:
            if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
                raise ValueError(f"topic {topic!r}: give a plain topic name (no wildcards, not $...)")

    def client_id_for(self, index: int) -> str:
        """Stable client id of partition ``index``."""
        return f"{self.client_id}-in-{index}"

    def list_parts(self) -> List[str]:
        return [f"in-{i}" for i in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _MQTTSourcePartition:
        return _MQTTSourcePartition(self, int(for_part.removeprefix("in-")))
