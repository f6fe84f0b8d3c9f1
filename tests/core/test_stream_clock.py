"""driver_stats.core.stream_clock: when a window step looks at the stream time again."""

from __future__ import annotations

import doctest
import math

from driver_stats.core import stream_clock
from driver_stats.core.stream_clock import MAX_NOTIFY_DELAY, StreamClock


class Scripted:
    """A wall clock and a stream time that the test moves."""

    def __init__(self, stream: float) -> None:
        self.wall, self.stream = 0.0, stream

    def clock(self) -> StreamClock:
        return StreamClock(lambda: self.stream, wall=lambda: self.wall)


def test_the_docstring_examples():
    assert doctest.testmod(stream_clock).failed == 0


def test_a_backlog_read_fast_is_looked_at_again_sooner():
    t = Scripted(stream=0.0)
    clock = t.clock()
    assert clock.to_wall(3.0) == 3.0  # no speed known: the wall clock's
    for second in range(1, 4):  # a replay: 1 hour of event time per second
        t.wall, t.stream = float(second), second * 3600.0
        clock.to_wall(t.stream)
    # 10 minutes of event time ahead is a sixth of a second away at that speed.
    assert math.isclose(clock.to_wall(t.stream + 600) - t.wall, 600 / 3600)


def test_a_slow_or_stalled_stream_waits_no_longer_than_the_wall_clock_says_nor_than_the_cap():
    t = Scripted(stream=1000.0)
    clock = t.clock()
    clock.to_wall(0)
    t.wall = 2.0  # stalled: the stream did not move in 2 s
    assert clock.to_wall(1002.0) == t.wall + 2.0  # speed taken as 1, never below
    assert clock.to_wall(1e9) == t.wall + MAX_NOTIFY_DELAY
    assert clock.to_wall(900.0) == t.wall  # passed already: now


def test_no_stream_time_yet_waits_the_cap():
    t = Scripted(stream=-math.inf)
    clock = t.clock()
    assert clock.to_wall(100.0) == MAX_NOTIFY_DELAY
    t.wall, t.stream = 1.5, 50.0
    assert clock.to_wall(60.0) == 1.5 + min(10.0, MAX_NOTIFY_DELAY)  # the first speed sample: 1
