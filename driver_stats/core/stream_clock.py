"""Wall-clock time that stands still while the input is cut off from the broker.

A driver's event-time clock advances with the wall clock while the driver is
quiet (:mod:`driver_stats.core.windows`), so that its last interval still closes.
But while the flow cannot read (the broker is down, the connection dropped)
the stream's event time has not really moved: the producers' messages are
waiting in their clients or the broker. Advancing then would reject them as
late when they arrive. This clock pauses while any input partition of the
process is disconnected; downtime of the whole process is likewise not
counted (:meth:`~driver_stats.core.windows.DriverWindows.resume`).
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class StreamClock:
    """``now()`` = wall time minus the time the input spent disconnected.

    >>> wall = iter([100.0, 100.0, 105.0, 107.0]).__next__
    >>> clock = StreamClock(wall)
    >>> clock.input_down("in-0")          # at 100
    >>> clock.now()                       # at 100: paused since 100
    100.0
    >>> clock.input_up("in-0")            # at 105: 5 s paused in all
    >>> clock.now()                       # at 107
    102.0
    """

    def __init__(self, wall: Callable[[], float] = time.time):
        self._wall = wall
        self._lock = threading.Lock()
        self._down: set[str] = set()
        self._down_since: float | None = None
        self._paused = 0.0

    def now(self) -> float:
        with self._lock:
            return self._now(self._wall())

    def _now(self, wall: float) -> float:
        paused = self._paused + (wall - self._down_since if self._down_since is not None else 0.0)
        return wall - paused

    def to_wall(self, stream_time: float) -> float:
        """The wall time at which ``now()`` reaches ``stream_time`` if nothing pauses."""
        with self._lock:
            wall = self._wall()
            return stream_time + (wall - self._now(wall))

    def input_down(self, name: str) -> None:
        """Input ``name`` lost its connection: pause while any input is down."""
        with self._lock:
            if not self._down:
                self._down_since = self._wall()
            self._down.add(name)

    def input_up(self, name: str) -> None:
        with self._lock:
            self._down.discard(name)
            if not self._down and self._down_since is not None:
                self._paused += self._wall() - self._down_since
                self._down_since = None
