"""driver_stats.core.stream_clock: when a window step looks at the stream time again."""

from __future__ import annotations

import doctest
import math

import pytest

from driver_stats.core import stream_clock
from driver_stats.core.stream_clock import (
    BACKLOG_NOTIFY_DELAY,
    CONTINUOUS,
    JUMP_MARGIN,
    LATE_JUMP_POLL,
    MAX_NOTIFY_DELAY,
    STALLED_POLL,
    StreamClock,
)


class Scripted:
    """A wall clock and a stream time that the test moves."""

    def __init__(self, stream: float) -> None:
        self.wall, self.stream = 0.0, stream

    def clock(self) -> StreamClock:
        return StreamClock(lambda: self.stream, timer=lambda: self.wall)


def test_the_docstring_examples():
    assert doctest.testmod(stream_clock).failed == 0


def test_a_backlog_read_fast_is_looked_at_again_just_after_each_jump():
    t = Scripted(stream=0.0)
    clock = t.clock()
    assert clock.wake_at(3.0) == 3.0  # no speed known: the wall clock's
    t.wall, t.stream = 1.0, 3600.0  # a replay: 1 hour of event time per second, one jump an epoch
    # Fast, but no cadence yet: within BACKLOG_NOTIFY_DELAY, however far ahead.
    assert clock.wake_at(t.stream + 7200) - t.wall == BACKLOG_NOTIFY_DELAY
    for second in (2, 3):
        t.wall, t.stream = float(second), second * 3600.0
        clock.wake_at(t.stream)
    # Hours ahead or a quarter of a second: the stream stays put until its
    # next jump (due at 4.0), so every key looks just after it, together.
    t.wall = 3.4
    assert clock.wake_at(t.stream + 7200) == clock.wake_at(t.stream + 0.25) == 4.0 + JUMP_MARGIN
    assert clock.wake_at(t.stream) == t.wall  # reached: now
    # The jump is late: looked at 4.05 and nothing yet. Look again every
    # LATE_JUMP_POLL for half a cadence, then wait for the next one (5.0).
    t.wall = 4.0 + JUMP_MARGIN
    assert clock.wake_at(t.stream + 1) == pytest.approx(t.wall + LATE_JUMP_POLL)
    t.wall = 4.45
    assert clock.wake_at(t.stream + 1) == 4.5
    t.wall = 4.5
    assert clock.wake_at(t.stream + 1) == 5.0 + JUMP_MARGIN
    # It comes at 4.52 (the cadence stays 1 s, the median) with a second
    # partition's watermark right after it, which is the same jump.
    t.wall, t.stream = 4.52, 4 * 3600.0
    clock.wake_at(t.stream + 1)
    t.wall, t.stream = 4.6, 4 * 3600.0 + 5
    assert clock.wake_at(t.stream + 1) == pytest.approx(5.52 + JUMP_MARGIN)


def test_the_backlog_fades_over_seconds_not_at_once():
    t = Scripted(stream=0.0)
    clock = t.clock()
    clock.wake_at(0)
    t.wall, t.stream = 1.0, 3600.0
    clock.wake_at(0)  # 3600 stream seconds per wall second
    t.wall = 2.0  # then a second without a jump (the next watermark is an epoch away)
    assert 0 < clock.wake_at(t.stream + 3600) - t.wall <= BACKLOG_NOTIFY_DELAY
    for second in range(3, 20):
        t.wall, t.stream = float(second), t.stream + 1  # caught up: the stream moves with the wall clock
        clock.wake_at(0)
    assert clock.wake_at(t.stream + 3) - t.wall == 3.0  # caught up: the wall clock's


def test_a_slow_or_stalled_stream_waits_no_longer_than_the_wall_clock_says_nor_than_the_cap():
    t = Scripted(stream=1000.0)
    clock = t.clock()
    clock.wake_at(0)
    t.wall, t.stream = 0.5, 1000.5  # moving at the wall clock's pace
    assert clock.wake_at(1004.5) == t.wall + 4.0  # speed taken as 1, never below
    t.wall = 2.0  # stalled: the stream did not move in 1.5 s (an idle input: it comes back in a jump)
    assert clock.wake_at(1004.5) == t.wall + STALLED_POLL
    assert clock.wake_at(1000.6) == pytest.approx(t.wall + 0.1)  # nearer than that: the distance
    assert clock.wake_at(1e9) == t.wall + MAX_NOTIFY_DELAY  # far: the cap
    assert clock.wake_at(900.0) == t.wall  # passed already: now


def test_no_stream_time_yet_waits_the_cap():
    t = Scripted(stream=-math.inf)
    clock = t.clock()
    assert clock.wake_at(100.0) == MAX_NOTIFY_DELAY
    t.wall, t.stream = 1.5, 50.0
    assert clock.wake_at(60.0) == 1.5 + min(10.0, MAX_NOTIFY_DELAY)  # the first speed sample: 1


def test_jumps_a_cadence_apart_are_waited_for_a_cadence():
    t = Scripted(stream=0.0)
    clock = t.clock()
    clock.wake_at(0)
    for jump in (1, 2, 3):  # `-s 5`: one jump every 5 s
        t.wall, t.stream = 5.0 * jump, 18000.0 * jump
        clock.wake_at(t.stream)
    t.wall = 17.0
    assert clock.wake_at(t.stream + 1) == 20.0 + JUMP_MARGIN  # (within MAX_NOTIFY_DELAY)
    t.wall = 21.0  # late: looked again every LATE_JUMP_POLL until 22.5
    assert clock.wake_at(t.stream + 1) == 21.0 + LATE_JUMP_POLL
    t.wall = 22.5
    assert clock.wake_at(t.stream + 1) == 25.0 + JUMP_MARGIN


def test_a_backlog_that_moves_with_every_batch_is_expected_when_its_speed_says():
    # What the window step processed moves the stream many times a second:
    # no jumps to wait for, so a key looks when the stream should get there.
    t = Scripted(stream=0.0)
    clock = t.clock()
    for step in range(1, 31):  # 3 s of batches, 0.1 s apart, 1000 stream seconds per wall second
        t.wall, t.stream = step * 0.1, step * 100.0
        clock.wake_at(t.stream + 1)
    assert CONTINUOUS > 0.2  # its changes, grouped into jumps, come SAME_JUMP apart
    assert clock.wake_at(t.stream + 300) == pytest.approx(t.wall + 0.3)
    assert clock.wake_at(t.stream + 1) == pytest.approx(t.wall + JUMP_MARGIN)  # soon, yet not at once
    assert clock.wake_at(t.stream + 1e6) == pytest.approx(t.wall + BACKLOG_NOTIFY_DELAY)
