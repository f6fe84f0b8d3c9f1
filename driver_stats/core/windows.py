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
* The driver's clock (its *watermark*) is the largest event time seen minus
  the allowed lateness, and it keeps advancing with wall-clock time while no
  newer event comes (as Bytewax's ``EventClock``), so a driver who goes quiet
  still gets its records. An interval closes, and its record is emitted, once
  the watermark reaches ``b``: the stream's event time has passed
  ``b + allowed lateness``.
* The watermark never goes back, and an event whose interval is closed is
  ``late``: a closed interval is never reopened and never gets a second
  record.
* State is bounded: the stream has a *floor*, ``now - retention`` on the
  stream clock (``DRIVER_STATS_STATE_RETENTION_SECONDS``, at least the
  allowed lateness), and every driver's watermark is at least the floor. A
  driver with nothing open whose newest record ended at or before the floor
  is forgotten (:meth:`DriverWindows.discardable`; the dataflow discards the
  key, a deletion in the recovery store). Every interval it ever closed ended
  at or before the floor, and the floor only moves forward, so an event for
  one of them is ``late`` for the recreated driver too: forgetting never
  reopens an interval. (Bytewax's own windowing forgets an idle key without
  such a floor, and a late event would open a fresh window.) The cost: an
  event more than the retention behind the stream clock is ``late`` even for
  a driver never seen. The stream clock stops while the input is
  disconnected, so a broker outage does not age events; unbounded lateness
  (history replay) has no floor and forgets nothing.
* An event is identified by (message type, journey_id); a repeat is counted
  once. Dedupe entries live in the interval they were counted in and are
  dropped when it closes: a key is kept exactly as long as its interval can
  still accept events, so memory follows the open intervals, not history.
  A repeat whose interval is still held is a duplicate even if the clock
  already passed the interval; one arriving after its interval was emitted
  can no longer be recognised and is rejected as ``late``.
* Wall-clock time spent while the flow is down does not advance the clock
  (:meth:`DriverWindows.resume` restarts it), so events published during an
  outage are counted when the broker redelivers them.
"""

from __future__ import annotations

import enum
import math
import struct
from datetime import datetime, timezone
from typing import Iterable, Union

import msgspec

from ..contract import DriverRated, DriverStats, DriverTipped, Event, FinishReason, JourneyFinished, Reason, float32
from ..contract.limits import UINT32_MAX


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

# Dedupe keys hold a small number per message type instead of the class.
_KIND = {DriverRated: 0, DriverTipped: 1, JourneyFinished: 2}


class SeenKeys:
    """The (message type, journey_id) keys counted in one interval.

    A set answers "seen?"; an append-only byte log of the same keys makes a
    snapshot one copy of bytes instead of a copy of a set of tuples, so an
    interval with a million journeys costs a snapshot milliseconds, not
    seconds (snapshots happen every epoch for every driver that changed).
    """

    __slots__ = ("_keys", "_log")
    _HEADER = struct.Struct("<BI")  # message type, journey_id length in bytes

    def __init__(self) -> None:
        self._keys: set[tuple[int, str]] = set()
        self._log = bytearray()

    def __contains__(self, key: tuple[int, str]) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[int, str]) -> None:
        self._keys.add(key)
        journey = key[1].encode("utf-8", "surrogatepass")
        self._log += self._HEADER.pack(key[0], len(journey))
        self._log += journey

    def snapshot(self) -> bytes:
        return bytes(self._log)

    @classmethod
    def restore(cls, log: bytes | frozenset) -> SeenKeys:
        seen = cls()
        if isinstance(log, frozenset):  # written before the log existed
            for key in log:
                seen.add(key)
            return seen
        seen._log = bytearray(log)
        header, offset = cls._HEADER, 0
        while offset < len(log):
            kind, length = header.unpack_from(log, offset)
            offset += header.size
            seen._keys.add((kind, log[offset : offset + length].decode("utf-8", "surrogatepass")))
            offset += length
        return seen


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
    """The open intervals and the event-time clock of one driver.

    Times are Unix seconds (floats); ``now`` is wall-clock time, passed in so
    tests control it.

    >>> from datetime import datetime, timezone
    >>> at = datetime(2024, 1, 1, 12, 0, 5, tzinfo=timezone.utc)
    >>> w = DriverWindows(window_seconds=10, lateness_seconds=0)
    >>> w.add(DriverTipped(driver_id="d1", journey_id="j1", tipped_at=at, amount=7),
    ...       at.timestamp(), now=0.0)
    <Outcome.COUNTED: 'counted'>
    >>> [s.total_tips for s in w.close_due(now=10.0)]
    [7]
    """

    __slots__ = (
        "driver_id",
        "window",
        "lateness",
        "retention",
        "open",
        "watermark_base",
        "wall_at_base",
        "closed_until",
    )

    def __init__(
        self,
        window_seconds: int,
        lateness_seconds: float,
        driver_id: str = "",
        retention_seconds: float = math.inf,
    ):
        self.driver_id = driver_id
        self.window = window_seconds
        self.lateness = lateness_seconds
        self.retention = retention_seconds
        self.open: dict[int, IntervalTotals] = {}  # interval start (s) -> totals
        # watermark(now) = watermark_base + (now - wall_at_base)
        self.watermark_base = -math.inf
        self.wall_at_base = 0.0
        self.closed_until = -math.inf  # end of the newest interval closed

    def watermark(self, now: float) -> float:
        """The driver's clock, never below the stream's floor ``now - retention``."""
        return max(self.watermark_base + max(0.0, now - self.wall_at_base), now - self.retention)

    def discardable(self, now: float) -> bool:
        """Whether this state can go: nothing open, and every closed interval behind the floor."""
        return not self.open and self.closed_until <= now - self.retention

    def discard_at(self) -> float | None:
        """Wall-clock time from which :meth:`discardable` holds if no event comes, if ever."""
        if self.open or self.retention == math.inf:
            return None
        return self.closed_until + self.retention

    def add(self, event: Event, event_time: float, now: float) -> Verdict:
        """Count ``event`` whose event time is ``event_time``.

        Returns :data:`COUNTED`, :data:`DUPLICATE` for a repeat, or
        :class:`Refused` (reason ``late`` or ``overflow: <total>``).
        """
        start = int(event_time // self.window) * self.window
        key = (_KIND[type(event)], event.journey_id)
        totals = self.open.get(start)
        # A redelivery is a duplicate as long as its interval is still held,
        # even when the clock already passed it (it closes at batch end).
        if totals is not None and key in totals.seen:
            return DUPLICATE
        watermark = self.watermark(now)
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
        base = event_time - self.lateness
        if base > watermark:
            self.watermark_base = base
            self.wall_at_base = now
        return COUNTED

    def close_due(self, now: float) -> list[DriverStats]:
        """Close and return, oldest first, every interval the watermark passed."""
        watermark = self.watermark(now)
        return self._close(start for start in self.open if start + self.window <= watermark)

    def close_all(self) -> list[DriverStats]:
        """Close every interval (end of a finite input: nothing more can come)."""
        return self._close(list(self.open))

    def _close(self, starts) -> list[DriverStats]:
        window = self.window
        closed = [
            self.open.pop(start).to_stats(self.driver_id, start, start + window)
            for start in sorted(starts)
        ]
        if closed:
            self.closed_until = max(self.closed_until, closed[-1].interval_end.timestamp())
        return closed

    def next_close(self) -> float | None:
        """Wall-clock time at which the oldest open interval closes, if any."""
        if not self.open or self.watermark_base == -math.inf:
            return None  # no clock yet, or unbounded lateness: only the end of input closes
        end = min(self.open) + self.window
        # The floor may get there first: watermark = max(own clock, now - retention).
        return min(self.wall_at_base + (end - self.watermark_base), end + self.retention)

    def snapshot(self, now: float) -> tuple:
        """Plain-data copy of the state for a recovery snapshot; its last field is ``now``."""
        return (
            self.driver_id,
            self.watermark(now),
            [(start, totals.__getstate__()) for start, totals in self.open.items()],
            self.closed_until,
            now,
        )

    @classmethod
    def resume(
        cls,
        state: tuple,
        window_seconds: int,
        lateness_seconds: float,
        now: float,
        retention_seconds: float = math.inf,
    ) -> DriverWindows:
        """Rebuild from :meth:`snapshot`; the clock restarts at ``now``.

        Downtime must not age the driver's intervals: the events published
        meanwhile are still to come from the broker.
        """
        driver_id, watermark, intervals, *newer = state  # older snapshots had 3 fields
        windows = cls(window_seconds, lateness_seconds, driver_id, retention_seconds)
        windows.closed_until = newer[0] if newer else -math.inf
        windows.watermark_base = watermark
        windows.wall_at_base = now
        for start, totals_state in intervals:
            totals = IntervalTotals.__new__(IntervalTotals)
            totals.__setstate__(totals_state)
            windows.open[start] = totals
        return windows


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def close_order(stats: Iterable[DriverStats]) -> list[DriverStats]:
    """Records sorted by interval then driver: a stable order for files and tests."""
    return sorted(stats, key=lambda s: (s.interval_start, s.driver_id))
