"""Publishing with QoS 1 as a partitioned Bytewax sink, gated by the recovery commit.

A record is published only once the snapshot of the epoch that produced it
is committed, and the snapshot holds what is needed to publish it after a
crash; the worker never waits for PUBACKs on its way.

How the sink learns what is committed: Bytewax calls ``next_batch`` of an
input in epoch E only once epoch E-1 is committed (with recovery; without
it, once every output finished E-1). :func:`connectors.mqtt.operators.publish`
therefore merges into the sink's input a small input of its own that emits
a :data:`COMMIT_TICK` for every partition about every 100 ms. A partition
keeps what arrives in an epoch as *open*; ``snapshot()`` (the end of the
epoch) *seals* it and returns everything not yet acknowledged by the
broker; the next tick proves the sealed records committed, and they are
published then: about one epoch plus one commit after they were produced.

After a crash the resumed partition publishes again what its committed
snapshot held, except what the broker already has: after each group of
records the partition publishes a retained *progress marker* (its run id
and the sequence number of the group's last record) on
``<progress_prefix>/<client_id>-out-<i>``, on the same connection, so the
broker holding the marker implies it holds the records before it. A
resumed partition reads its marker first and skips those records. What can
repeat is a group that was on its way to the broker at the instant of the
crash (records sent, marker not yet).

Each partition is one client, ``<client_id>-out-<i>``; it speaks MQTT 5 (so
user properties go out) and falls back to MQTT 3.1.1 for a broker without
MQTT 5, which then drops user properties. While the broker is away the
partition keeps its records (paho re-sends the unacknowledged ones on
reconnect); with more than ``max_inflight`` unacknowledged it stops the
worker until the broker is back (backpressure stops the input), logging the
wait after 10 s and then every minute, by default as long as it takes, or
up to ``timeout`` seconds, then raises :class:`MQTTPublishError`.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import paho.mqtt.client as paho
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .connection import MQTTConnection, MQTTConnectError, MQTTPublishError, Protocol, connect_preferring_v5
from .link import EventHook, Link, MQTTLinkStats, one_wake_up
from .message import MQTTMessage
from .source import check_client_id

log = logging.getLogger("connectors.mqtt")


class _CommitTick:
    """Proof, by its arrival, that every epoch before the current one is committed."""

    def __repr__(self) -> str:
        return "COMMIT_TICK"

    def __reduce__(self):
        return "COMMIT_TICK"


COMMIT_TICK = _CommitTick()
"""The item :func:`~connectors.mqtt.operators.publish` sends each partition."""

_Record = Tuple[int, MQTTMessage]  # (sequence number in the partition, message)

MAX_PARTITIONS = 64
"""The most sink partitions; all are listed (see :meth:`MQTTSink.list_parts`)."""


@dataclass
class SinkState:
    """A partition's resume state: what it must still publish, in order.

    ``run`` names this partition's history (a new one when it starts without
    state) so that a progress marker of another history is never trusted;
    ``next_seq`` numbers its next record.
    """

    run: str
    next_seq: int = 0
    records: List[_Record] = field(default_factory=list)


class _MQTTSinkPartition(StatefulSinkPartition[Union[MQTTMessage, _CommitTick], SinkState]):
    def __init__(self, sink: MQTTSink, index: int, resume_state: Optional[SinkState]) -> None:
        self._timeout = sink.timeout
        self._max_inflight = sink.max_inflight
        self._on_written = sink.on_written
        state = resume_state if isinstance(resume_state, SinkState) else SinkState(run=secrets.token_hex(6))
        self._run, self._next_seq = state.run, state.next_seq
        self._open: List[_Record] = []  # arrived in this epoch
        self._sealed: List[_Record] = []  # in a snapshot, waiting for its commit
        # mid -> (record, or None for a progress marker; when handed to paho), in publish order.
        self._unacked: Dict[int, Tuple[Optional[_Record], float]] = {}
        # PUBACKs from paho's thread, taken by the worker: no lock is shared
        # with paho's callbacks (publish() takes paho's own locks).
        self._pubacks: deque[Tuple[int, object]] = deque()
        self._acked: List[Tuple[MQTTMessage, float]] = []  # acknowledged since the last report
        self._waiting_since: Optional[float] = None
        self._next_wait_log = 0.0
        client_id = f"{sink.client_id}-out-{index}"
        self._progress_topic = f"{sink.progress_prefix}/{client_id}"
        self.stats = sink.stats.setdefault(client_id, MQTTLinkStats())
        self._link = self._open_link(sink, client_id, index)
        self._v5 = self._link.client.protocol == paho.MQTTv5
        if state.records:
            # Committed before the crash: publish what the broker does not have yet.
            done = self._read_progress(sink.connection.connect_timeout)
            self._release([r for r in state.records if r[0] > done])

    # -- connecting -----------------------------------------------------------

    def _open_link(self, sink: MQTTSink, client_id: str, index: int) -> Link:
        """Connect, waiting up to ``sink.timeout`` for a broker that is down.

        Bytewax builds sink partitions at the first output (or on resume),
        which may come during a broker outage: wait for it as a write would.
        """
        label = f"mqtt output #{index}"
        deadline = time.monotonic() + (sink.timeout if sink.timeout is not None else float("inf"))
        delay = 0.5
        while True:
            try:
                link, protocol = connect_preferring_v5(lambda p: self._connect(sink, client_id, index, p))
            except MQTTConnectError as err:
                # Credentials or authorization: waiting cannot help.
                if err.refused or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: %s; retrying in %.1fs", label, err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if protocol != "5":
                log.warning("%s: the broker does not speak MQTT 5; publishing with 3.1.1, "
                            "so user properties (reason, detail) are dropped", label)
            return link

    def _connect(self, sink: MQTTSink, client_id: str, index: int, protocol: Protocol) -> Link:
        # A fresh session each time: nothing is left to receive.
        link = Link(sink.connection, client_id, protocol=protocol, label=f"mqtt output #{index}",
                    partition=f"out-{index}", session_expiry=sink.session_expiry, stats=self.stats,
                    on_event=sink.on_event)
        client = link.client
        # Our own bound (max_inflight) applies; paho must not hold records
        # back behind its window, or a progress marker would wait for PUBACKs.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_publish = self._on_publish
        link.start()
        return link

    def _read_progress(self, timeout: float) -> int:
        """The last sequence number the broker holds from this run (-1 if none).

        The retained marker comes on subscribing; a non-retained fence
        published after the SUBACK comes back after it, so once the fence is
        here the marker has come too, or there is none.
        """
        client = self._link.client
        fence = secrets.token_hex(8).encode()
        got: Dict[str, object] = {}
        arrived = threading.Event()

        def on_message(_client, _userdata, msg) -> None:
            if msg.payload == fence:
                arrived.set()
            elif msg.retain and msg.payload:
                got["marker"] = msg.payload

        client.on_message = on_message
        client.on_subscribe = lambda *_args: client.publish(self._progress_topic, fence, qos=1)
        client.subscribe(self._progress_topic, qos=1)
        if not arrived.wait(timeout):
            raise MQTTPublishError(f"{self._link.label}: could not read its progress marker "
                                   f"{self._progress_topic!r} within {timeout:g}s")
        client.unsubscribe(self._progress_topic)
        try:
            marker = json.loads(got["marker"]) if "marker" in got else {}
            done = int(marker["seq"]) if marker.get("run") == self._run else -1
        except (ValueError, TypeError, KeyError, AttributeError):
            done = -1
        log.info("%s resumes: the broker holds its records up to #%d", self._link.label, done)
        return done

    # -- paho's network thread --------------------------------------------------

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        self._pubacks.append((mid, reason))

    # -- the worker -------------------------------------------------------------

    def _take_pubacks(self) -> None:
        now = time.monotonic()
        while self._pubacks:
            mid, reason = self._pubacks.popleft()
            record, sent_at = self._unacked.pop(mid, (None, now))
            if record is None:
                continue  # a progress marker
            message = record[1]
            if getattr(reason, "is_failure", False):
                log.error("%s: the broker refused a message for %r: %s", self._link.label, message.topic, reason)
            self._acked.append((message, now - sent_at))
        self.stats.pending = len(self._unacked)  # progress markers included: a handful
        oldest = next(iter(self._unacked.values()), None)
        self.stats.oldest_pending_since = oldest[1] if oldest is not None else 0.0

    def write_batch(self, items: List[Union[MQTTMessage, _CommitTick]]) -> None:
        self.stats.last_call = time.monotonic()
        committed = False
        for item in items:
            if isinstance(item, _CommitTick):
                committed = True
            else:
                self._open.append((self._next_seq, item))
                self._next_seq += 1
        if committed and self._sealed:
            self._release(self._sealed)
            self._sealed = []
        self._wait_until(lambda: len(self._unacked) <= self._max_inflight)
        self._report_acked()

    def snapshot(self) -> SinkState:
        self._sealed.extend(self._open)
        self._open = []
        self._take_pubacks()
        unacked = sorted(record for record, _sent_at in self._unacked.values() if record is not None)
        return SinkState(self._run, self._next_seq, unacked + self._sealed)

    def close(self) -> None:
        # The dataflow ended (finite input): nothing more will be committed
        # after this, so publish what is left and wait for it.
        try:
            self._release(self._sealed + self._open)
            self._sealed, self._open = [], []
            self._wait_until(lambda: not self._unacked)
            self._report_acked()
        finally:
            self._link.stop()

    def _release(self, records: List[_Record]) -> None:
        """Publish ``records`` (committed) and then the progress marker after them."""
        if not records:
            return
        client = self._link.client
        now = time.monotonic()
        with one_wake_up(client):
            for record in records:
                _seq, item = record
                props = None
                if item.user_properties and self._v5:
                    props = Properties(PacketTypes.PUBLISH)
                    props.UserProperty = [tuple(kv) for kv in item.user_properties]
                info = client.publish(item.topic, item.payload, qos=1, properties=props)
                if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                    raise MQTTPublishError(
                        f"cannot publish to {item.topic!r} on {self._link.connection.address}: "
                        f"{paho.error_string(info.rc)}"
                    )
                self._unacked[info.mid] = (record, now)
        marker = json.dumps({"run": self._run, "seq": records[-1][0]}).encode()
        self._unacked[client.publish(self._progress_topic, marker, qos=1, retain=True).mid] = (None, now)
        self._take_pubacks()

    def _report_acked(self) -> None:
        acked, self._acked = self._acked, []
        if acked and self._on_written is not None:
            self._on_written([m for m, _ in acked], max(seconds for _, seconds in acked))

    def _wait_until(self, done: Callable[[], bool]) -> None:
        started = time.monotonic()
        deadline = started + (self._timeout if self._timeout is not None else float("inf"))
        self._take_pubacks()
        while not done():
            now = time.monotonic()
            if now >= deadline:
                raise MQTTPublishError(
                    f"{len(self._unacked)} messages not acknowledged by "
                    f"{self._link.connection.address} within {self._timeout:g}s"
                )
            self._log_wait(len(self._unacked), now)
            time.sleep(0.005)
            self._take_pubacks()
        self._waiting_since = None

    def _log_wait(self, pending: int, now: float) -> None:
        """One line after 10 s of waiting for PUBACKs, then one a minute."""
        if self._waiting_since is None:
            self._waiting_since, self._next_wait_log = now, now + 10.0
        elif now >= self._next_wait_log:
            self._next_wait_log = now + 60.0
            state = "connected" if self._link.connected else "disconnected"
            log.warning("%s: %d messages waiting %.0fs for the broker's acknowledgement (%s); waiting on",
                        self._link.label, pending, now - self._waiting_since, state,
                        extra={"partition": self._link.label, "state": state})


class MQTTSink(FixedPartitionedSink[Union[MQTTMessage, _CommitTick], SinkState]):
    """Publish ``(key, MQTTMessage)`` items with QoS 1 once their epoch is committed.

    Use it through :func:`connectors.mqtt.operators.publish`, which adds the
    commit ticks; items arriving without ticks are published only when the
    dataflow ends. The key picks the partition (``zlib.adler32``), so items
    with the same key keep their order. The payload is sent as given, user
    properties in the given order: the same item gives the same bytes.

    Args:
        connection: The broker.
        client_id: Partition ``i`` is client ``<client_id>-out-<i>``.
        partitions: Number of partitions (clients) that get items, 1 to
            :data:`MAX_PARTITIONS`; several workers and processes publish in
            parallel. It may change between runs: a recovery store written
            with more still resumes, and their committed records go out.
        timeout: Seconds the worker may wait for the broker (to connect, or
            with ``max_inflight`` records unacknowledged); ``None`` (default):
            as long as it takes. Waiting is what the guarantee needs: the
            dataflow stops at the sink (its input too, by backpressure) and
            nothing is lost or repeated.
        max_inflight: Records a partition may have published and not yet
            acknowledged before the worker waits (below the 16-bit packet-id
            space).
        session_expiry: MQTT 5 session expiry interval, seconds.
        progress_prefix: Topic prefix of the retained progress markers.
        on_event: ``on_event(event, client_id, detail)`` on each change of
            connection state.
        on_written: ``on_written(messages, seconds)`` with the messages the
            broker acknowledged since the last call, and the longest of
            their waits for the PUBACK; called from the worker.
    """

    def __init__(
        self,
        connection: MQTTConnection,
        *,
        client_id: str,
        partitions: int = 1,
        timeout: Optional[float] = None,
        max_inflight: int = 20_000,
        session_expiry: int = 300,
        progress_prefix: str = "connectors-mqtt/progress",
        on_event: Optional[EventHook] = None,
        on_written: Optional[Callable[[List[MQTTMessage], float], None]] = None,
    ) -> None:
        check_client_id(client_id)
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0")
        if not 1 <= max_inflight <= 60_000:
            raise ValueError("max_inflight must be 1..60000 (below the 16-bit packet-id space)")
        if not progress_prefix or "#" in progress_prefix or "+" in progress_prefix:
            raise ValueError(f"progress_prefix {progress_prefix!r}: give a plain topic prefix")
        self.connection = connection
        self.client_id = client_id
        self.partitions = partitions
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.session_expiry = session_expiry
        self.progress_prefix = progress_prefix.rstrip("/")
        self.on_event = on_event
        self.on_written = on_written
        self.stats: dict[str, MQTTLinkStats] = {}
        self._position = {name: i for i, name in enumerate(sorted(self.list_parts()))}

    def list_parts(self) -> List[str]:
        # All MAX_PARTITIONS, whatever ``partitions`` is: Bytewax refuses to
        # resume a recovery store holding a partition the sink no longer
        # lists, and a partition dropped by a smaller count may still hold
        # committed records. Only the first ``partitions`` get items; a
        # partition beyond them is built only to resume such a state: it
        # publishes what the broker lacks and stays idle.
        return [str(i) for i in range(MAX_PARTITIONS)]

    def tick_keys(self) -> List[str]:
        """One key routed to each of the ``partitions`` partitions, for :data:`COMMIT_TICK` items."""
        keys: Dict[int, str] = {}
        n = 0
        while len(keys) < self.partitions:
            key = f"commit-tick-{n}"
            keys.setdefault(zlib.adler32(key.encode()) % self.partitions, key)
            n += 1
        return list(keys.values())

    def part_fn(self, item_key: str) -> int:
        # Bytewax indexes the sorted partition names ("0", "1", "10", ...)
        # with this: give the position of partition adler32(key) % partitions.
        return self._position[str(zlib.adler32(item_key.encode()) % self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: Optional[SinkState]
    ) -> _MQTTSinkPartition:
        return _MQTTSinkPartition(self, int(for_part), resume_state)
