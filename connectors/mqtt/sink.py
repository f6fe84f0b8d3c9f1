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
Without recovery there is no commit to wait for: ``commit_gated=False``
publishes each record as it arrives (and keeps no progress markers, which
only a resumed snapshot would read).

After a crash the resumed partition publishes again what its committed
snapshot held, except what the broker already has: after each group of
records the partition publishes a retained *progress marker* (its run id
and the sequence number of the group's last record) on
``<progress_prefix>/<client_id>-out-<i>``, on the same connection, so the
broker holding the marker implies it received the records before it. A
resumed partition reads its marker first and skips those records. What can
repeat is a group that was on its way to the broker at the instant of the
crash (records sent, marker not yet). A marker is trusted only as far as
the snapshot can account for it (:func:`read_progress`): anything else on
that topic (another run, a sequence number the partition never reached,
not a marker at all) is ignored with a warning, so it can make records
repeat, never skip or crash.

A refusal never drops a record. An MQTT 5 broker may refuse a publish in
its PUBACK (reason code 0x80 or more: not authorized, quota exceeded, ...).
The refused record goes back in its place among the records still to
publish (so it stays in the snapshot) and is retried alone after 1 s, then
2, 4, ... up to 60 s; the records behind it wait, in order, until the broker
accepts it, and then follow. Records already on their way when the refusal
came are accepted or refused on their own (for a refusal by topic, as an
ACL's, those on the same topic are refused too, so each topic keeps its
order). Only an accepted record counts as written (``on_written``); each
refusal is reported (``on_refused``, the stats' ``refused_reason``) and
logged at once, then at most once a minute while it lasts. A marker must
never claim a refused record, yet the marker after a group may already be
on the broker when the refusal comes back: paho's network thread, which
receives the refusal, publishes at once a marker claiming only the records
before the refused one. A kill -9 within that round trip is the one way a
refused record can still be skipped after a restart. MQTT 3.1.1 has no
refusals: a broker refusing a 3.1.1 publish drops it silently.

Each partition is one client, ``<client_id>-out-<i>``; it speaks MQTT 5 (so
user properties go out and refusals are seen) and falls back to MQTT 3.1.1
for a broker without MQTT 5, which then drops user properties. While the
broker is away the partition keeps its records (paho re-sends the
unacknowledged ones on reconnect); with more than ``max_inflight`` records
unacknowledged or held back by a refusal it stops the worker until the
broker is back or accepts them (backpressure stops the input), logging the
wait after 10 s and then every minute, by default as long as it takes, or
up to ``timeout`` seconds, then raises :class:`MQTTPublishError`.
"""

from __future__ import annotations

import bisect
import copy
import json
import logging
import pickle
import secrets
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
from .limits import MAX_OUTPUT_INFLIGHT, MAX_OUTPUT_PARTITIONS, MAX_PROGRESS_MARKER_BYTES
from .names import DEFAULT_PROGRESS_PREFIX, output_client_id, progress_topic, validate_client_id
from .process import DiedHook, Forward, SinkPartitionProcess, pack
from .retained import load_json, read_retained, reason_text

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

RETRY_FIRST, RETRY_MAX = 1.0, 60.0
"""Seconds before the first retry of a refused record, and the most between retries."""

REFUSAL_LOG_EVERY = 60.0
"""While a refusal lasts, at most one log line per this many seconds."""


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


@dataclass(frozen=True)
class Progress:
    """What a retained progress marker tells a resuming partition.

    ``done``: the last sequence number the broker holds by the marker (-1:
    none); ``ignored``: why a marker was not trusted (empty when it was, or
    when there was none).
    """

    done: int = -1
    ignored: str = ""


def read_progress(payload: Optional[bytes], run: str, next_seq: int) -> Progress:
    """Read a progress marker, trusting it only as far as the partition's state accounts for it.

    Trusted: at most :data:`.limits.MAX_PROGRESS_MARKER_BYTES` of UTF-8 JSON, an object with
    exactly ``run`` (this partition's run) and ``seq``, an integer from -1
    to ``next_seq - 1``: the partition never numbered a record beyond that,
    so a larger one is not its own (a seq below its first pending record
    skips nothing). Anything else is ignored (``done == -1``: every pending
    record is published again), whatever it holds, and never raises.
    """
    if not payload:
        return Progress()
    try:
        marker = load_json(payload, MAX_PROGRESS_MARKER_BYTES)
    except ValueError as err:
        return Progress(ignored=str(err))
    if not isinstance(marker, dict) or set(marker) != {"run", "seq"}:
        return Progress(ignored='not a {"run", "seq"} object')
    theirs, seq = marker["run"], marker["seq"]
    if not isinstance(theirs, str):
        return Progress(ignored="its run is not a string")
    if theirs != run:
        return Progress(ignored=f"another run ({theirs[:40]!r}; this partition's is {run!r})")
    if type(seq) is not int:  # bool is an int too; 1e400 is a float (inf)
        return Progress(ignored=f"its seq {seq!r} is not an integer")
    if not -1 <= seq < next_seq:
        return Progress(ignored=f"its seq {seq} is beyond this partition's records (it numbered #0 to #{next_seq - 1})")
    return Progress(done=seq)


@dataclass
class _Refusal:
    """The refusal that holds a partition's output back: what, why, since when, the next retry."""

    topic: str
    reason: str
    since: float
    retry_at: float
    delay: float
    next_log: float
    refusals: int = 1
    probe: Optional[int] = None
    """Sequence number of the refused record on trial (handed to the broker alone), if any."""


_MARKER = None  # in place of a record in ``_unacked``: a progress marker


class _MQTTSinkPartition(StatefulSinkPartition[Union[MQTTMessage, _CommitTick], SinkState]):
    def __init__(self, sink: MQTTSink, index: int, resume_state: Optional[SinkState]) -> None:
        self._timeout = sink.timeout
        self._max_inflight = sink.max_inflight
        self._on_written = sink.on_written
        self._on_refused = sink.on_refused
        self._gated = sink.commit_gated
        state = resume_state if isinstance(resume_state, SinkState) else SinkState(run=secrets.token_hex(6))
        self._run, self._next_seq = state.run, state.next_seq
        self._open: List[_Record] = []  # arrived in this epoch
        self._sealed: List[_Record] = []  # in a snapshot, waiting for its commit
        # To hand to the broker now, in sequence order: committed (or, not
        # gated, arrived) records, and refused ones back in their place.
        self._ready: List[_Record] = []
        # mid -> (record, or _MARKER; when handed to paho), in publish order.
        # Written under paho's lock (below), which paho holds around on_publish.
        self._unacked: Dict[int, Tuple[Optional[_Record], float]] = {}
        # PUBACKs from paho's thread, taken by the worker.
        self._pubacks: deque[Tuple[int, object]] = deque()
        self._acked: List[Tuple[MQTTMessage, float]] = []  # acknowledged since the last report
        self._refusals: List[Tuple[str, str]] = []  # (topic, reason) refused since the last report
        self._refusal: Optional[_Refusal] = None
        self._marker_refusal = ""  # why the broker refuses the progress marker, if it does
        self._marker_refused_since = 0.0
        self._marker_next_log = 0.0
        # The lowest sequence number refused and not yet accepted: no marker
        # may claim it (set by paho's thread as the refusal arrives).
        self._floor: Optional[int] = None
        self._waiting_since: Optional[float] = None
        self._next_wait_log = 0.0
        client_id = output_client_id(sink.client_id, index)
        self._progress_topic = progress_topic(sink.progress_prefix, sink.client_id, index)
        self.stats = sink.stats.setdefault(client_id, MQTTLinkStats())
        self.stats.refused_reason, self.stats.refused_since = "", 0.0  # an earlier instance's
        self._link = self._open_link(sink, client_id, index)
        self._v5 = self._link.client.protocol == paho.MQTTv5
        # paho's own lock around its outgoing messages, held by paho while it
        # calls on_publish: holding it makes a block atomic with the PUBACK
        # callbacks without a lock of ours (whose order against paho's could
        # deadlock). It is re-entrant, and publish() takes it too.
        self._lock = self._link.client._out_message_mutex
        if state.records:
            # Committed before the crash: publish what the broker does not have yet.
            done = self._read_progress(state) if self._gated else -1
            self._ready = [r for r in state.records if r[0] > done]
            self._pump()

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
                            "so user properties (reason, detail) are dropped and refusals are not seen", label)
            return link

    def _connect(self, sink: MQTTSink, client_id: str, index: int, protocol: Protocol) -> Link:
        # A fresh session each time: nothing is left to receive.
        link = Link(sink.connection, client_id, protocol=protocol, label=f"mqtt output #{index}",
                    partition=f"out-{index}", session_expiry=sink.session_expiry, stats=self.stats,
                    on_event=sink.on_event, batch_read=True)
        client = link.client
        # Our own bound (max_inflight) applies; paho must not hold records
        # back behind its window, or a progress marker would wait for PUBACKs.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_publish = self._on_publish
        link.start()
        return link

    def _read_progress(self, state: SinkState) -> int:
        """The last sequence number the broker holds from this run (-1 if none or untrusted)."""
        got: dict[str, bytes] = {}

        def on_message(msg) -> None:
            if msg.retain:
                got["marker"] = msg.payload

        link = self._link
        try:
            refused = read_retained(link.client, link.connection, self._progress_topic, self._progress_topic,
                                    on_message)
        except TimeoutError as err:
            raise MQTTPublishError(f"{link.label}: its progress marker {self._progress_topic!r} was {err}") from None
        finally:
            link.client.on_publish = self._on_publish
        link.client.unsubscribe(self._progress_topic)
        pending = len(state.records)
        if refused:
            self._marker_refusal = f"the broker refuses the progress marker on {self._progress_topic!r}: {refused}"
            self._marker_refused_since = time.monotonic()
            self._show_refusal()
            log.error("%s: cannot read its progress marker (%s); publishing all %d pending records again "
                      "(some may repeat): the flow's user must read and write %r",
                      link.label, refused, pending, self._progress_topic)
            return -1
        payload = got.get("marker")
        progress = read_progress(payload, self._run, self._next_seq)
        if progress.ignored:
            shown = payload[:64] + (b"..." if len(payload) > 64 else b"")
            log.warning("%s: ignoring the progress marker on %r (%s): %r; publishing all %d pending records "
                        "again (some may repeat)", link.label, self._progress_topic, progress.ignored,
                        shown, pending)
        else:
            log.info("%s resumes: the broker holds its records up to #%d", link.label, progress.done)
        return progress.done

    # -- paho's network thread --------------------------------------------------

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        self._pubacks.append((mid, reason))
        if self._gated and getattr(reason, "is_failure", False):
            # The marker after this record's group may be retained already,
            # claiming it: claim only the records before it, at once (the
            # worker may not look for a while, and a crash meanwhile would
            # skip the record on resume).
            with self._lock:
                record = self._unacked.get(mid, (_MARKER, 0.0))[0]
                if record is not _MARKER and (self._floor is None or record[0] < self._floor):
                    self._floor = record[0]
                    self._publish_marker(record[0] - 1, time.monotonic())

    # -- the worker -------------------------------------------------------------

    def _take_pubacks(self) -> None:
        now = time.monotonic()
        with self._lock:
            while self._pubacks:
                mid, reason = self._pubacks.popleft()
                if mid not in self._unacked:
                    continue  # not ours to count: the barrier of _read_progress
                record, sent_at = self._unacked.pop(mid)
                refused = getattr(reason, "is_failure", False)
                if record is _MARKER:
                    self._marker_answered(reason_text(reason) if refused else "", now)
                elif refused:
                    self._refused(record, reason_text(reason), now)
                else:
                    self._acked.append((record[1], now - sent_at))
                    if self._refusal is not None and self._refusal.probe == record[0]:
                        self._refusal_over(now)
            oldest = next(iter(self._unacked.values()), None)
            since = [oldest[1]] if oldest is not None else []
            if self._refusal is not None:
                since.append(self._refusal.since)
        self.stats.pending = len(self._unacked) + len(self._ready)  # progress markers included: a handful
        self.stats.oldest_pending_since = min(since, default=0.0)

    def _refused(self, record: _Record, reason: str, now: float) -> None:
        """Put a refused record back in its place; start, or back off, the retries."""
        bisect.insort(self._ready, record, key=lambda r: r[0])
        topic = record[1].topic
        self._refusals.append((topic, reason))
        refusal = self._refusal
        if refusal is None:
            refusal = self._refusal = _Refusal(topic, reason, since=now, retry_at=now + RETRY_FIRST,
                                               delay=RETRY_FIRST, next_log=now + REFUSAL_LOG_EVERY)
            log.error("%s: the broker refused to publish on %r: %s; the record waits in the snapshot with "
                      "the %d ready behind it, retried after %gs and then less often, at most %gs apart, "
                      "until the broker accepts it", self._link.label, topic, reason, len(self._ready) - 1,
                      RETRY_FIRST, RETRY_MAX, extra={"partition": self._link.label, "state": "refused"})
        elif refusal.probe == record[0]:
            refusal.topic, refusal.reason, refusal.probe = topic, reason, None
            refusal.refusals += 1
            refusal.delay = min(refusal.delay * 2, RETRY_MAX)
            refusal.retry_at = now + refusal.delay
            if now >= refusal.next_log:
                refusal.next_log = now + REFUSAL_LOG_EVERY
                log.warning("%s: the broker still refuses to publish on %r after %.0fs (%d refusals): %s; "
                            "%d records wait, retrying in %.0fs", self._link.label, topic, now - refusal.since,
                            refusal.refusals, reason, len(self._ready), refusal.delay,
                            extra={"partition": self._link.label, "state": "refused"})
        self._show_refusal()

    def _refusal_over(self, now: float) -> None:
        """The refused record on trial was accepted: the records behind it may go."""
        refusal, self._refusal = self._refusal, None
        self._floor = None  # the records it held back go out before the next marker
        log.info("%s: the broker accepted the refused record on %r after %.0fs (%d refusals); publishing the "
                 "%d records that waited", self._link.label, refusal.topic, now - refusal.since,
                 refusal.refusals, len(self._ready), extra={"partition": self._link.label, "state": "accepted"})
        self._show_refusal()

    def _marker_answered(self, refused: str, now: float) -> None:
        """A progress marker was acknowledged: refused (``refused`` says why) or accepted."""
        if not refused:
            if self._marker_refusal:
                self._marker_refusal = ""
                log.info("%s: the broker accepts its progress marker again", self._link.label)
                self._show_refusal()
            return
        self._refusals.append((self._progress_topic, refused))
        if not self._marker_refusal or now >= self._marker_next_log:
            self._marker_next_log = now + REFUSAL_LOG_EVERY
            log.error("%s: the broker refused its progress marker on %r: %s; records still go out, but after a "
                      "crash the resumed flow publishes them again: the flow's user must write that topic",
                      self._link.label, self._progress_topic, refused)
        if not self._marker_refusal:
            self._marker_refused_since = now
        self._marker_refusal = f"the broker refuses the progress marker on {self._progress_topic!r}: {refused}"
        self._show_refusal()

    def _show_refusal(self) -> None:
        refusal = self._refusal
        if refusal is not None:
            self.stats.refused_reason = f"the broker refuses to publish on {refusal.topic!r}: {refusal.reason}"
            self.stats.refused_since = refusal.since
        else:
            self.stats.refused_reason = self._marker_refusal
            self.stats.refused_since = self._marker_refused_since if self._marker_refusal else 0.0

    def write_batch(self, items: List[Union[MQTTMessage, _CommitTick]]) -> None:
        self.stats.last_call = time.monotonic()
        committed = False
        arrived = self._open if self._gated else self._ready
        for item in items:
            if isinstance(item, _CommitTick):
                committed = True
            else:
                arrived.append((self._next_seq, item))
                self._next_seq += 1
        if committed and self._sealed:
            self._ready.extend(self._sealed)  # newer than anything ready
            self._sealed = []
        self._wait_until(lambda: len(self._unacked) + len(self._ready) <= self._max_inflight)
        self._report()

    def snapshot(self) -> SinkState:
        self._sealed.extend(self._open)
        self._open = []
        self._take_pubacks()
        with self._lock:
            unacked = [record for record, _sent_at in self._unacked.values() if record is not _MARKER]
        pending = sorted(unacked + self._ready, key=lambda r: r[0])
        return SinkState(self._run, self._next_seq, pending + self._sealed)

    def close(self) -> None:
        # The dataflow ended (finite input): nothing more will be committed
        # after this, so publish what is left and wait for it.
        try:
            self._ready.extend(self._sealed + self._open)
            self._sealed, self._open = [], []
            self._wait_until(lambda: not self._unacked and not self._ready)
            self._report()
        finally:
            self._link.stop()

    def _pump(self) -> None:
        """Take the PUBACKs, then hand the broker what is ready: everything, or
        while a refusal lasts only the refused record, when its retry is due.

        Under paho's lock: no refusal paho has received can be missed between
        looking and sending, so nothing goes out ahead of a known refusal.
        """
        with self._lock:
            self._take_pubacks()
            refusal = self._refusal
            if not self._ready:
                return
            if refusal is None:
                records, self._ready = self._ready, []
                self._send(records, marker=True)
            elif refusal.probe is None and time.monotonic() >= refusal.retry_at:
                record = self._ready.pop(0)
                refusal.probe = record[0]
                self._send([record], marker=False)

    def _send(self, records: List[_Record], *, marker: bool) -> None:
        """Publish ``records`` (committed), then (``marker``) the progress marker after them."""
        client = self._link.client
        now = time.monotonic()
        # Under paho's lock: a refusal's callback finds its record in _unacked.
        with self._lock:
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
            if marker and self._gated:
                self._publish_marker(records[-1][0], now)

    def _publish_marker(self, seq: int, now: float) -> None:
        """Retain "the broker holds this run's records up to ``seq``", never past a refused one (under the lock)."""
        if self._floor is not None:
            seq = min(seq, self._floor - 1)
        payload = json.dumps({"run": self._run, "seq": seq}).encode()
        self._unacked[self._link.client.publish(self._progress_topic, payload, qos=1, retain=True).mid] = (_MARKER, now)

    def _report(self) -> None:
        acked, self._acked = self._acked, []
        if acked and self._on_written is not None:
            self._on_written([m for m, _ in acked], max(seconds for _, seconds in acked))
        refusals, self._refusals = self._refusals, []
        if self._on_refused is not None:
            for topic, reason in refusals:
                self._on_refused(topic, reason)

    def _wait_until(self, done: Callable[[], bool]) -> None:
        started = time.monotonic()
        deadline = started + (self._timeout if self._timeout is not None else float("inf"))
        self._pump()
        while not done():
            now = time.monotonic()
            if now >= deadline:
                why = f" ({self.stats.refused_reason})" if self._refusal is not None else ""
                raise MQTTPublishError(
                    f"{len(self._unacked) + len(self._ready)} messages not acknowledged by "
                    f"{self._link.connection.address} within {self._timeout:g}s{why}"
                )
            self._log_wait(len(self._unacked) + len(self._ready), now)
            time.sleep(0.005)
            self._pump()
        self._waiting_since = None

    def _log_wait(self, pending: int, now: float) -> None:
        """One line after 10 s of waiting for PUBACKs, then one a minute."""
        if self._waiting_since is None:
            self._waiting_since, self._next_wait_log = now, now + 10.0
        elif now >= self._next_wait_log:
            self._next_wait_log = now + 60.0
            state = "refused" if self._refusal is not None else "connected" if self._link.connected else "disconnected"
            log.warning("%s: %d messages waiting %.0fs for the broker's acknowledgement (%s); waiting on",
                        self._link.label, pending, now - self._waiting_since, state,
                        extra={"partition": self._link.label, "state": state})


class MQTTSink(FixedPartitionedSink[Union[MQTTMessage, _CommitTick], SinkState]):
    """Publish ``(key, MQTTMessage)`` items with QoS 1 once their epoch is committed.

    Use it through :func:`connectors.mqtt.operators.publish`, which adds the
    commit ticks; items arriving without ticks are published only when the
    dataflow ends (or at once, not ``commit_gated``). The key picks the
    partition (``zlib.adler32``), so items with the same key keep their
    order. The payload is sent as given, user properties in the given order:
    the same item gives the same bytes. A publish the broker refuses waits
    and is retried, holding back those behind it (see :mod:`.sink`).

    Args:
        connection: The broker.
        client_id: Partition ``i`` is client ``<client_id>-out-<i>``.
        partitions: Number of partitions (clients) that get items, 1 to
            :data:`.limits.MAX_OUTPUT_PARTITIONS`; several workers and processes publish in
            parallel. It may change between runs: a recovery store written
            with more still resumes, and their committed records go out.
        timeout: Seconds the worker may wait for the broker (to connect, or
            with ``max_inflight`` records unacknowledged or held back by a
            refusal); ``None`` (default): as long as it takes. Waiting is
            what the guarantee needs: the dataflow stops at the sink (its
            input too, by backpressure) and nothing is lost or repeated.
        max_inflight: Records a partition may have published and not yet
            acknowledged (or holds back behind a refused one) before the
            worker waits (below the 16-bit packet-id space).
        commit_gated: Publish a record only once its epoch is committed
            (default). ``False`` publishes each record as it arrives, for a
            dataflow without recovery, where no commit ever comes before
            the epoch ends: no waiting, no progress markers (nothing would
            resume from them).
        session_expiry: MQTT 5 session expiry interval, seconds.
        progress_prefix: Topic prefix of the retained progress markers.
        on_event: ``on_event(event, client_id, detail)`` on each change of
            connection state.
        on_written: ``on_written(messages, seconds)`` with the messages the
            broker accepted since the last call, and the longest of
            their waits for the PUBACK; called from the worker.
        on_refused: ``on_refused(topic, reason)`` for each publish the
            broker refused (a record, or a progress marker), reason as
            ``Not authorized (0x87)``; called from the worker.
        own_process: Run each partition that gets records (its MQTT client,
            publishing, PUBACKs, markers) in a child process of its own
            (:mod:`.process`): the worker's interpreter only pickles them.
        on_died: With ``own_process``: ``on_died(line)`` when a partition's
            child process ends without being closed (:data:`.process.DiedHook`).
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
        progress_prefix: str = DEFAULT_PROGRESS_PREFIX,
        on_event: Optional[EventHook] = None,
        on_written: Optional[Callable[[List[MQTTMessage], float], None]] = None,
        on_refused: Optional[Callable[[str, str], None]] = None,
        commit_gated: bool = True,
        own_process: bool = False,
        on_died: Optional[DiedHook] = None,
    ) -> None:
        validate_client_id(client_id)
        if not 1 <= partitions <= MAX_OUTPUT_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_OUTPUT_PARTITIONS}")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0")
        if not 1 <= max_inflight <= MAX_OUTPUT_INFLIGHT:
            raise ValueError(f"max_inflight must be 1..{MAX_OUTPUT_INFLIGHT} (below the 16-bit packet-id space)")
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
        self.on_refused = on_refused
        self.commit_gated = commit_gated
        self.own_process = own_process
        self.on_died = on_died
        self.stats: dict[str, MQTTLinkStats] = {}
        self._position = {name: i for i, name in enumerate(sorted(self.list_parts()))}

    def list_parts(self) -> List[str]:
        # All MAX_OUTPUT_PARTITIONS, whatever ``partitions`` is: Bytewax refuses to
        # resume a recovery store holding a partition the sink no longer
        # lists, and a partition dropped by a smaller count may still hold
        # committed records. Only the first ``partitions`` get items; a
        # partition beyond them is built only to resume such a state: it
        # publishes what the broker lacks and stays idle.
        return [str(i) for i in range(MAX_OUTPUT_PARTITIONS)]

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
        self, step_id: str, for_part: str, resume_state: Union[None, SinkState, bytes]
    ) -> Union[_MQTTSinkPartition, SinkPartitionProcess]:
        index = int(for_part)
        if isinstance(resume_state, bytes):  # written by a partition in a process of its own
            resume_state = pickle.loads(resume_state)
        if not self.own_process:
            return _MQTTSinkPartition(self, index, resume_state)

        def build(forward: Forward) -> _MQTTSinkPartition:
            # In the child: the same sink, its hooks forwarded to the worker.
            local = copy.copy(self)
            local.on_event = None if self.on_event is None else lambda *event: forward("event", *event)
            local.on_written = None if self.on_written is None else (
                lambda messages, seconds: forward("written", pack(messages), seconds))
            local.on_refused = None if self.on_refused is None else (
                lambda topic, reason: forward("refused", topic, reason))
            return _MQTTSinkPartition(local, index, resume_state)

        stats = self.stats.setdefault(output_client_id(self.client_id, index), MQTTLinkStats())
        hooks = {"event": self.on_event, "written": self.on_written, "refused": self.on_refused}
        return SinkPartitionProcess(build, COMMIT_TICK, stats, hooks, label=f"mqtt-out-{index}",
                                    on_died=self.on_died)
