"""When an input partition asks Bytewax to wake it: epochs that move together, workers that sleep while held.

Bytewax 0.21 moves each input partition to its next epoch on a clock of its
own, at the first activation at least ``epoch_interval`` after its last move
(on the wall clock). A partition that has moved is then held until the whole
dataflow, every worker, is done with the previous epoch; while it is held its
wake-up (``next_awake``) is not asked again, and once that time has passed
its worker is re-activated at once, again and again: the worker spins until
the hold ends (Bytewax issue #161). An epoch ends only when its last input
partition moves, so a partition whose clock runs behind the others' holds
all of them, busy or idle, for the difference, every epoch.

:class:`EpochSchedule` does two things about it:

* **Shared boundaries.** Every input's epoch moves at the multiples of
  ``period`` (``epoch_interval`` plus a margin of 5 %, 20 to 100 ms) on the
  wall clock, which all processes of a host read alike (and NTP keeps
  within milliseconds across hosts). A partition reads (busy) or polls
  (idle) until its epoch may move, then waits for the boundary when it is
  within the margin. A partition that read nothing this epoch waits for the
  next boundary however far: that aligns partitions whose processes started
  apart at their first quiet epoch. One that read does not wait for a
  boundary further away (the others would wait for it, and more may come):
  it moves as soon as it may, its epochs then last ``epoch_interval`` and a
  little, less than ``period``, and it reaches the boundaries within about
  ``period / margin`` epochs.
* **Sleep through the hold.** In the activation in which its epoch moves, a
  partition asks to be woken after the hold it expects instead of at once:
  an idle one the longest of its last few holds, a busy one the shortest
  (reading soon after a hold pays more than the spin it saves).

    >>> now = [100.81]  # built 10 ms after a boundary (96 × 1.05)
    >>> schedule = EpochSchedule(epoch_interval=1.0, poll=0.01, clock=lambda: now[0])
    >>> schedule.period
    1.05
    >>> round(schedule.wake_time(more=False), 3)  # early in the epoch: the next poll
    100.82
    >>> schedule.wake_time(more=True) is None  # with messages waiting: at once
    True
    >>> now[0] = 101.8  # the epoch may move from 101.81 on: wait for the boundary near, 97 × 1.05
    >>> round(schedule.wake_time(more=True), 3)
    101.85
    >>> now[0] = 101.852  # the boundary: the epoch moves in this activation
    >>> schedule.activated(); round(schedule.wake_time(more=False), 3)  # no hold seen yet: the next poll
    101.862
    >>> schedule.epoch_moved()
    >>> now[0] = 102.152  # the hold ended 0.3 s later
    >>> round(schedule.wake_time(more=False), 3)
    102.162
    >>> schedule.holds  # the next time, an idle partition sleeps 0.3 s
    [0.3]
"""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import UTC, datetime
from typing import Callable, Optional

from .limits import IDLE_POLL

MARGIN_SHARE, MIN_MARGIN, MAX_MARGIN = 0.05, 0.02, 0.1
"""By how much the shared period exceeds the epoch interval: a share of it, within bounds (seconds).

It absorbs the wake-up delay of a boundary's activation, and it is how fast
a partition whose clock started late catches up with the boundaries.
"""
GUARD = 0.01
"""Seconds before its epoch may move that a partition stops asking to be woken at once.

Bytewax reads the epoch's start at the top of an activation, the partition
learns of it a little later (``snapshot``): this covers the difference.
"""
HOLDS_KEPT = 8
"""How many of its last holds a partition remembers."""
STARTED_WITHIN = 0.5
"""An epoch that moved this soon after the partition's ``next_batch`` started at that call (the same activation)."""
LATE = 0.005
"""A wake-up this much after the time asked for: the partition was held longer."""


