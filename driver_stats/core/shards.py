"""Drivers grouped into a fixed number of shards: the unit of state the dataflow keeps.

The window step keys its state by :func:`shard_of` the driver id, not by
the driver. Bytewax keeps a deletion marker in the recovery store for every
state key it ever discarded, so keying by driver would grow the store with
every driver ever seen; with :data:`SHARDS` keys the store and the key count
stay bounded however many drivers come and go.

A shard keeps its drivers' wake-ups (:meth:`DriverWindows.next_wakeup`: the
stream time of a driver's next close, dropped dedupe keys or forgetting) by
time, in a heap of times, so a wake-up costs what is due, not a pass over
every driver the shard holds: with the production retention (an hour) and millions of
drivers a day, a shard holds hundreds to thousands of them, and the window
step asks every state key it touched for its next wake-up once per batch.

A shard forgets a driver once :meth:`DriverWindows.discardable` holds, and
raises its :attr:`DriverShard.floor` to the end of that driver's newest
record. A driver (re)created in the shard starts its clock at the floor, so
an event for an interval a forgotten driver closed is ``late``, never a
second record. The floor is part of the shard's snapshot, so this holds
across restarts too. The price: in a shard, an event older than its floor is
late even for a driver never seen; the floor trails the stream's event time
by at least the retention, so that only hits events that old.

>>> from datetime import datetime, timezone
>>> from driver_stats.contract import DriverTipped
>>> at = datetime(2024, 1, 1, 12, 0, 5, tzinfo=timezone.utc)
>>> shard = DriverShard(window_seconds=10, lateness_seconds=0, retention_seconds=60)
>>> tip = DriverTipped(driver_id="d1", journey_id="j1", tipped_at=at, amount=7)
>>> t = at.timestamp()
>>> shard.add(tip, t, stream_time=0.0)
<Outcome.COUNTED: 'counted'>
>>> [s.total_tips for s in shard.close_due(stream_time=t + 5)], len(shard)
([7], 1)
>>> shard.close_due(stream_time=t + 65), len(shard), shard.floor == t + 5
([], 0, True)
>>> shard.add(tip, t, stream_time=t + 65).reason
<Reason.LATE: 'late'>
"""

from __future__ import annotations

import heapq
import math
import zlib
from typing import Iterable

from ..contract import DriverStats, Event
from .windows import COUNTED, DriverWindows, Verdict

_NEVER = math.inf

SHARDS = 4096
"""State keys of the window step. Enough that a shard holds few drivers (so
a snapshot of a busy shard stays small), few enough to bound the store."""


def shard_of(driver_id: str) -> str:
    """The state key of ``driver_id``: stable across processes and restarts (unlike ``hash``)."""
    return f"{zlib.crc32(driver_id.encode('utf-8', 'surrogatepass')) % SHARDS:04d}"


