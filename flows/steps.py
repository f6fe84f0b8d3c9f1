"""The Bytewax side of the flow's steps: the domain called per batch, with metrics.

* :func:`decode_batch` — ``decode_and_validate``: :class:`~driver_stats.core.intake.Intake`
  over a batch, counting received messages and rejections;
* :class:`DriverShardLogic` — ``dedupe_and_window``: the drivers of one
  shard (:mod:`driver_stats.core.shards`) as Bytewax stateful logic;
* :func:`stats_encoder` / :func:`rejected_encoder` — ``encode_stats`` /
  ``encode_rejected``: records and rejections as the messages to publish.

Counters are incremented once per batch, not per event (:mod:`flows.metrics`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional

from bytewax.operators import StatefulBatchLogic

from connectors.mqtt import MQTTMessage
from driver_stats.contract import DriverStats, Reason, Rejection, encode_stats, to_json
from driver_stats.core.intake import Accepted, Intake
from driver_stats.core.stream_clock import StreamClock
from driver_stats.core.shards import DriverShard
from driver_stats.core.windows import DUPLICATE, Refused
from driver_stats.settings import Settings

from . import metrics

_log = logging.getLogger("driver_stats.flow")


def decode_batch(intake: Intake) -> Callable[[list], list[Accepted | Rejection]]:
    """``intake.batch``, counting what came in by topic and what it rejected by reason."""

    def step(messages: list) -> list[Accepted | Rejection]:
        results = intake.batch(messages)
        metrics.count_by(metrics.MESSAGES_RECEIVED, Counter(message.topic for message in messages))
        metrics.count_by(metrics.REJECTED, Counter(r.reason for r in results if type(r) is Rejection))
        return results

    return step


class DriverShardLogic(StatefulBatchLogic):
    """Bytewax adapter around one :class:`DriverShard` (the drivers of one state key)."""

    def __init__(self, shard: DriverShard, clock: StreamClock):
        self.shard = shard
        self.clock = clock = clock.for_worker()
        # Where the input has partitions: what this worker handled of each (see notify_at).
        self.positions = clock.positions
        # The gauges' view of this shard (drivers, open intervals, the oldest
        # one's end): marked stale per batch, recounted when scraped. Bytewax
        # calls on_batch once per shard key of a batch, so in practice about
        # once per event or two: counting here would be per-event work.
        self.gauges = metrics.shard_gauges(clock.now, functools.partial(count_state, shard))

    @classmethod
    def builder(cls, settings: Settings, lateness: float, retention: float, clock: StreamClock):
        window = settings.window_seconds

        def build(resume_state: Optional[tuple]) -> DriverShardLogic:
            if resume_state is None:
                return cls(DriverShard(window, lateness, retention), clock)
            return cls(DriverShard(window, lateness, retention).restore(resume_state), clock)

        return build

    def on_batch(self, values: list[Accepted]) -> tuple[Iterable[DriverStats | Rejection], bool]:
        stream_time = self.clock.now()
        add = self.shard.add
        out: list[DriverStats | Rejection] = []
        duplicates = 0
        for accepted in values:
            try:
                verdict = add(accepted.event, accepted.event_time, stream_time)
            except Exception as err:  # noqa: BLE001 - see _internal_error
                out.append(_internal_error(err, accepted))
                continue
            if type(verdict) is Refused:
                out.append(Rejection(accepted.source_topic, accepted.payload, verdict.reason, verdict.detail))
            elif verdict is DUPLICATE:
                duplicates += 1
        metrics.EVENTS_ACCEPTED.inc(len(values) - duplicates - len(out))
        if duplicates:
            metrics.DUPLICATES.inc(duplicates)
        if out:
            metrics.count_by(metrics.REJECTED, Counter(r.reason for r in out))
        touched = {accepted.event.driver_id for accepted in values}
        if self.positions is not None:
            self.positions.handled(values)
        self.gauges.stale = True
        return out + self._close(self.shard.close_due(stream_time, touched)), self.RETAIN

    @staticmethod
    def _close(records: list[DriverStats]) -> list[DriverStats]:
        if records:
            metrics.RECORDS_EMITTED.inc(len(records))
        return records

    def on_notify(self) -> tuple[Iterable[DriverStats], bool]:
        self.gauges.stale = True
        return self._close(self.shard.close_due(self.clock.now())), self.RETAIN

    def on_eof(self) -> tuple[Iterable[DriverStats], bool]:
        # A finite input (tests, replay) is complete: close every interval.
        # The clocks are kept, so the guard against late events stays.
        self.gauges.stale = True
        return self._close(self.shard.close_all()), self.RETAIN

    def notify_at(self) -> Optional[datetime]:
        if self.positions is not None:
            # Bytewax asks after on_batch of every key the arrival held: all of it is handled now.
            self.positions.settle()
        at = self.shard.next_wakeup()
        if at is None:
            return None
        return _bytewax_time(self.clock.wake_at(at))

    def snapshot(self) -> tuple:
        return self.shard.snapshot()


def _bytewax_time(deadline: float) -> Optional[datetime]:
    """``deadline`` (``time.monotonic`` seconds) as the aware datetime Bytewax schedules on (the host's clock).

    Converted at the last moment, from the delay left: a step of the host's
    clock before then shifts nothing already measured.
    """
    # To the millisecond, so that the keys waiting for the same jump share one datetime (cached).
    return _utc_datetime(round(time.time() + (deadline - time.monotonic()), 3))


@functools.lru_cache(maxsize=64)
def _utc_datetime(unix: float) -> Optional[datetime]:
    """``unix`` as an aware datetime; None beyond year 9999 (never, as far as this process is concerned)."""
    try:
        return datetime.fromtimestamp(unix, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def count_state(shard: DriverShard) -> tuple[int, int, float]:
    """(drivers, open intervals, end of the oldest open interval or inf) of ``shard``.

    Called by the scrape thread while the shard's worker may be changing it:
    each read below is one C-level operation under the GIL (copying the
    drivers, the size and the smallest key of an open-interval dict), so it
    sees every dict whole; the totals may mix moments of one scrape, which a
    gauge can afford.
    """
    count, oldest = 0, math.inf
    for windows in list(shard.drivers.values()):
        starts = windows.open
        if starts:
            count += len(starts)
            oldest = min(oldest, min(starts, default=math.inf))
    return len(shard.drivers), count, oldest + shard.window


def _error_detail(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err)[:200]}"


def _internal_error(err: Exception, accepted: Accepted) -> Rejection:
    """A bug of ours met by one event: reject that event, never crash the flow.

    A crash would be a crash loop: the broker redelivers the unacknowledged
    message and recovery restores the same state. The window logic checks
    everything before it changes anything (a refused event leaves no trace),
    so the driver's state stays as it was before this event.
    """
    _log.error("event rejected after an internal error (topic %s)", accepted.source_topic, exc_info=err)
    return Rejection(accepted.source_topic, accepted.payload, Reason.INTERNAL_ERROR, _error_detail(err))


def stats_encoder(settings: Settings) -> Callable[[DriverStats], MQTTMessage]:
    """A record as its message on the stats topic, in the configured output format."""
    stats_topic = settings.topic_driver_stats
    encode = to_json if settings.output_format == "json" else encode_stats
    rejected_prefix = settings.rejected_prefix

    def stats_message(stats: DriverStats) -> MQTTMessage:
        try:
            return MQTTMessage(stats_topic, encode(stats))
        except Exception as err:  # noqa: BLE001 - a record is never lost, nor a crash loop
            # Validation keeps every total within uint32, so this is a bug of
            # ours (or a snapshot written by one): the record goes, as JSON,
            # to rejected/<stats topic> instead of stopping the flow.
            _log.error("record could not be encoded: %s", stats, exc_info=err)
            return MQTTMessage(stats_topic, to_json(stats)).rejected(
                Reason.UNENCODABLE, _error_detail(err), rejected_prefix
            )

    return stats_message


def rejected_encoder(settings: Settings) -> Callable[[Rejection], MQTTMessage]:
    """A rejection as the original message on ``rejected/<source topic>``, with its reason."""
    rejected_prefix = settings.rejected_prefix

    def rejected_message(rejection: Rejection) -> MQTTMessage:
        original = MQTTMessage(rejection.source_topic, rejection.payload)
        return original.rejected(rejection.reason, rejection.detail, rejected_prefix)

    return rejected_message
