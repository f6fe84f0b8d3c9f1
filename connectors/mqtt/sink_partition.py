"""One output partition: records through the epoch gate to the broker, refusals, hooks and backpressure.

A record arrives in an epoch as *open*; ``snapshot()`` (the end of the
epoch) *seals* it, and the next :data:`COMMIT_TICK` proves the sealed
records committed: they are *ready* and handed to the broker
(:class:`~.outbox.Outbox`), each group followed by a progress marker
(:mod:`.progress`). Without ``commit_gated`` a record is ready as it
arrives. A refused record holds the records behind it back
(:mod:`.refusals`). With more than ``max_inflight`` records unacknowledged
or held back, the worker waits (backpressure). Everything here but the
outbox is the worker's: it needs no lock.
"""

from __future__ import annotations

import bisect
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bytewax.outputs import StatefulSinkPartition

from .connection import (
    MQTTConnectError,
    MQTTPublishError,
    Protocol,
    connect_preferring_v5,
)
from .link import Link, MQTTLinkStats
from .message import MQTTMessage
from .names import client_id_of, output_key, progress_topic
from .outbox import Outbox, Record
from .progress import ProgressMarker
from .refusals import Refusals

if TYPE_CHECKING:
    from .sink import MQTTSink

log = logging.getLogger("connectors.mqtt")

WAIT_LOG_AFTER, WAIT_LOG_EVERY = 10.0, 60.0
"""Seconds of waiting for the broker before the first log line, and between the next ones."""


class _CommitTick:
    """Proof, by its arrival, that every epoch before the current one is committed."""

    def __repr__(self) -> str:
        return "COMMIT_TICK"

    def __reduce__(self):
        return "COMMIT_TICK"


COMMIT_TICK = _CommitTick()
"""The item :func:`~connectors.mqtt.operators.publish` sends each partition."""


@dataclass
class SinkState:
    """A partition's resume state: what it must still publish, in order.

    ``run`` names this partition's history (a new one when it starts without
    state) so that a progress marker of another history is never trusted;
    ``next_seq`` numbers its next record.
    """

    run: str
    next_seq: int = 0
    records: list[Record] = field(default_factory=list)


