"""When an input partition asks Bytewax to wake it: epochs that move together, workers that sleep while held.

Bytewax 0.21 moves each input partition to its next epoch on a clock of its
own, at the first activation at least ``epoch_interval`` after its last move
(on the wall clock). A partition that has moved is then held until the whole
dataflow, every worker, is done with the previous epoch; while it is held its
wake-up (``next_awake``) is not asked again, and once that time has passed
its worker is re-activated at once, again and again: the worker spins until
the hold ends (Bytewax issue #161). With several processes the holds last
long (the recovery snapshots of every worker, progress over TCP), and spinning
workers take the cores the others need to end the hold.

:class:`EpochSchedule` does two things about it:

* **Shared boundaries.** Every input's epoch moves at the multiples of
  ``period`` (``epoch_interval`` plus :data:`MARGIN`) on the wall clock,
  which all processes of a host read alike (and NTP keeps within
  milliseconds across hosts): a partition that read nothing in this epoch
  polls until its epoch may move, then sleeps until the boundary. Clocks
  that started apart, or drifted while busy, are aligned at the next quiet
  epoch.
* **Sleep through the hold.** In the activation in which its epoch moves,
  an idle partition asks to be woken after the hold it expects (the last one
  it saw, halved each time it proves too long), not at once.

A partition that read in this epoch, or has messages waiting, polls and
reads as before (Bytewax's default): waiting for a boundary or a hold then
costs more throughput than the spin it saves.

    >>> now = [100.97]
    >>> schedule = EpochSchedule(epoch_interval=1.0, poll=0.01, clock=lambda: now[0])
    >>> schedule.period
    1.02
    >>> schedule.wake_time(more=False)  # early in the epoch: the next poll
    100.98
    >>> now[0] = 101.96  # the epoch may move from 101.97 on: wait for the boundary near, 100 × 1.02
    >>> round(schedule.wake_time(more=False), 3)
    102.0
    >>> schedule.wake_time(more=True) is None  # with messages waiting: at once
    True
    >>> now[0] = 102.001  # the boundary: the epoch moves in this activation
    >>> round(schedule.wake_time(more=False), 3)  # no hold seen yet: the next poll
    102.011
    >>> schedule.activated(); schedule.epoch_moved()
    >>> now[0] = 102.301  # the hold ended 0.3 s later
    >>> round(schedule.wake_time(more=False), 3), round(schedule.hold, 3)  # next time, sleep that long
    (102.311, 0.3)
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Callable, Optional

from .limits import IDLE_POLL

MARGIN = 0.02
"""Seconds by which the shared period exceeds the epoch interval.

It absorbs the wake-up delay of a boundary's activation: an epoch that
started up to this late still moves at the next boundary.
"""
GUARD = 0.01
"""Seconds before its epoch may move that a partition stops asking to be woken at once.

Bytewax reads the epoch's start at the top of an activation, the partition
learns of it a little later (``snapshot``): this covers the difference.
"""
MAX_HOLD = 0.5
"""The longest sleep through a hold, as a share of the epoch interval (a longer hold is spun through)."""
NEAR = 0.05
"""The ``max_wait`` for a boundary of an input that is never busy, and so cannot tell (the commit ticks).

Its epoch moves unaligned rather than wait long while other inputs are
busy: an input that waits holds every other one back. Each of its epochs
lasts ``epoch_interval`` plus a poll or so, a little less than ``period``,
so its moves creep up to a boundary and are aligned within about
``period / MARGIN`` epochs.
"""
STARTED_WITHIN = 0.5
"""An epoch that moved this soon after the partition's ``next_batch`` started at that call (the same activation)."""
LATE = 0.005
"""A wake-up this much (or a quarter of the hold) after the time asked for: the partition was held longer."""


class EpochSchedule:
    """The wake-ups of one input partition (see the module docstring).

    Bytewax calls a partition from its worker's thread only: no lock.
    """

    def __init__(self, epoch_interval: Optional[float], poll: float = IDLE_POLL.total_seconds(),
                 clock: Callable[[], float] = time.time, max_wait: float = math.inf) -> None:
        self.interval = math.inf if epoch_interval is None else epoch_interval  # None: poll, never align
        self.period = round(self.interval + MARGIN, 6)
        self.hold = 0.0
        """Seconds the partition expects to be held after its epoch moves."""
        self._poll = poll
        self._max_wait = max_wait  # the longest wait for a boundary
        self._clock = clock
        self._started = clock()  # a partition is built in the activation that starts its first epoch
        self._activated = self._started
        self._asked = self._started  # the wake-up asked for in the activation that moved the epoch
        self._moving = False  # predicted a move in this epoch
        self._moved = False  # moved since the last next_awake
        self._quiet = True  # took nothing this epoch

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
        if self._moved:  # the first call since the move: the hold has ended
            held = now - self._started
            longer = now > self._asked + max(LATE, self.hold / 4)  # a wake-up comes late by a little anyway
            self.hold = min(held, self.interval * MAX_HOLD) if longer else self.hold / 2
            self._moved = False
        if more:  # busy: read at once (a sleep here measurably costs throughput, bench/end_to_end.py --scale)
            return None
        wanted = now + self._poll
        if not self._quiet:  # it read in this epoch: more may come any moment
            return wanted
        may_move = self._started + self.interval
        if wanted < may_move - GUARD:
            return wanted
        if now < may_move:  # wait for the boundary (unless it is further than max_wait: then move unaligned)
            boundary = math.ceil(may_move / self.period) * self.period
            return boundary if boundary - now <= self._max_wait else wanted
        if self._moving:  # predicted and not moved (a late wake-up, another interval): as usual
            return wanted
        self._moving = True  # it moves in this activation, right after this call
        self._asked = max(wanted, now + self.hold)
        return self._asked