class EpochSchedule:
    """The wake-ups of one input partition (see the module docstring).

    Args:
        epoch_interval: Bytewax's epoch interval in seconds (``None``: poll
            and read as Bytewax does by default, never wait).
        poll: Seconds between polls of an idle partition.
        clock: The wall clock, which Bytewax's epoch timer reads too.

    Bytewax calls a partition from its worker's thread only: no lock.
    """

    def __init__(self, epoch_interval: Optional[float], poll: float = IDLE_POLL.total_seconds(),
                 clock: Callable[[], float] = time.time) -> None:
        self.interval = math.inf if epoch_interval is None else epoch_interval
        margin = MIN_MARGIN if epoch_interval is None else self.interval * MARGIN_SHARE
        self.margin = min(MAX_MARGIN, max(MIN_MARGIN, margin))
        self.period = round(self.interval + self.margin, 6)
        self._holds: deque[float] = deque(maxlen=HOLDS_KEPT)
        self._poll = poll
        self._clock = clock
        self._started = clock()  # a partition is built in the activation that starts its first epoch
        self._activated = self._started
        self._asked = self._started  # the wake-up asked for in the activation that moved the epoch
        self._moving = False  # predicted a move in this epoch
        self._moved = False  # moved since the last next_awake
        self._quiet = True  # took nothing this epoch
        self._ahead = False  # an epoch ahead of the others: wait for the next boundary, however far

    @property
    def holds(self) -> list[float]:
        """Seconds it was held after its last few moves (an upper bound where it slept through)."""
        return [round(hold, 6) for hold in self._holds]

    def activated(self) -> None:
        """Bytewax activated the partition (call at the top of ``next_batch``)."""
        self._activated = self._clock()

    def took(self, count: int) -> None:
        """The partition's ``next_batch`` gives ``count`` items."""
        if count:
            self._quiet = False

    def epoch_moved(self) -> None:
        """Bytewax moved the partition's epoch (it calls ``snapshot`` then).

        The epoch started when the activation did: before this activation's
        ``next_batch``, which can take a while (a child process's reply).
        """
        now = self._clock()
        self._started = self._activated if now - self._activated < STARTED_WITHIN else now
        self._moving, self._moved, self._quiet = False, True, True

    def next_awake(self, more: bool) -> Optional[datetime]:
        """Bytewax's ``next_awake`` for a partition that has items waiting (``more``) or not."""
        when = self.wake_time(more)
        return None if when is None else datetime.fromtimestamp(when, UTC)

    def wake_time(self, more: bool) -> Optional[float]:
        """The wall-clock time to wake the partition (``None``: at once); ``more``: whether it has items waiting."""
        now = self._clock()
        may_move = self._started + self.interval
        if self._moved:  # the first call since the move: the hold has ended
            self._moved = False
            late = now > self._asked + LATE
            # Woken on time, the hold may have been shorter than the sleep: remember less.
            self._holds.append(now - self._started if late else (self._asked - self._started) / 2)
            if late and now >= may_move and not self._ahead:  # (once: a slow epoch holds every partition alike)
                # Let go already due, it moves again in this activation: an epoch ahead of the others, it
                # would be held an epoch each time. It sleeps past the next release and moves then, too
                # late to be due at the release after, and then waits for a boundary however far.
                self._ahead = self._moving = True
                self._asked = now + self.period + 2 * self.margin
                return self._asked
        if now + (GUARD if more else self._poll) < may_move - GUARD:  # early in the epoch
            return self._soon(now, more)
        if now < may_move:  # it may move soon: at the boundary if near or if it read nothing, else as soon as it may
            boundary = math.ceil(may_move / self.period) * self.period
            if boundary - now <= self.margin + 2 * GUARD or self._ahead or (self._quiet and not more):
                self._ahead = False
                return boundary
            return self._soon(now, more)
        if self._moving:  # predicted and not moved (a late wake-up, another interval): as usual
            return self._soon(now, more)
        self._moving = True  # it moves in this activation, right after this call: sleep through the hold
        busy = more or not self._quiet
        hold = min(self._holds, default=0.0) if busy else max(self._holds, default=0.0)
        hold = min(hold, self.interval - 2 * self.margin)  # awake before it may move again
        self._asked = now + hold
        return self._soon(now, more) if hold < self._poll else self._asked

    def _soon(self, now: float, more: bool) -> Optional[float]:
        """At once with items waiting, else the next poll."""
        return None if more else now + self._poll