class DriverShard:
    """The :class:`DriverWindows` of the drivers of one shard, their wake-ups, and the shard's floor.

    The wake-ups: :attr:`due` maps a driver to the stream time of its next
    wake-up (drivers with none are absent: unbounded lateness or retention).
    Intervals are aligned, so many drivers share a wake-up: :attr:`slots`
    maps each time to the drivers scheduled then, and :attr:`times` is a
    heap of those times; a driver in a slot counts only while :attr:`due`
    agrees. A wake-up that moves adds the driver to another slot and leaves
    the old entry to be skipped when its time comes (lazy invalidation);
    once stale entries outnumber live ones the slots are rebuilt, so they
    stay within twice the drivers.
    """

    __slots__ = ("window", "lateness", "retention", "drivers", "floor", "due", "slots", "times", "entries")

    def __init__(self, window_seconds: int, lateness_seconds: float, retention_seconds: float = math.inf):
        self.window = window_seconds
        self.lateness = lateness_seconds
        self.retention = retention_seconds
        self.drivers: dict[str, DriverWindows] = {}
        self.floor = -math.inf  # end of the newest record of a forgotten driver
        self.due: dict[str, float] = {}  # driver id -> stream time of its next wake-up
        self.slots: dict[float, list[str]] = {}  # stream time -> drivers (stale where due disagrees)
        self.times: list[float] = []  # heap of the slots' times
        self.entries = 0  # drivers in all slots, stale ones included

    def __len__(self) -> int:
        return len(self.drivers)

    def add(self, event: Event, event_time: float, stream_time: float) -> Verdict:
        """:meth:`DriverWindows.add` for the event's driver, created at the floor if new."""
        driver_id = event.driver_id
        windows = self.drivers.get(driver_id)
        if windows is None:
            windows = DriverWindows(self.window, self.lateness, driver_id, self.retention, self.floor)
            verdict = windows.add(event, event_time, stream_time)
            if verdict is COUNTED:  # a driver whose first event is refused leaves no state
                self.drivers[driver_id] = windows
                self._schedule(driver_id, windows)
            return verdict
        opened = len(windows.open)
        verdict = windows.add(event, event_time, stream_time)
        if len(windows.open) != opened:  # a new interval (the open dict's last key)
            # Beside open ones, it moves the wake-up only if it closes first (an event out of order).
            if not opened or next(reversed(windows.open)) + self.window + self.lateness < self.due.get(
                driver_id, _NEVER
            ):
                self._schedule(driver_id, windows)
        return verdict

    def close_due(self, stream_time: float, driver_ids: Iterable[str] | None = None) -> list[DriverStats]:
        """Close what is due, and forget drivers that may go.

        For ``driver_ids`` (the drivers of a batch: their own events may have
        moved their clocks past the stream time) by looking at each; with
        none, for the drivers whose wake-up the stream time reached. (A
        driver whose clock only the floor moved past an interval's end
        closes it when the stream time gets there, or with its next event:
        the same record, and an event for that interval is late meanwhile.)
        """
        woken = driver_ids is None
        if woken:
            driver_ids = self._pop_due(stream_time)
        records: list[DriverStats] = []
        drivers, due = self.drivers, self.due
        for driver_id in driver_ids:
            windows = drivers.get(driver_id)
            if windows is None:
                continue
            # (A driver with nothing open that may go is forgotten at once, its keys with it.)
            if windows.open or not windows.discardable(stream_time):
                closed = windows.close_due(stream_time)
                if closed:
                    records += closed
                if windows.open or not windows.discardable(stream_time):
                    if woken or closed or due.get(driver_id, _NEVER) <= stream_time:
                        self._schedule(driver_id, windows)
                    continue
            if windows.closed_until > self.floor:
                self.floor = windows.closed_until
            del drivers[driver_id]
            due.pop(driver_id, None)  # its slot entries are stale from now on
        return records

    def close_all(self) -> list[DriverStats]:
        """Close every interval of every driver (end of a finite input)."""
        records = [record for windows in self.drivers.values() for record in windows.close_all()]
        for driver_id, windows in self.drivers.items():  # only the forgetting is left to wake up for
            self._schedule(driver_id, windows)
        return records

    def next_wakeup(self) -> float | None:
        """The stream time of the shard's next close or forgetting, if any."""
        times, slots, due = self.times, self.slots, self.due
        while times:
            at = times[0]
            slot = slots[at]
            while slot and due.get(slot[-1]) != at:  # stale: the driver's wake-up moved, or it was forgotten
                slot.pop()
                self.entries -= 1
            if slot:
                return at
            heapq.heappop(times)
            del slots[at]
        return None

    def _schedule(self, driver_id: str, windows: DriverWindows) -> None:
        """(Re)compute the wake-up of ``driver_id``; put it in that time's slot if it moved."""
        at = windows.next_wakeup()
        due = self.due
        if at is None:
            due.pop(driver_id, None)
            return
        if due.get(driver_id) == at:
            return
        due[driver_id] = at
        slot = self.slots.get(at)
        if slot is None:
            self.slots[at] = [driver_id]
            heapq.heappush(self.times, at)
        else:
            slot.append(driver_id)
        self.entries += 1
        if self.entries > 2 * len(due) + 64:  # mostly stale entries: rebuild from the live ones
            slots: dict[float, list[str]] = {}
            for driver, when in due.items():
                slots.setdefault(when, []).append(driver)
            self.slots, self.times, self.entries = slots, list(slots), len(due)
            heapq.heapify(self.times)

    def _pop_due(self, stream_time: float) -> list[str]:
        """The drivers whose wake-up is at or before ``stream_time``, unscheduled (the caller schedules them again)."""
        times, slots, due, woken = self.times, self.slots, self.due, []
        while times and times[0] <= stream_time:
            at = heapq.heappop(times)
            slot = slots.pop(at)
            self.entries -= len(slot)
            for driver_id in slot:
                if due.get(driver_id) == at:
                    del due[driver_id]
                    woken.append(driver_id)
        return woken

    def snapshot(self) -> tuple:
        return self.floor, [windows.snapshot() for windows in self.drivers.values()]

    def restore(self, state: tuple) -> DriverShard:
        """Load a :meth:`snapshot` into this empty shard."""
        self.floor, drivers = state
        for driver_state in drivers:
            windows = DriverWindows.resume(driver_state, self.window, self.lateness, self.retention)
            windows.floor = self.floor
            self.drivers[windows.driver_id] = windows
            self._schedule(windows.driver_id, windows)
        return self
