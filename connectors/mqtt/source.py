"""QoS 1 subscriptions as a partitioned Bytewax source, acknowledged after commit.

Each partition ``in-<i>`` of ``N`` is one client (``<client_id>-in-<i>``)
with its own persistent session and plain QoS 1 subscriptions to the topics
it owns: the shards ``<topic>/<s>`` with ``s % N == i``, and the plain
topics on partition 0, so the broker delivers each message once. During a
change of ``N`` a partition may also receive messages another one takes; it
PUBACKs those at once from paho's callback (their owner has its own copy).
Why not shared subscriptions (mosquitto 2.0 does not persist them), the
order and how a change of ``N`` loses nothing: the package documentation,
"Partitions and order", and :mod:`.partitions` for the rules. With a
``newest_position`` function, each partition also publishes its watermark
(:mod:`.watermarks`).

A message it takes is PUBACKed only once Bytewax has committed the epoch it
was emitted in (see the package documentation for the delivery
guarantees). At most ``max_unacked`` taken messages are held unacknowledged
at a time, so one partition takes at most that many per epoch: with MQTT 5
the broker is asked to keep to it (Receive Maximum; a broker's own in-flight
limit then does not throttle), and in any case the network thread stops
reading the socket at the bound (TCP pushes back), waking every
``keepalive/4`` s (at most 1 s) to take one message so keepalive pings still
flow. Mosquitto 2.0.11 keeps to the Receive Maximum for the first window
only and may then reuse packet ids still in flight: a message is therefore
skipped as a redelivery only when the broker marks it DUP and its id is
held, never for a reused id alone. ``next_batch`` never blocks.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from .connection import PROTOCOLS, MQTTConnectError, MQTTConnection, Protocol, connect, connect_preferring_v5
from .link import EventHook, Link, MQTTLinkStats
from .message import MQTTError, MQTTMessage
from .limits import IDLE_POLL, MAX_RECEIVE_MAXIMUM, MAX_SHARDS
from .names import (barrier_topic, input_client_id, input_index, input_key, partition_marker_topic,
                    partition_markers, probe_topic, reader_client_id, validate_client_id, watermark_topic)
from .partitions import Marker, counts_at_start, marker_index, owned_shards, takes, transition_over
from .process import DiedHook, Forward, SourcePartitionProcess
from .retained import read_retained
from .watermarks import DONE, NOTHING_READ, PartitionClock, WatermarkBoard, encode_watermark

log = logging.getLogger("connectors.mqtt")

_SESSION_EXPIRY_S = 7 * 24 * 3600

_Entry = Tuple[int, int, int]  # (mid, qos, session generation)
_PROBE: _Entry = (0, -1, -1)  # the buffer entry of a returned probe (no ack, never emitted)


class _MQTTSourcePartition(StatefulSourcePartition[Union[MQTTMessage, MQTTError], None]):
    """Partition ``in-<index>``: its own session (``index < partitions``), or one left to drain."""

    def __init__(self, source: MQTTSource, index: int, start_watermark: Optional[float] = None) -> None:
        self._source = source
        self._batch_size = source.batch_size
        self._max_unacked = source.max_unacked
        self._max_bytes = source.max_message_bytes
        self._partitions = source.partitions
        self._shards = source.shards
        self._shard_of = source.shard_of_topic
        self._control_b = (partition_markers(source.client_id) + "/").encode()
        self._probe_b = probe_topic(source.client_id, index).encode()
        self._newest_position = source.newest_position
        self._watermark: Optional[PartitionClock] = None
        if source.newest_position is not None:  # from its own retained watermark (downtime does not count)
            self._watermark = PartitionClock(start_watermark, time.monotonic(), source.probe_interval)
        # Probes carry this process's token: a probe of an earlier run (another monotonic clock) is not ours.
        self._probe_token = uuid.uuid4().hex[:12]
        self._cond = threading.Condition()
        # Received, not yet emitted: (entry, item).
        self._buffer: deque[Tuple[_Entry, Union[MQTTMessage, MQTTError]]] = deque()
        # Emitted in the current epoch / before the last snapshot.
        self._emitted: List[_Entry] = []
        self._committable: List[_Entry] = []
        # (mid, generation) -> how many QoS>0 messages with it are taken and
        # not yet acked (a broker may reuse an id while it is in flight, as
        # mosquitto 2.0 does past 65535), to recognise redeliveries (DUP).
        self._held: Dict[Tuple[int, int], int] = {}  # a dict, not a Counter: Counter's methods are Python
        self._unacked = 0  # the sum of _held
        self._closing = False
        self._block_s = min(1.0, max(0.05, source.connection.keepalive / 4))
        self._index = index
        self._drain = index >= source.partitions
        self._done = False  # a drained session is deleted: end of input
        self._subscribed = threading.Event()
        client_id = source.client_id_for(index)
        # Before this partition says anything: its own marker names the
        # count(s) its session ran under (partitions.py).
        self._marker = read_markers(source.connection, source.client_id, label=client_id).get(index)
        self._counts = frozenset({source.partitions})  # set from the marker on connecting
        self._taken: Dict[bytes, bool] = {}  # topic -> whether this partition takes it, under _counts
        self._count_by(self._counts)
        self._over = True  # the change of count is over in this session's stream
        self._proven: set[int] = set()  # partitions whose marker with the new count came
        self._subscribed_shards: List[Optional[int]] = []  # asked for on the last connect
        # Plain-topic traffic does not scale out: said once, where it matters.
        self._plain_unwarned = index == 0 and source.partitions > 1 and source.shards > 0
        self.stats = MQTTLinkStats() if self._drain else source.stats.setdefault(client_id, MQTTLinkStats())
        if self._drain and (self._marker is None or self._marker.retired):
            # Drained already (possibly deleted already): make sure, and end.
            delete_session(source.connection, client_id)
            self._link: Optional[Link] = None
            self._done = True
            return
        self._link, protocol = connect_preferring_v5(lambda p: self._open(client_id, p), source.protocol)
        if self._v5:
            self.stats.inflight_cap = self._max_unacked
        if not self._subscribed.wait(source.connection.connect_timeout):
            log.warning("%s: no SUBACK within %gs", self._link.label, source.connection.connect_timeout)

    def _open(self, client_id: str, protocol: Protocol) -> Link:
        source = self._source
        link = Link(
            source.connection,
            client_id,
            protocol=protocol,
            label=f"mqtt drain in-{self._index}" if self._drain else f"mqtt input #{self._index}",
            partition=input_key(self._index),
            persistent=True,
            resume_first=True,
            session_expiry=source.session_expiry,
            # The broker then never has more unacknowledged deliveries for
            # us than this, however long the commit takes: packet ids (16
            # bits) are never reused while in flight, and a broker's own
            # in-flight limit (mosquitto: 20 by default) does not throttle.
            receive_maximum=self._max_unacked,
            manual_ack=True,
            batch_read=True,
            stats=self.stats,
            on_event=None if self._drain else source.on_event,
        )
        # One session for all topics: the broker queues a disconnected
        # client's messages in one queue, in publish order across topics, so
        # a backlog (after an outage or a restart) comes back interleaved as
        # it was published instead of one topic after the other. The marker
        # filter is subscribed on every connection, so the retained markers
        # come each time, in this session's stream.
        control = [(partition_markers(source.client_id) + "/+", 1)]
        if self._watermark is not None:
            control.append((probe_topic(source.client_id, self._index), 1))
        shared = [f"$share/{source.client_id}/{topic}" for topic in source.topics]
        client, first = link.client, [True]

        def after_connect(session_present: bool) -> None:
            if first[0]:
                first[0] = False
                counts = counts_at_start(self._marker, self._partitions, self._shards, session_present)
                if self._drain:  # nothing to drain from a session the broker no longer had
                    counts = counts - {self._partitions} if session_present else frozenset()
                self._count_by(counts)
                self._over = self._counts <= {self._partitions}
            if not self._drain:
                # Shared subscriptions left by a version before markers
                # (UNSUBSCRIBE of an unknown filter is harmless).
                client.unsubscribe(shared)
            # Every time (a resumed session keeps its subscriptions; subscribing
            # again changes nothing for them and adds shards a new count gave us).
            self._subscribed_shards = owned_shards(self._index, self._counts, self._shards)
            data = [(topic, 1) for topic in source.topics_of(self._subscribed_shards)]
            client.subscribe(data + control)
            if session_present:
                # Subscribed already; the SUBACK may wait behind the backlog
                # (with 3.1.1, behind max_unacked messages not yet committed).
                self._subscribed.set()

        def on_subscribe(*_args) -> None:
            if not self._drain:
                self._publish_marker()
            log.info("%s subscribed to %d topics", link.label, len(self._subscribed_shards) * len(source.topics),
                     extra={"partition": input_key(self._index), "client_id": client_id})
            self._subscribed.set()

        link.after_connect = after_connect
        client.on_subscribe = on_subscribe
        client.on_message = self._on_message
        # Before start: a resumed session's messages come at once.
        self._link, self._v5 = link, protocol == "5"
        link.start()
        return link

    def _count_by(self, counts: frozenset) -> None:
        """Own by each of ``counts`` from now on (one per message would cost ~1 µs)."""
        self._counts = counts
        self._taken = {topic: takes(shard, self._index, counts) for topic, shard in self._shard_of.items()}

    def _publish_marker(self) -> None:
        old = tuple(sorted(self._counts - {self._partitions}))  # EVERYTHING (0) included
        self._link.client.publish(partition_marker_topic(self._source.client_id, self._index),
                                  Marker(self._partitions, old, shards=self._shards).encode(), qos=1, retain=True)

    def _on_marker(self, topic: str, payload: bytes) -> None:
        k = marker_index(topic, self._source.client_id)
        marker = Marker.decode(payload)
        if self._over or k is None or marker is None or not marker.proves(self._partitions, self._shards):
            return
        self._proven.add(k)
        if not transition_over(self._proven, self._partitions):
            return
        self._over = True
        if self._drain:
            self._count_by(frozenset())
            log.info("%s: every message it must take is taken; deleted once committed", self._link.label)
        else:
            self._count_by(frozenset({self._partitions}))
            owned = owned_shards(self._index, self._counts, self._shards)
            gone = [shard for shard in self._subscribed_shards if shard not in owned]
            if gone:
                # Their messages after the markers are in their owners' sessions.
                self._link.client.unsubscribe(self._source.topics_of(gone))
            self._subscribed_shards = owned
            self._publish_marker()
            log.info("%s: change to %d partitions complete", self._link.label, self._partitions)

    def _finish_drain(self) -> None:
        """Retire the marker, delete the drained session (its taken messages are all acknowledged)."""
        link, topic = self._link, partition_marker_topic(self._source.client_id, self._index)
        try:
            # Retired, not cleared: list_parts keeps naming this partition,
            # whose key may still be in a Bytewax recovery store.
            retired = Marker(self._marker.partitions, retired=True, shards=self._marker.shards).encode()
            link.client.publish(topic, retired, qos=1, retain=True).wait_for_publish(5)
            if self._watermark is not None:
                link.client.publish(watermark_topic(self._source.client_id, self._index),
                                    encode_watermark(DONE), qos=1, retain=True).wait_for_publish(5)
            link.stop()
            delete_session(self._source.connection, link.client_id)
            log.info("%s: drained; session deleted", link.label)
        except (MQTTConnectError, RuntimeError, ValueError) as err:
            link.stop()
            log.warning("%s: could not delete the drained session (%s); the next start will", link.label, err)
        self._done = True

    # Paho's network thread.
    def _on_message(self, client, userdata, msg) -> None:
        if msg._topic.startswith(self._control_b):
            self._on_marker(msg._topic.decode("utf-8", "replace"), msg.payload)
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            return
        if msg._topic == self._probe_b:
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            self._on_probe(msg.payload)
            return
        gen = self._link.session_gen
        key = (msg.mid, gen)
        if msg.dup and msg.qos > 0:
            with self._cond:
                # Only a DUP copy of a message still held is a redelivery: a
                # packet id alone may be reused by the broker once acked.
                if key in self._held:
                    self.stats.redeliveries_skipped += 1
                    return
        if self._plain_unwarned and self._shard_of.get(msg._topic) is None:
            self._plain_unwarned = False
            log.warning("%s: messages on the plain topics (%s) are all read by partition in-0; publish on "
                        "<topic>/<shard> to spread them over the %d partitions", self._link.label,
                        msg._topic.decode("utf-8", "replace"), self._partitions)
        taken = self._taken.get(msg._topic)
        if taken is None:  # a topic no longer configured, left subscribed in the session: plain
            taken = takes(None, self._index, self._counts)
        if not taken:
            # Another partition takes it, from its own copy: done with ours.
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            self.stats.passed_on += 1
            return
        with self._cond:
            # Without a Receive Maximum (MQTT 3.1.1), stop reading the
            # socket at the bound, waking now and then so paho can keep the
            # connection alive.
            if self._unacked >= self._max_unacked and not self._closing:
                self._cond.wait(self._block_s)
            if msg.qos > 0:
                held = self._held
                held[key] = held.get(key, 0) + 1
                self._unacked += 1
            self._buffer.append(((msg.mid, msg.qos, gen), self._convert(msg)))
        if self._watermark is not None:
            self._watermark.data_read()

    def _on_probe(self, payload: bytes) -> None:
        """Our own probe came back behind everything queued before it: mark its place in the buffer."""
        token, _, sent_text = payload.decode("ascii", "replace").partition(" ")
        try:
            sent = float(sent_text)
        except ValueError:
            return  # not ours (the ACL should keep others off this topic)
        if token != self._probe_token:
            return  # an earlier run's, left in the session: its time is on another monotonic clock
        if self._watermark is not None and self._watermark.probe_returned(sent, time.monotonic()):
            with self._cond:
                self._buffer.append((_PROBE, sent))

    def _convert(self, msg) -> Union[MQTTMessage, MQTTError]:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
            return MQTTError(MQTTMessage(topic, msg.payload, (), self._index), "topic is not UTF-8")
        props: Tuple[Tuple[str, str], ...] = ()
        if self._v5 and msg.properties is not None:
            props = tuple(getattr(msg.properties, "UserProperty", ()) or ())
        message = MQTTMessage(topic, bytes(msg.payload), props, self._index)
        size = len(message.payload)
        if self._max_bytes is not None and size > self._max_bytes:
            return MQTTError(message, f"too large: {size} bytes > max {self._max_bytes}")
        return message

    def _ack(self, entries: List[_Entry]) -> List[_Entry]:
        """PUBACK ``entries`` in order; return those that must wait for a connection."""
        if not entries or self._link is None:
            return []
        if not self._link.connected:
            return entries  # acks queued now would be dropped by paho's reconnect
        gen = self._link.session_gen
        client = self._link.client
        with self._cond:
            held = self._held
            for mid, qos, egen in entries:
                if qos == 0:
                    continue
                key = (mid, egen)
                self._unacked -= 1
                count = held.pop(key, 0)
                if count > 1:
                    held[key] = count - 1
        # One packet of PUBACKs: paho's network thread is woken once.
        acked = client.ack_all((mid, qos) for mid, qos, egen in entries if egen == gen)
        log.debug("%s acknowledged %d messages", self._link.label, acked)
        return []

    def next_batch(self) -> List[Union[MQTTMessage, MQTTError]]:
        # Called only once the epoch of the last snapshot is committed.
        self._committable = self._ack(self._committable)
        if self._watermark is not None:
            self._tend_watermark()
        if self._drain:
            if self._done:
                raise StopIteration  # Bytewax discards this partition's recovery state
            if self._over and not self._unacked and not self._buffer and not self._committable:
                self._finish_drain()
        with self._cond:
            self.stats.last_call = time.monotonic()
            self.stats.buffered = len(self._buffer)
            self.stats.unacked = self._unacked
            n = min(self._batch_size, len(self._buffer))
            if n == 0:
                return []
            taken = [self._buffer.popleft() for _ in range(n)]
            self._cond.notify_all()
        if self._watermark is None:
            self._emitted.extend(entry for entry, _ in taken)
            return [item for _, item in taken]
        items = []
        for entry, item in taken:
            if entry is _PROBE:
                self._watermark.idle_emitted(item)  # everything before it is emitted
            else:
                self._emitted.append(entry)
                items.append(item)
        self._watermark.emitted(self._newest_position([item for item in items if type(item) is MQTTMessage]),
                                time.monotonic())
        return items

    def _tend_watermark(self) -> None:
        """Publish the watermark of the committed epochs; send a probe when one is due."""
        link, clock = self._link, self._watermark
        if link is None or not link.connected:
            return
        value = clock.release()
        if value is not None:
            link.client.publish(watermark_topic(self._source.client_id, self._index), encode_watermark(value),
                                qos=1, retain=True)
        elif clock.release_nothing_read():  # not retained: a restarted run proves it again
            link.client.publish(watermark_topic(self._source.client_id, self._index), NOTHING_READ, qos=1)
        now = time.monotonic()
        if clock.probe_due(now):
            link.client.publish(probe_topic(self._source.client_id, self._index),
                                f"{self._probe_token} {now!r}".encode(), qos=1)

    def has_buffered(self) -> bool:
        """Whether messages wait for the next ``next_batch``."""
        return bool(self._buffer)

    def next_awake(self) -> Optional[datetime]:
        if self._buffer:
            return None
        return datetime.now(timezone.utc) + IDLE_POLL

    def snapshot(self) -> None:
        # Anything before the previous snapshot is committed by now.
        waiting = self._ack(self._committable)
        self._committable = waiting + self._emitted
        self._emitted = []
        if self._watermark is not None:
            self._tend_watermark()
            self._watermark.seal()
        return None

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._link is not None:
            self._link.stop()


def read_markers(connection: MQTTConnection, client_id: str, *, label: str | None = None) -> dict[int, Marker]:
    """The retained partition markers of ``client_id``'s input partitions, by partition index.

    Read by a short clean-session client; ``label`` names it in errors
    (default: its own client id).
    """
    reader_id = reader_client_id(client_id, "markers")
    level = partition_markers(client_id)
    markers: dict[int, Marker] = {}

    def on_message(msg) -> None:
        k, marker = marker_index(msg.topic, client_id), Marker.decode(msg.payload)
        if k is not None and marker is not None:
            markers[k] = marker

    client = connection.client(reader_id)
    try:
        refused = read_retained(client, connection, f"{level}/#", barrier_topic(level, reader_id), on_message,
                                connect_as=label or reader_id)
    except TimeoutError as err:
        refused = str(err)
    finally:
        client.disconnect()
        client.loop_stop()
    if refused:
        raise MQTTConnectError(f"MQTT broker {connection.address}: partition markers {refused}")
    return markers


def delete_session(connection: MQTTConnection, client_id: str) -> None:
    """Delete the broker session of ``client_id``: connect with a clean session, disconnect."""
    client = connection.client(client_id)  # MQTT 3.1.1, clean session: the broker discards the old one
    connect(client, connection, label=client_id)
    client.disconnect()
    client.loop_stop()


def has_session(connection: MQTTConnection, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id`` (to check that none is left behind).

    Connects as ``client_id`` with MQTT 5, clean start off and no session
    expiry, so the probe itself leaves no session. Never probe the client id
    of a running partition: the broker would disconnect it.
    """
    client = connection.client(client_id, protocol="5")
    present: List[bool] = []
    client.on_connect = lambda _c, _u, flags, *_: present.append(bool(flags.session_present))
    connect(client, connection, label=client_id, clean_start=False)
    client.disconnect()
    client.loop_stop()
    return present[0]