class _MQTTSinkPartition(StatefulSinkPartition[MQTTMessage | _CommitTick, SinkState]):
    def __init__(self, sink: MQTTSink, index: int, resume_state: SinkState | None) -> None:
        self._timeout = sink.timeout
        self._max_inflight = sink.max_inflight
        self._on_written = sink.on_written
        self._on_refused = sink.on_refused
        self._gated = sink.commit_gated
        state = resume_state if isinstance(resume_state, SinkState) else SinkState(run=secrets.token_hex(6))
        self._run, self._next_seq = state.run, state.next_seq
        self._open: list[Record] = []  # arrived in this epoch
        self._sealed: list[Record] = []  # in a snapshot, waiting for its commit
        # To hand to the broker now, in sequence order: committed (or, not
        # gated, arrived) records, and refused ones back in their place.
        self._ready: list[Record] = []
        self._acked: list[tuple[MQTTMessage, float]] = []  # accepted since the last report, and their wait
        self._waiting_since: float | None = None
        self._next_wait_log = 0.0
        self.stats = sink.stats.setdefault(client_id_of(sink.client_id, output_key(index)), MQTTLinkStats())
        self.stats.refused_reason, self.stats.refused_since = "", 0.0  # an earlier instance's
        self._link = _connect(sink, index, self.stats)
        self._refusals = Refusals(self._link.label)
        self._progress = (ProgressMarker(progress_topic(sink.progress_prefix, sink.client_id, index), self._run,
                                         self._link.label) if self._gated else None)
        done = -1
        if state.records and self._progress is not None:
            # Committed before the crash: publish what the broker does not have yet.
            done = self._progress.read(self._link, self._next_seq, len(state.records), time.monotonic())
        self._outbox = Outbox(self._link, self._progress, sink.envelopes)
        self._ready = [r for r in state.records if r[0] > done]
        self._show_refusal()
        if self._ready:
            self._pump()

    def write_batch(self, items: list[MQTTMessage | _CommitTick]) -> None:
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
        self._wait_until(lambda: len(self._outbox) + len(self._ready) <= self._max_inflight)
        self._report()

    def snapshot(self) -> SinkState:
        self._sealed.extend(self._open)
        self._open = []
        self._take_answers()
        pending = sorted(self._outbox.records() + self._ready, key=lambda r: r[0])
        return SinkState(self._run, self._next_seq, pending + self._sealed)

    def close(self) -> None:
        # The dataflow ended (finite input): nothing more will be committed
        # after this, so publish what is left and wait for it.
        try:
            self._ready.extend(self._sealed + self._open)
            self._sealed, self._open = [], []
            self._wait_until(lambda: not self._outbox and not self._ready)
            self._report()
        finally:
            self._link.stop()

    def _pump(self) -> None:
        """Take the broker's answers, then hand it what is ready: everything, or
        while a refusal lasts only the refused record, when its trial is due."""
        self._take_answers()
        if not self._ready:
            return
        if self._refusals.current is None:
            records, self._ready = self._ready, []
            self._outbox.send(records, marker=True)
        elif self._refusals.trial_due(time.monotonic()):
            record = self._ready.pop(0)
            self._refusals.current.on_trial = record[0]
            self._outbox.send([record], marker=False)

    def _take_answers(self) -> None:
        now = time.monotonic()
        for record, refused, sent_at in self._outbox.answers():
            if record is None:
                self._progress.answered(refused, now)
                if refused:
                    self._refusals.reports.append((self._progress.topic, refused))
            elif refused:
                bisect.insort(self._ready, record, key=lambda r: r[0])
                self._refusals.refused(record[0], record[1].topic, refused, now, len(self._ready))
            else:
                self._acked.append((record[1], now - sent_at))
                if self._refusals.accepted(record[0], now, len(self._ready)):
                    self._outbox.clear_floor()  # the records it held back go out before the next marker
        self._show_refusal()
        current = self._refusals.current
        since = [t for t in (self._outbox.oldest(), current and current.since) if t is not None]
        self.stats.pending = len(self._outbox) + len(self._ready)  # progress markers included: a handful
        self.stats.oldest_pending_since = min(since, default=0.0)

    def _show_refusal(self) -> None:
        current, progress = self._refusals.current, self._progress
        if current is not None:
            self.stats.refused_reason = f"the broker refuses to publish on {current.topic!r}: {current.reason}"
            self.stats.refused_since = current.since
        elif progress is not None and progress.refused:
            self.stats.refused_reason, self.stats.refused_since = progress.refused, progress.refused_since
        else:
            self.stats.refused_reason, self.stats.refused_since = "", 0.0

    def _report(self) -> None:
        acked, self._acked = self._acked, []
        if acked and self._on_written is not None:
            self._on_written([m for m, _ in acked], max(seconds for _, seconds in acked))
        refusals = self._refusals.take_reports()
        if self._on_refused is not None:
            for topic, reason in refusals:
                self._on_refused(topic, reason)

    def _wait_until(self, done: Callable[[], bool]) -> None:
        """Pump until ``done()``, up to the sink's timeout (backpressure)."""
        started = time.monotonic()
        deadline = started + (self._timeout if self._timeout is not None else float("inf"))
        self._pump()
        while not done():
            now = time.monotonic()
            if now >= deadline:
                why = f" ({self.stats.refused_reason})" if self._refusals.current is not None else ""
                raise MQTTPublishError(
                    f"{len(self._outbox) + len(self._ready)} messages not acknowledged by "
                    f"{self._link.connection.address} within {self._timeout:g}s{why}"
                )
            self._log_wait(len(self._outbox) + len(self._ready), now)
            time.sleep(0.005)
            self._pump()
        self._waiting_since = None

    def _log_wait(self, pending: int, now: float) -> None:
        """One line after :data:`WAIT_LOG_AFTER` seconds of waiting for PUBACKs, then one per :data:`WAIT_LOG_EVERY`."""
        if self._waiting_since is None:
            self._waiting_since, self._next_wait_log = now, now + WAIT_LOG_AFTER
        elif now >= self._next_wait_log:
            self._next_wait_log = now + WAIT_LOG_EVERY
            state = ("refused" if self._refusals.current is not None
                     else "connected" if self._link.connected else "disconnected")
            log.warning("%s: %d messages waiting %.0fs for the broker's acknowledgement (%s); waiting on",
                        self._link.label, pending, now - self._waiting_since, state,
                        extra={"partition": self._link.label, "state": state})


def _connect(sink: MQTTSink, index: int, stats: MQTTLinkStats) -> Link:
    """Connect output partition ``index``, waiting up to ``sink.timeout`` for a broker that is down.

    Bytewax builds sink partitions at the first output (or on resume),
    which may come during a broker outage: wait for it as a write would.
    """
    label = f"mqtt output #{index}"
    deadline = time.monotonic() + (sink.timeout if sink.timeout is not None else float("inf"))
    delay = 0.5
    while True:
        try:
            link, protocol = connect_preferring_v5(lambda p: _start(sink, index, label, stats, p))
        except MQTTConnectError as err:
            # Credentials or authorization: waiting cannot help.
            if err.refused or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: %s; retrying in %.1fs", label, err, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if protocol != "5":
            log.warning("%s: the broker does not speak MQTT 5; publishing with 3.1.1, so user properties "
                        "(reason, detail) go in envelopes%s and refusals are not seen", label,
                        f" on {sink.envelopes[1]}..." if sink.envelopes else " (none configured: dropped)")
        return link


def _start(sink: MQTTSink, index: int, label: str, stats: MQTTLinkStats, protocol: Protocol) -> Link:
    # A fresh session each time: nothing is left to receive.
    link = Link(sink.connection, client_id_of(sink.client_id, output_key(index)), protocol=protocol, label=label,
                partition=output_key(index), session_expiry=sink.session_expiry, stats=stats,
                on_event=sink.on_event, batch_read=True)
    # Our own bound (max_inflight) applies; paho must not hold records
    # back behind its window, or a progress marker would wait for PUBACKs.
    link.client.max_inflight_messages_set(0)
    link.client.max_queued_messages_set(0)
    link.start()
    return link
