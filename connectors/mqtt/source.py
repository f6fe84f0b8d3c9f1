"""QoS 1 subscriptions as a partitioned Bytewax source, acknowledged after commit.

Each partition is one client with a persistent session and QoS 1
subscriptions to all the topics; a message is PUBACKed only once Bytewax has
committed the epoch it was emitted in (see the package documentation for the
delivery guarantees). At most ``max_unacked`` messages are held
unacknowledged at a time, so one partition reads at most that many per
epoch: with MQTT 5 the broker is asked to keep to it (Receive Maximum; a
broker's own in-flight limit then does not throttle), and in any case the
network thread stops reading the socket at the bound (TCP pushes back),
waking every ``keepalive/4`` s (at most 1 s) to take one message so
keepalive pings still flow. Mosquitto 2.0.11 keeps to the Receive Maximum
for the first window only and may then reuse packet ids still in flight:
a message is therefore skipped as a redelivery only when the broker marks it
DUP and its id is held, never for a reused id alone. ``next_batch`` never
blocks.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter, deque
from datetime import datetime, timedelta, timezone
from typing import Iterable, List, Optional, Tuple, Union

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from .connection import PROTOCOLS, MQTTConnection, Protocol, connect_preferring_v5
from .link import EventHook, Link, MQTTLinkStats, one_wake_up
from .message import MQTTError, MQTTMessage

log = logging.getLogger("connectors.mqtt")

_SESSION_EXPIRY_S = 7 * 24 * 3600
_IDLE_POLL = timedelta(milliseconds=10)
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]+")

_Entry = Tuple[int, int, int]  # (mid, qos, session generation)
MAX_RECEIVE_MAXIMUM = 65_535  # MQTT 5's limit, the 16-bit packet-id space


def check_client_id(client_id: str) -> None:
    """Refuse a client id that cannot name MQTT clients and share groups."""
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"client_id {client_id!r}: use 1 or more of A-Z a-z 0-9 _ -")


class _MQTTSourcePartition(StatefulSourcePartition[Union[MQTTMessage, MQTTError], None]):
    def __init__(self, source: MQTTSource, index: int) -> None:
        self._batch_size = source.batch_size
        self._max_unacked = source.max_unacked
        self._max_bytes = source.max_message_bytes
        self._cond = threading.Condition()
        # Received, not yet emitted: (entry, item).
        self._buffer: deque[Tuple[_Entry, Union[MQTTMessage, MQTTError]]] = deque()
        # Emitted in the current epoch / before the last snapshot.
        self._emitted: List[_Entry] = []
        self._committable: List[_Entry] = []
        # (mid, generation) -> how many QoS>0 messages with it are received
        # and not yet acked (a broker may reuse an id while it is in flight,
        # as mosquitto 2.0 does past 65535), to recognise redeliveries (DUP).
        self._held: Counter[Tuple[int, int]] = Counter()
        self._unacked = 0  # the sum of _held
        self._closing = False
        self._block_s = min(1.0, max(0.05, source.connection.keepalive / 4))
        self._index = index
        self._subscribed = threading.Event()
        client_id = source.client_id_for(index)
        self.stats = source.stats.setdefault(client_id, MQTTLinkStats())
        self._link, protocol = connect_preferring_v5(
            lambda p: self._open(source, client_id, p), source.protocol
        )
        if self._v5:
            self.stats.inflight_cap = self._max_unacked
        if not self._subscribed.wait(source.connection.connect_timeout):
            log.warning("%s: no SUBACK within %gs", self._link.label, source.connection.connect_timeout)

    def _open(self, source: MQTTSource, client_id: str, protocol: Protocol) -> Link:
        index = self._index
        link = Link(
            source.connection,
            client_id,
            protocol=protocol,
            label=f"mqtt input #{index}",
            partition=f"in-{index}",
            persistent=True,
            resume_first=True,
            session_expiry=source.session_expiry,
            # The broker then never has more unacknowledged deliveries for
            # us than this, however long the commit takes: packet ids (16
            # bits) are never reused while in flight, and a broker's own
            # in-flight limit (mosquitto: 20 by default) does not throttle.
            receive_maximum=self._max_unacked,
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
        client = link.client
        if source.partitions == 1:
            # Plain subscriptions: restored with the session by a restarted
            # broker. Drop shared ones left by a run with more partitions
            # (UNSUBSCRIBE of an unknown filter is harmless).
            def after_connect(session_present: bool) -> None:
                if session_present:
                    self._subscribed.set()
                else:
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

        link.after_connect = after_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        # Before start: a resumed session's messages come at once.
        self._link, self._v5 = link, protocol == "5"
        link.start()
        return link

    # Paho's network thread.
    def _on_message(self, client, userdata, msg) -> None:
        gen = self._link.session_gen
        key = (msg.mid, gen)
        with self._cond:
            # Only a DUP copy of a message still held is a redelivery: a
            # packet id alone may be reused by the broker once acked.
            if msg.qos > 0 and msg.dup and key in self._held:
                self.stats.redeliveries_skipped += 1
                return
            # Without a Receive Maximum (MQTT 3.1.1), stop reading the
            # socket at the bound, waking now and then so paho can keep the
            # connection alive.
            if self._unacked >= self._max_unacked and not self._closing:
                self._cond.wait(self._block_s)
            if msg.qos > 0:
                self._held[key] += 1
                self._unacked += 1
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
                if qos == 0:
                    continue
                key = (mid, egen)
                self._unacked -= 1
                if self._held[key] > 1:
                    self._held[key] -= 1
                else:
                    del self._held[key]
        acked = 0
        with one_wake_up(client):
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
            self.stats.unacked = self._unacked
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
        max_unacked: Most messages a partition holds unacknowledged (received,
            and not yet covered by a committed snapshot). With MQTT 5 it is
            the Receive Maximum the broker must respect, at most 65535 (the
            packet-id space); with 3.1.1 the partition stops reading at it.
            It is therefore the most messages one partition reads per epoch.
        batch_size: Most messages per ``next_batch``.
        max_message_bytes: Larger payloads come out as :class:`MQTTError`.
        protocol: ``"5"`` or ``"3.1.1"``; default: 5, or 3.1.1 where the
            broker lacks 5 (then nothing bounds the broker's in-flight
            deliveries, and a broker cap is only detected and logged).
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
        max_unacked: int = 50_000,
        batch_size: int = 1000,
        max_message_bytes: Optional[int] = None,
        protocol: Optional[Protocol] = None,
        session_expiry: int = _SESSION_EXPIRY_S,
        on_event: Optional[EventHook] = None,
    ) -> None:
        self.connection = connection
        self.topics = list(topics)
        self.client_id = client_id
        self.partitions = partitions
        self.max_unacked = max_unacked
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.protocol = protocol
        self.session_expiry = session_expiry
        self.on_event = on_event
        self.stats: dict[str, MQTTLinkStats] = {}
        """Counters per client id, filled as partitions start on this process."""
        check_client_id(client_id)
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: use '3.1.1' or '5'")
        if partitions < 1 or batch_size < 1:
            raise ValueError("partitions and batch_size must be >= 1")
        if not 1 <= max_unacked <= MAX_RECEIVE_MAXIMUM:
            raise ValueError(f"max_unacked must be 1..{MAX_RECEIVE_MAXIMUM}")
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
