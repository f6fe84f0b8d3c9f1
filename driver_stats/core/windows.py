"""One driver's open intervals: event-time clock, dedupe, lateness guard, totals.

This is the domain core, plain Python, called per driver by the dataflow's
window step (:class:`flows.steps.DriverWindowsLogic`) and directly by tests.
:meth:`DriverWindows.add` answers with an :class:`Outcome` (``COUNTED``,
``DUPLICATE``) or a :class:`Refused` that carries the rejection's reason and
detail.

Semantics (``../shared/CONTRACT.md``):

* Intervals are tumbling, ``[a, b)`` with ``a`` a multiple of the window
  length since the Unix epoch; an event counts in the interval holding its
  event time.
* The driver's clock (its *watermark*) is the stream's event time minus the
  allowed lateness: the larger of the newest event time seen for the driver
  and the *stream time* the caller passes in (the event time the whole input
  has reached, :mod:`driver_stats.core.stream_clock`), so a driver who goes
  quiet still gets its records once the stream moves on. Only events move
  it, never the wall clock, so a flow that reads behind its producers (a
  backlog, a frozen broker, a partition behind the others, a restart) finds
  nothing late that was not late when it was published. An interval closes,
  and its record is emitted, once the watermark reaches ``b``: the stream's
  event time has passed ``b + allowed lateness``.
* The watermark never goes back, not even behind a stream time that went
  back (a restart), and an event whose interval is closed is ``late``: a
  closed interval is never reopened and never gets a second record.
* An event is identified by (message type, journey_id); a repeat is counted
  once. A driver keeps the keys of an interval while it is open and for the
  state retention (``DRIVER_STATS_STATE_RETENTION_SECONDS``) after it
  closed: a repeat within that horizon is a duplicate (not counted, not
  rejected), even with other content or another event time.
* State is bounded. A driver whose intervals all closed more than the
  retention ago (on its clock) is :meth:`DriverWindows.discardable`: its
  shard forgets it (:mod:`driver_stats.core.shards`) and raises its *floor*
  to the end of the driver's newest record. A driver created later in that
  shard starts its clock at the floor, so an event for any interval a
  forgotten driver closed is ``late`` for it too: forgetting never reopens an
  interval. (Bytewax's own windowing forgets an idle key without such a
  floor, so a late event would open a fresh window.) Unbounded lateness
  (history replay) forgets nothing.
* Time spent while the flow is down does not advance the clock, so events
  published during an outage are counted when the broker redelivers them.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime, timezone
from typing import Iterable, Union

import msgspec

from ..contract import DriverStats, DriverTipped, Event, FinishReason, JourneyFinished, Reason, float32
from ..contract.limits import UINT32_MAX, timestamp_parts
from .dedupe import SeenKeys, dedupe_key


class Outcome(enum.Enum):
    """What :meth:`DriverWindows.add` did with an event it did not refuse."""

    COUNTED = "counted"
    DUPLICATE = "duplicate"
    """A repeat of a counted (message type, journey_id): not counted, not rejected."""


COUNTED = Outcome.COUNTED
DUPLICATE = Outcome.DUPLICATE
LATE = Reason.LATE


class Refused(msgspec.Struct, frozen=True, gc=False):
    """An event :meth:`DriverWindows.add` rejects: the reason and detail of its rejection."""

    reason: str
    detail: str


Verdict = Union[Outcome, Refused]

class IntervalTotals:
    """Running totals of one driver in one interval, and the events counted."""

    __slots__ = (
        "drop_offs",
        "driver_cancels",
        "distance",
        "price",
        "tips",
        "rating_sum",
        "rating_count",
        "seen",
    )

    def __init__(self) -> None:
        self.drop_offs = 0
        self.driver_cancels = 0
        self.distance = 0
        self.price = 0
        self.tips = 0
        self.rating_sum = 0
        self.rating_count = 0
        self.seen = SeenKeys()

    def add(self, event: Event) -> str | None:
        """Count ``event``; return the name of the total that would overflow, if one would.

        All or nothing: a refused event changes no total.
        """
        if isinstance(event, JourneyFinished):
            # Distance and price sum over every journey that ended here, as
            # the contract says; producers fill them only for DROP_OFF.
            distance = self.distance + event.distance
            price = self.price + event.price
            if distance > UINT32_MAX:
                return "total_distance"
            if price > UINT32_MAX:
                return "total_price"
            self.distance = distance
            self.price = price
            reason = event.finish_reason
            if reason is FinishReason.DROP_OFF:
                self.drop_offs += 1
            elif reason is FinishReason.DRIVER_CANCEL:
                self.driver_cancels += 1
            # RIDER_CANCEL and ADMIN_CANCEL count in no total, but their
            # driver still gets a record for the interval.
        elif isinstance(event, DriverTipped):
            tips = self.tips + event.amount
            if tips > UINT32_MAX:
                return "total_tips"
            self.tips = tips
        else:
            self.rating_sum += event.rating
            self.rating_count += 1
        return None

    def to_stats(self, driver_id: str, start: int, end: int) -> DriverStats:
        return DriverStats(
            driver_id=driver_id,
            interval_start=datetime.fromtimestamp(start, timezone.utc),
            interval_end=datetime.fromtimestamp(end, timezone.utc),
            total_drop_offs=self.drop_offs,
            total_driver_cancels=self.driver_cancels,
            total_distance=self.distance,
            total_price=self.price,
            total_tips=self.tips,
            avg_rating=float32(self.rating_sum / self.rating_count) if self.rating_count else 0.0,
        )

    def __getstate__(self):
        # A copy: the snapshot may be serialized after this interval changed.
        return tuple(getattr(self, name) for name in self.__slots__[:-1]) + (self.seen.snapshot(),)

    def __setstate__(self, state) -> None:
        for name, value in zip(self.__slots__, state):
            setattr(self, name, value)
        self.seen = SeenKeys.restore(self.seen)


class DriverWindows:
    """The open intervals, recent dedupe keys and event-time clock of one driver.

    Times are Unix seconds (floats); ``stream_time`` is the stream's event
    time (see the module docstring), passed in so tests control it.
    ``floor``: the clock never reads lower.

    >>> from datetime import datetime, timezone
    >>> at = datetime(2024, 1, 1, 12, 0, 5, tzinfo=timezone.utc)
    >>> w = DriverWindows(window_seconds=10, lateness_seconds=0)
    >>> w.add(DriverTipped(driver_id="d1", journey_id="j1", tipped_at=at, amount=7),
    ...       at.timestamp(), stream_time=0.0)
    <Outcome.COUNTED: 'counted'>
    >>> w.close_due(stream_time=at.timestamp())
    []
    >>> [s.total_tips for s in w.close_due(stream_time=at.timestamp() + 5)]
    [7]
    """

    __slots__ = (
        "driver_id",
        "window",
        "lateness",
        "retention",
        "floor",
        "open",
        "recent",
        "newest",
        "closed_until",
    )

    def __init__(
        self,
        window_seconds: int,
        lateness_seconds: float,
        driver_id: str = "",
        retention_seconds: float = math.inf,
        floor: float = -math.inf,
    ):
        self.driver_id = driver_id
        self.window = window_seconds
        self.lateness = lateness_seconds
        self.retention = retention_seconds
        self.floor = floor
        self.open: dict[int, IntervalTotals] = {}  # interval start (s) -> totals
        self.recent: dict[int, SeenKeys] = {}  # closed interval start -> its keys, for the retention
        self.newest = -math.inf  # newest event time counted for this driver
        self.closed_until = -math.inf  # end of the newest interval closed

    def watermark(self, stream_time: float) -> float:
        # Never behind what it closed already: the stream time a restarted
        # flow starts from can be behind the one that closed an interval
        # (what a worker processed counts before its partition's watermark
        # is published), and a closed interval must stay closed.
        return max(max(self.newest, stream_time) - self.lateness, self.floor, self.closed_until)

    def add(self, event: Event, event_time: float, stream_time: float) -> Verdict:
        """Count ``event`` whose event time is ``event_time``.

        Returns :data:`COUNTED`, :data:`DUPLICATE` for a repeat, or
        :class:`Refused` (reason ``late`` or ``overflow: <total>``).
        """
        # Whole seconds, exactly: a float Unix time floors to them only
        # within EXACT_FLOAT_SECONDS (beyond, its microseconds could round
        # into the next second, and so into the next interval).
        if -EXACT_FLOAT_SECONDS < event_time < EXACT_FLOAT_SECONDS:
            start = math.floor(event_time) // self.window * self.window
        else:
            start = timestamp_parts(event.event_time)[0] // self.window * self.window
        key = dedupe_key(event)
        totals = self.open.get(start)
        # A redelivery is a duplicate as long as its keys are held, even when
        # the clock already passed its interval.
        if totals is not None and key in totals.seen:
            return DUPLICATE
        for keys in self.recent.values():
            if key in keys:
                return DUPLICATE
        watermark = self.watermark(stream_time)
        if start + self.window <= watermark:
            return Refused(
                LATE,
                f"interval starting {_iso(start)} already closed "
                f"(window {self.window}s, allowed lateness {self.lateness}s)",
            )
        for other in self.open.values():  # same identity, other event time
            if key in other.seen:
                return DUPLICATE
        created = totals is None
        if created:
            totals = IntervalTotals()
        overflowing = totals.add(event)
        if overflowing:
            # A refused event leaves nothing: no interval, no dedupe key.
            reason = Reason.OVERFLOW.of(overflowing)
            return Refused(reason, f"interval total would exceed 2^32-1 ({reason})")
        if created:
            self.open[start] = totals
        totals.seen.add(key)
        if not self.driver_id:
            self.driver_id = event.driver_id
        if event_time > self.newest:
            self.newest = event_time
        return COUNTED

    def close_due(self, stream_time: float) -> list[DriverStats]:
        """Close and return, oldest first, every interval the watermark passed.

        Also forgets the dedupe keys of intervals closed more than the
        retention ago.
        """
        # Called for every driver of every batch: most often nothing is due.
        last_closable = self.watermark(stream_time) - self.window  # the latest start the watermark passed
        open_, recent = self.open, self.recent
        closed = (self._close([s for s in open_ if s <= last_closable])
                  if open_ and min(open_) <= last_closable else [])
        if recent and min(recent) + self.retention <= last_closable:
            for start in [s for s in recent if s + self.retention <= last_closable]:
                del recent[start]
        return closed

    def close_all(self) -> list[DriverStats]:
        """Close every interval (end of a finite input: nothing more can come)."""
        return self._close(list(self.open))

    def _close(self, starts) -> list[DriverStats]:
        window, closed = self.window, []
        for start in sorted(starts):
            totals = self.open.pop(start)
            closed.append(totals.to_stats(self.driver_id, start, start + window))
            self.recent[start] = totals.seen
            self.closed_until = max(self.closed_until, start + window)
        return closed

    def discardable(self, stream_time: float) -> bool:
        """Nothing open, and every record ended more than the retention ago on this clock."""
        return not self.open and self.closed_until + self.retention <= self.watermark(stream_time)

    def next_wakeup(self) -> float | None:
        """The stream time of the next change without new events: a close, dropped dedupe keys, or being discardable.

        (A driver may get there sooner on its own clock, by its own events.)
        """
        if self.open:
            target = min(self.open) + self.window
        elif self.retention != math.inf:
            target = self.closed_until + self.retention
        else:
            return None  # unbounded lateness: only the end of input closes
        if self.lateness == math.inf:
            return None
        # The keys of an older closed interval go before that (the retention after its end).
        if self.recent and self.retention != math.inf:
            target = min(target, min(self.recent) + self.window + self.retention)
        return target + self.lateness

    def snapshot(self) -> tuple:
        """Plain-data copy of the state for a recovery snapshot."""
        return (
            self.driver_id,
            self.newest - self.lateness,
            [(start, totals.__getstate__()) for start, totals in self.open.items()],
            self.closed_until,
            [(start, keys.snapshot()) for start, keys in self.recent.items()],
        )

    @classmethod
    def resume(
        cls,
        state: tuple,
        window_seconds: int,
        lateness_seconds: float,
        retention_seconds: float = math.inf,
    ) -> DriverWindows:
        """Rebuild from :meth:`snapshot`.

        The snapshot holds the driver's watermark (its newest event time minus
        the lateness), written that way by every version.
        """
        driver_id, watermark, intervals, *newer = state  # older snapshots had 3 fields
        windows = cls(window_seconds, lateness_seconds, driver_id, retention_seconds)
        # (-inf, or any watermark with unbounded lateness: nothing newer to know)
        windows.newest = watermark + lateness_seconds if math.isfinite(watermark + lateness_seconds) else -math.inf
        for start, totals_state in intervals:
            totals = IntervalTotals.__new__(IntervalTotals)
            totals.__setstate__(totals_state)
            windows.open[start] = totals
        if newer:
            windows.closed_until, recent = newer
            windows.recent = {start: SeenKeys.restore(log) for start, log in recent}
        return windows


EXACT_FLOAT_SECONDS = 2.0**33
"""Unix seconds (year 2242) within which a float time's floor is its exact whole second: its
spacing there is under 2 µs, so the nearest float to s + 0.999999 stays below s + 1."""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def close_order(stats: Iterable[DriverStats]) -> list[DriverStats]:
    """Records sorted by interval then driver: a stable order for files and tests."""
    return sorted(stats, key=lambda s: (s.interval_start, s.driver_id))
