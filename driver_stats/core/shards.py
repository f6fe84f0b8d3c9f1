"""Drivers grouped into a fixed number of shards: the unit of state the dataflow keeps.

The window step keys its state by :func:`shard_of` the driver id, not by
the driver. Bytewax keeps a deletion marker in the recovery store for every
state key it ever discarded, so keying by driver would grow the store with
every driver ever seen; with :data:`SHARDS` keys the store and the key count
stay bounded however many drivers come and go.

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

import math
import zlib
from typing import Iterable

from ..contract import DriverStats, Event
from .windows import COUNTED, DriverWindows, Verdict

SHARDS = 4096
"""State keys of the window step. Enough that a shard holds few drivers (so
a snapshot of a busy shard stays small), few enough to bound the store."""


def shard_of(driver_id: str) -> str:
    """The state key of ``driver_id``: stable across processes and restarts (unlike ``hash``)."""
    return f"{zlib.crc32(driver_id.encode('utf-8', 'surrogatepass')) % SHARDS:04d}"


class DriverShard:
    """The :class:`DriverWindows` of the drivers of one shard, and the shard's floor."""

    __slots__ = ("window", "lateness", "retention", "drivers", "floor")

    def __init__(self, window_seconds: int, lateness_seconds: float, retention_seconds: float = math.inf):
        self.window = window_seconds
        self.lateness = lateness_seconds
        self.retention = retention_seconds
        self.drivers: dict[str, DriverWindows] = {}
        self.floor = -math.inf  # end of the newest record of a forgotten driver

    def __len__(self) -> int:
        return len(self.drivers)

    def add(self, event: Event, event_time: float, stream_time: float) -> Verdict:
        """:meth:`DriverWindows.add` for the event's driver, created at the floor if new."""
        windows = self.drivers.get(event.driver_id)
        if windows is not None:
            return windows.add(event, event_time, stream_time)
        windows = DriverWindows(self.window, self.lateness, event.driver_id, self.retention, self.floor)
        verdict = windows.add(event, event_time, stream_time)
        if verdict is COUNTED:  # a driver whose first event is refused leaves no state
            self.drivers[event.driver_id] = windows
        return verdict

    def close_due(self, stream_time: float, driver_ids: Iterable[str] | None = None) -> list[DriverStats]:
        """Close what is due for ``driver_ids`` (default: all), and forget drivers that may go."""
        records: list[DriverStats] = []
        for driver_id in list(self.drivers) if driver_ids is None else driver_ids:
            windows = self.drivers.get(driver_id)
            if windows is None:
                continue
            records += windows.close_due(stream_time)
            if windows.discardable(stream_time):
                self.floor = max(self.floor, windows.closed_until)
                del self.drivers[driver_id]
        return records

    def close_all(self) -> list[DriverStats]:
        """Close every interval of every driver (end of a finite input)."""
        return [record for windows in self.drivers.values() for record in windows.close_all()]

    def next_wakeup(self) -> float | None:
        """The stream time of the shard's next close or forgetting, if any."""
        times = [at for w in self.drivers.values() if (at := w.next_wakeup()) is not None]
        return min(times, default=None)

    def snapshot(self) -> tuple:
        return self.floor, [windows.snapshot() for windows in self.drivers.values()]

    def restore(self, state: tuple) -> DriverShard:
        """Load a :meth:`snapshot` into this empty shard."""
        self.floor, drivers = state
        for driver_state in drivers:
            windows = DriverWindows.resume(driver_state, self.window, self.lateness, self.retention)
            windows.floor = self.floor
            self.drivers[windows.driver_id] = windows
        return self
