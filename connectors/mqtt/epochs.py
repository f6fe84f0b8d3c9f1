"""When an input partition asks Bytewax to wake it: so that every input moves epochs together.

Bytewax 0.21 moves each input partition to its next epoch on a clock of its
own: at the first activation at least ``epoch_interval`` after its last move
(its wall clock, ``Utc::now``). A partition that has moved on then waits
until every input of every worker has left the previous epoch, and while it
waits its wake-up (``next_awake``) falls due and is never renewed: its worker
is re-activated at once, again and again. A worker spins for as long as its
inputs lead the slowest one (Bytewax issue #161). Clocks that start apart
(processes that connect at different moments) or drift apart (every move
comes a poll late) turn that into a share of every epoch.

:class:`EpochSchedule` gives every input the same epoch boundaries: the
multiples of ``period`` (``epoch_interval`` plus :data:`MARGIN`) on the wall
clock, which all processes of a host read alike (and NTP keeps within
milliseconds across hosts). A partition reads and polls as it likes until
its epoch may move, then waits for the boundary: its epoch moves there, on
every worker within the wake-up delays, and so nobody waits long for
anyone, whether the flow idles or is busy. A partition whose epoch started
late moves at the next boundary (one longer epoch) and is aligned from then
on.

    >>> schedule = EpochSchedule(epoch_interval=1.0, poll=0.01, clock=lambda: 100.5)
    >>> schedule.period
    1.02
    >>> schedule.next_awake(more=False)  # early in the epoch: the next poll
    100.51
    >>> schedule.epoch_moved()  # Bytewax's snapshot(): its epoch moved at 100.5
    >>> schedule._clock = lambda: 101.49  # the epoch may move from 101.5 on
    >>> round(schedule.next_awake(more=True), 3)  # so: wait for the boundary, 100 × 1.02
    102.0
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

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


class EpochSchedule:
    """The wake-ups of one input partition (see the module docstring).

    Not thread-safe: Bytewax calls a partition from its worker's thread only.
    """

    def __init__(self, epoch_interval: float, poll: float, clock: Callable[[], float] = time.time) -> None:
        self.interval = epoch_interval
        self.period = round(epoch_interval + MARGIN, 6)
        self._poll = poll
        self._clock = clock
        self._started = clock()  # the partition is built in the activation that starts its first epoch

    def epoch_moved(self) -> None:
        """Bytewax moved the partition's epoch (it calls ``snapshot`` then)."""
        self._started = self._clock()

    def next_awake(self, more: bool) -> Optional[float]:
        """The wall-clock time to wake the partition (``None``: at once); ``more``: whether it has items waiting."""
        now = self._clock()
        wanted = now if more else now + self._poll
        may_move = self._started + self.interval
        boundary = math.ceil(may_move / self.period) * self.period
        # Past the boundary and not moved yet (woken late, or the epoch
        # interval is not the one given): as usual, never in a tight loop.
        if wanted < may_move - GUARD or boundary <= now:
            return None if more else wanted
        return boundary