class MQTTSource(FixedPartitionedSource[Union[MQTTMessage, MQTTError], None]):
    """QoS 1 subscriptions as a partitioned Bytewax source.

    Emits :class:`MQTTMessage`, or :class:`MQTTError` for a message larger
    than ``max_message_bytes`` (or with a topic that is not UTF-8). Partition
    keys are ``"in-<i>"``; partition ``i`` reads the shards it owns
    (``<topic>/<s>`` with ``s % partitions == i``) and partition 0 the plain
    topics too; :meth:`list_parts` adds ``"in-<j>"`` for each session a
    larger count left behind (drained, then deleted). The resume state is
    ``None``: the broker session is the resume state.

    Args:
        connection: The broker.
        topics: Plain topic names (no wildcards, not ``$...``).
        client_id: Stable identity: partition ``i`` is client
            ``<client_id>-in-<i>``; its marker is the retained topic
            ``connectors-mqtt/partitions/<client_id>/in-<i>``.
        partitions: How many partitions read the topics (any count keeps
            every message).
        shards: Also read ``<topic>/<s>`` for ``s < shards``, spread over
            the partitions (0: the plain topics only, all on partition 0).
            Producers pick the shard; a fixed key per shard keeps that key's
            messages in publish order on one partition.
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
        newest_position: ``newest_position(messages)``: the newest time in
            Unix seconds a batch of messages stands for in the stream (e.g.
            their newest event time), or None. Turns on watermarks
            (:mod:`.watermarks`, :meth:`watermarks`).
        position_max_ahead: Positions are never more than this many seconds
            ahead of the wall clock: a watermark beyond is ignored (forged).
        wall_clock: The wall clock (Unix seconds) for that check, the only
            use of the calendar here; elapsed times are ``time.monotonic()``.
        probe_interval: Seconds between a partition's idle probes.
        own_process: Run each partition's MQTT client, and the work per
            message, in a child process of its own (:mod:`.process`): the
            worker's interpreter only unpickles batches (:mod:`.process`).
        on_died: With ``own_process``: ``on_died(line)`` when a partition's
            child process ends without being closed (:data:`.process.DiedHook`).
    """

    def __init__(
        self,
        connection: MQTTConnection,
        topics: Iterable[str],
        *,
        client_id: str,
        partitions: int = 1,
        shards: int = 0,
        max_unacked: int = 50_000,
        batch_size: int = 1000,
        max_message_bytes: Optional[int] = None,
        protocol: Optional[Protocol] = None,
        session_expiry: int = _SESSION_EXPIRY_S,
        on_event: Optional[EventHook] = None,
        newest_position: Optional[Callable[[List[MQTTMessage]], Optional[float]]] = None,
        position_max_ahead: float = math.inf,
        wall_clock: Callable[[], float] = time.time,
        probe_interval: float = 1.0,
        own_process: bool = False,
        on_died: Optional[DiedHook] = None,
    ) -> None:
        self.connection = connection
        self.topics = list(topics)
        self.client_id = client_id
        self.partitions = partitions
        self.shards = shards
        self.max_unacked = max_unacked
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.protocol = protocol
        self.session_expiry = session_expiry
        self.on_event = on_event
        self.newest_position = newest_position
        self.position_max_ahead = position_max_ahead
        self.wall_clock = wall_clock
        self.probe_interval = probe_interval
        self.own_process = own_process
        self.on_died = on_died
        self.stats: dict[str, MQTTLinkStats] = {}
        """Counters per client id, filled as partitions start on this process."""
        validate_client_id(client_id)
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: use '3.1.1' or '5'")
        if partitions < 1 or batch_size < 1:
            raise ValueError("partitions and batch_size must be >= 1")
        if not 0 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards must be 0..{MAX_SHARDS}")
        if not 1 <= max_unacked <= MAX_RECEIVE_MAXIMUM:
            raise ValueError(f"max_unacked must be 1..{MAX_RECEIVE_MAXIMUM}")
        if not self.topics:
            raise ValueError("no topics")
        for topic in self.topics:
            if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
                raise ValueError(f"topic {topic!r}: give a plain topic name (no wildcards, not $...)")
        self.shard_of_topic: Dict[bytes, Optional[int]] = {}
        """Topic (bytes, as paho has it) -> its shard; None for a plain topic."""
        for shard in (None, *range(shards)):
            for topic in self.topics_of([shard]):
                self.shard_of_topic[topic.encode()] = shard
        self._board: Optional[WatermarkBoard] = None
        self._parts: Tuple[int, ...] = ()  # partitions whose watermark counts (listed, not retired)

    def topics_of(self, shards: Iterable[Optional[int]]) -> List[str]:
        """The topic names of ``shards`` (None: the plain topics)."""
        return [topic if shard is None else f"{topic}/{shard}" for shard in shards for topic in self.topics]

    def client_id_for(self, index: int) -> str:
        """Stable client id of partition ``index``."""
        return input_client_id(self.client_id, index)

    def list_parts(self) -> List[str]:
        """``in-0`` … ``in-<partitions-1>``, and ``in-<j>`` for each session a larger count left (to drain)."""
        left = read_markers(self.connection, self.client_id, label=f"{self.client_id}-in")
        drains = [j for j in sorted(left) if j >= self.partitions]
        self._parts = (*range(self.partitions), *(j for j in drains if not left[j].retired))
        return [input_key(i) for i in (*range(self.partitions), *drains)]

    def board(self) -> WatermarkBoard:
        """The watermarks of all partitions (started on first use)."""
        if self._board is None:
            self._board = WatermarkBoard(self.connection, self.client_id, self.position_max_ahead, self.wall_clock)
        return self._board.start()

    def watermarks(self) -> Mapping[int, float]:
        """Each listed partition's watermark (``-inf`` until it has one); needs ``newest_position``.

        A partition that has read nothing and is idle is left out of the
        mapping (:mod:`.watermarks`). The lowest of them is the dataflow's
        low watermark: every message a partition has yet to emit comes after
        what it had read when it published its watermark, and everything
        before that has been processed by the whole dataflow. The same mapping until a watermark
        changes. Messages carry the index of the partition that read them
        (:attr:`MQTTMessage.partition`), so a step can also tell how far it
        has processed each partition itself.
        """
        board = self._board
        if board is None or not self._parts:
            if self.newest_position is None:
                raise ValueError("watermarks need a newest_position function")
            if not self._parts:
                self.list_parts()
            board = self.board()
        return board.of(self._parts)

    def close(self) -> None:
        """Stop the watermark reader, if one runs (the partitions close with the dataflow)."""
        if self._board is not None:
            self._board.stop()
            self._board = None

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> Union[_MQTTSourcePartition, SourcePartitionProcess]:
        index = input_index(for_part)
        # Read here, not in a child: the board's lock is its client thread's.
        start = None if self.newest_position is None else self.board().value(index)
        if not self.own_process:
            return _MQTTSourcePartition(self, index, start)

        def build(forward: Forward) -> _MQTTSourcePartition:
            # In the child: the same source, its hook forwarded to the worker.
            local = copy.copy(self)
            local.on_event = None if self.on_event is None else lambda *event: forward("event", *event)
            return _MQTTSourcePartition(local, index, start)

        stats = MQTTLinkStats()
        if index < self.partitions:
            stats = self.stats.setdefault(self.client_id_for(index), stats)
        return SourcePartitionProcess(build, stats, self.on_event, label=f"mqtt-in-{index}", index=index,
                                      on_died=self.on_died)
