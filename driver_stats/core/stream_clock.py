"""The stream's event time: how far the whole input has read, as far as the whole flow has processed.

A driver's intervals close once the *stream* has passed them
(:mod:`driver_stats.core.windows`), also while the driver itself is quiet.
The stream time comes from the input, never from the wall clock: over MQTT it
is the input's low watermark (:mod:`connectors.mqtt.watermarks`), the event
time every input partition had read before the dataflow finished an epoch,
lowest first. So a flow reading behind its producers (a backlog after an
outage, a frozen broker, the unacknowledged-message cap, a partition behind
the others, a restart) moves its clock at the pace it reads, and finds late
only what was late when it was published. A caught-up, idle input moves it
with the wall clock (its partitions' probes).

Tests and history replay give any function of their own (a fixed or
scripted time).
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

MAX_NOTIFY_DELAY = 5.0
"""Seconds a window step sleeps at most before looking at the stream time again."""

BACKLOG_NOTIFY_DELAY = 1.0
"""... while the stream runs faster than the wall clock (a backlog, a replay):
it moves in jumps there (once an epoch), so no distance says when it will
arrive. Each state key with open intervals then looks again just after the
stream's next jump is due (:data:`JUMP_MARGIN`), or, until the jumps'
cadence is known, within this many seconds."""

BACKLOG_SPEED = 1.5
"""Stream seconds per wall second above which the stream is reading a backlog."""

SPEED_SAMPLE = 1.0
"""Wall seconds over which the stream's speed is measured."""

JUMP_MARGIN = 0.05
"""Seconds after a jump is due that a window step in a backlog looks."""

LATE_JUMP_POLL = 0.1
"""... and, while the jump is late, how often it looks again, for up to half
the cadence. A jump comes once an epoch, when the epoch before it is
committed, and that commit waits for the flow to process the epoch: under
load the gaps between jumps vary by a fifth or more (0.77-1.24 s measured
with 1 s epochs). Records closed after the jump, within its epoch, go out
when that epoch ends; looking late by one poll costs nothing, waiting for
the next jump or closing in the next epoch costs a whole epoch. (A key that
receives events closes at once anyway: this is for the quiet ones.)"""

JUMPS_MEASURED = 5
"""The cadence of the jumps is the median of the last this many gaps between them."""

SAME_JUMP = 0.2
"""Changes less than this many seconds after a jump are part of it (the
watermarks of several partitions arrive one after the other)."""


class StreamClock:
    """``now()`` = the stream time; :meth:`to_wall` says when to look again.

    >>> clock = StreamClock(lambda: 100.0, wall=lambda: 5000.0)
    >>> clock.now(), clock.to_wall(102.0), clock.to_wall(99.0), clock.to_wall(1e9)
    (100.0, 5002.0, 5000.0, 5005.0)

    A stream that reads a backlog (here 600 stream seconds per wall second,
    in one jump a second) is looked at again just after its next jump is due:

    >>> times = {"wall": 0.0, "stream": 1000.0}
    >>> clock = StreamClock(lambda: times["stream"], wall=lambda: times["wall"])
    >>> clock.to_wall(1600.0)
    5.0
    >>> for second in (1, 2, 3):
    ...     times.update(wall=float(second), stream=1000.0 + 600 * second)
    ...     _ = clock.to_wall(1e9)
    >>> times.update(wall=3.4)
    >>> clock.to_wall(3000.0), clock.to_wall(2800.5)
    (4.05, 4.05)
    """

    def __init__(self, stream_time: Callable[[], float], wall: Callable[[], float] = time.time):
        self._stream_time = stream_time
        self._wall = wall
        self._speed = 1.0
        self._mark: tuple[float, float] | None = None  # (wall, stream) where the speed is measured from
        self._seen = -math.inf  # the stream time last seen
        self._jumped: float | None = None  # wall time the last jump was first seen
        self._gaps: deque[float] = deque(maxlen=JUMPS_MEASURED)  # wall seconds between the last jumps

    def now(self) -> float:
        return self._stream_time()

    def to_wall(self, stream_time: float) -> float:
        """The wall time to look again for ``stream_time``.

        A caught-up stream moves about as fast as the wall clock: look again
        after the distance, at most :data:`MAX_NOTIFY_DELAY`. One that reads
        a backlog moves faster and in jumps, once an epoch, while its speed,
        measured over the last :data:`SPEED_SAMPLE` seconds (and never below
        half the one before, since a second may see no jump at all), is above
        :data:`BACKLOG_SPEED`: look again :data:`JUMP_MARGIN` after its next
        jump is due (from the cadence of the last ones; until that is known,
        within :data:`BACKLOG_NOTIFY_DELAY`), and every
        :data:`LATE_JUMP_POLL` while it is late. Every state key then looks
        together, just after the jump, and its records close in the epoch
        that follows the jump rather than in a later one.
        """
        now, wall = self.now(), self._wall()
        self._measure(wall, now)
        ahead = stream_time - now
        if math.isnan(ahead):
            ahead = math.inf
        if ahead <= 0:
            return wall
        if self._speed <= BACKLOG_SPEED:
            return wall + min(ahead, MAX_NOTIFY_DELAY)
        if not self._gaps:  # no cadence yet
            return wall + min(ahead, BACKLOG_NOTIFY_DELAY)
        # The stream stays where it is until its next jump, however close the target.
        cadence = sorted(self._gaps)[len(self._gaps) // 2]
        due = self._jumped + cadence * max(1, math.floor((wall - self._jumped) / cadence))
        if wall >= due + cadence / 2:
            due += cadence
        if wall < due + JUMP_MARGIN:
            return min(due + JUMP_MARGIN, wall + MAX_NOTIFY_DELAY)
        return min(wall + LATE_JUMP_POLL, due + cadence / 2)  # late: look again soon

    def _measure(self, wall: float, stream: float) -> None:
        if not math.isfinite(stream):
            return
        # The first value seen is no jump: when the stream got there is unknown.
        if stream != self._seen and self._seen != -math.inf:
            if self._jumped is None or wall - self._jumped >= SAME_JUMP:
                if self._jumped is not None:
                    self._gaps.append(wall - self._jumped)
                self._jumped = wall
        self._seen = stream
        if self._mark is None:
            self._mark = (wall, stream)
            return
        since, then = self._mark
        if wall - since >= SPEED_SAMPLE:
            self._speed = max(1.0, (stream - then) / (wall - since), self._speed / 2)
            self._mark = (wall, stream)
