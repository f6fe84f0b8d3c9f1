"""The input partitions' wake-ups (connectors/mqtt/epochs.py), against a model of Bytewax's input loop.

:func:`run` plays what Bytewax 0.21 does with a dataflow's input
partitions (src/inputs.rs): it wakes each partition when asked (a little
late, at random), and if the dataflow is done with the epoch before the
partition's, calls ``next_batch`` and ``next_awake``, then moves the
partition's epoch if at least ``epoch_interval`` passed since its last move.
A partition whose previous epoch is not done yet is held: it is not called,
and from the wake-up it asked for until the dataflow is done, its worker
spins. An epoch is done once every partition has moved past it, plus a
commit's time.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import pytest

from connectors.mqtt.epochs import EpochSchedule

INTERVAL = 1.0
BATCH = 0.004
"""Seconds a busy partition's ``next_batch`` takes."""


@dataclass
class Partition:
    schedule: EpochSchedule
    busy: bool
    started: float
    wake: float
    epoch: int = 0
    moves: list[float] = field(default_factory=list)
    reading: float = 0.0
    held: float = 0.0
    spinning: float = 0.0
    activations: int = 0


def run(starts: list[float], seconds: float, *, busy: list[bool] | None = None, seed: int = 1,
        schedule_interval: float | None = INTERVAL, bytewax_interval: float = INTERVAL,
        delay: float = 0.004, commit: tuple[float, float] = (0.01, 0.05)) -> list[Partition]:
    """Partitions built at ``starts`` (busy ones always have items waiting), run for ``seconds``."""
    rng = random.Random(seed)
    now = [0.0]
    parts = []
    for start, is_busy in zip(starts, busy or [False] * len(starts), strict=True):
        now[0] = start
        parts.append(Partition(EpochSchedule(schedule_interval, poll=0.01, clock=lambda: now[0]),
                               is_busy, start, start))
    left: dict[int, int] = {}  # epoch -> partitions that moved past it
    done = {-1: 0.0}  # epoch -> when the dataflow was done with it
    held: dict[int, list[int]] = {}  # epoch awaited -> partitions held
    wakes = [(part.wake, index) for index, part in enumerate(parts)]
    heapq.heapify(wakes)
    while wakes:
        woken, index = heapq.heappop(wakes)
        if woken > seconds:
            break
        part, now[0] = parts[index], woken + rng.uniform(0.0, delay)
        part.activations += 1
        awaited = part.epoch - 1
        if awaited in done and done[awaited] > now[0]:  # done, not yet committed
            part.held += done[awaited] - now[0]
            part.spinning += done[awaited] - now[0]
            heapq.heappush(wakes, (done[awaited], index))
            continue
        if awaited not in done:
            held.setdefault(awaited, []).append(index)
            part.held -= now[0]  # until released
            continue
        activation = now[0]
        part.schedule.activated()
        now[0] += BATCH if part.busy else 0.0003
        part.reading += BATCH if part.busy else 0.0
        part.schedule.took(10 if part.busy else 0)
        wake = part.schedule.wake_time(more=part.busy)
        part.wake = now[0] if wake is None else max(wake, now[0])
        if activation - part.started >= bytewax_interval:
            part.schedule.epoch_moved()
            part.started = activation
            part.moves.append(activation)
            left[part.epoch] = left.get(part.epoch, 0) + 1
            part.epoch += 1
            epoch = min(set(range(part.epoch)) - set(done), default=part.epoch)
            while left.get(epoch, 0) == len(parts):  # done, in order
                done[epoch] = max(now[0] + rng.uniform(*commit), done[epoch - 1])
                for waiting in held.pop(epoch, []):
                    other = parts[waiting]
                    other.held += done[epoch]
                    other.spinning += max(0.0, done[epoch] - max(other.wake, done[epoch] - other.held))
                    heapq.heappush(wakes, (max(done[epoch], other.wake), waiting))
                epoch += 1
        heapq.heappush(wakes, (part.wake, index))
    return parts


def starts(count: int, seed: int = 7) -> list[float]:
    """Partitions built at random within an epoch, as processes started apart build theirs."""
    rng = random.Random(seed)
    return [1000.0 + rng.uniform(0.0, INTERVAL) for _ in range(count)]


def off_boundary(move: float, period: float) -> float:
    return min(move % period, period - move % period)


def test_partitions_started_apart_move_their_epochs_on_shared_boundaries():
    parts = run(starts(5), 1040)
    period = parts[0].schedule.period
    for part in parts:
        late = [off_boundary(move, period) for move in part.moves[25:]]
        assert len(late) > 10 and max(late) < 0.01, late


def test_without_an_epoch_interval_they_stay_apart():
    # What the schedule fixes: plain polling keeps the start's offsets (and drifts).
    parts = run(starts(2), 1040, schedule_interval=None)
    apart = [min(abs(a - b) for b in parts[0].moves) for a in parts[1].moves[25:]]
    assert len(apart) > 10 and min(apart) > 0.05, apart


@pytest.mark.parametrize("busy", [[True] * 5, [False] * 5, [True, False] * 2 + [False]],
                         ids=["busy", "idle", "two of four busy"])
def test_partitions_are_seldom_held_and_seldom_spin(busy):
    # Four MQTT input partitions and the commit ticks (never busy), started apart.
    parts = run(starts(5), 1060, busy=busy)
    for part in parts:
        assert part.held / 60 < 0.1, [round(p.held / 60, 2) for p in parts]
        assert part.spinning / 60 < 0.08, [round(p.spinning / 60, 2) for p in parts]
    busy_parts = [part for part in parts if part.busy]
    assert all(part.reading / 60 > 0.5 for part in busy_parts), [round(p.reading / 60, 2) for p in busy_parts]


def test_idle_partitions_sleep_through_long_holds():
    # Holds of 0.05-0.4 s (recovery snapshots of several processes on a busy host).
    parts = run(starts(5), 1060, commit=(0.05, 0.4))
    for part in parts:
        assert part.spinning / 60 < 0.05, [round(p.spinning / 60, 2) for p in parts]


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_epochs_keep_their_interval(busy):
    parts = run(starts(3), 1030, busy=[busy] * 3)
    for part in parts:
        lengths = [b - a for a, b in zip(part.moves, part.moves[1:])]
        assert len(part.moves) >= 25
        assert all(INTERVAL <= length < 2 * INTERVAL + 0.1 for length in lengths), lengths


def test_a_wrong_epoch_interval_never_spins():
    # Bytewax moves every 10 s, the schedule was told 1 s: it polls as usual.
    [part] = run([1000.0], 1030, bytewax_interval=10.0)
    assert len(part.moves) == 2
    assert part.activations < 30 / 0.01 + 100


def test_an_idle_partition_sleeps_the_longest_recent_hold_and_a_busy_one_the_shortest():
    now = [1000.81]  # 953 × 1.05 = 1000.65: built 0.16 s after a boundary
    schedule = EpochSchedule(INTERVAL, poll=0.01, clock=lambda: now[0])

    def move(more: bool) -> float | None:  # Bytewax moves the epoch in this activation
        schedule.activated()
        wake = schedule.wake_time(more)
        schedule.epoch_moved()
        return wake

    for hold in (0.1, 0.3, 0.2):  # each time, woken late: held that long
        now[0] += INTERVAL
        move(more=True)
        now[0] += hold
        schedule.wake_time(more=True)
        now[0] -= hold
    assert schedule.holds == [0.1, 0.3, 0.2]
    now[0] += INTERVAL
    assert move(more=False) == pytest.approx(now[0] + 0.3)  # idle: the longest
    now[0] += 0.3  # woken when asked: the hold may have been shorter
    schedule.wake_time(more=False)
    assert schedule.holds[-1] == pytest.approx(0.15)
    now[0] += INTERVAL - 0.3
    assert move(more=True) == pytest.approx(now[0] + 0.1)  # busy: the shortest


def test_a_partition_let_go_when_due_falls_back_an_epoch():
    # Held past the time it may move again, it moves as soon as it is let go: an epoch ahead of the others.
    now = [1000.65]  # a boundary (953 × 1.05)
    schedule = EpochSchedule(INTERVAL, poll=0.01, clock=lambda: now[0])
    now[0] = 1001.70  # the next boundary
    schedule.activated()
    schedule.wake_time(more=True)
    schedule.epoch_moved()
    now[0] = 1002.76  # let go 1.06 s later, at the others' next move: due, it moves again
    schedule.activated()
    woken = schedule.wake_time(more=True)
    schedule.epoch_moved()
    assert woken == pytest.approx(now[0] + 1.05 + 0.1)  # past the next release and a little
    now[0] = woken
    schedule.activated()
    schedule.wake_time(more=True)  # due again: it moves, late in the others' epoch
    schedule.epoch_moved()
    now[0] += INTERVAL - 0.02  # it may move soon; the boundary (958 × 1.05 = 1005.9) is 1.01 s away
    assert schedule.wake_time(more=True) == pytest.approx(1005.9)  # it waits for it: in step from there on


def test_a_partition_that_read_does_not_wait_for_a_far_boundary_and_one_that_read_nothing_does():
    # Built 0.3 s after a boundary (953 × 1.05 = 1000.65); at 1001.94 it may move from 1001.95, and the next
    # boundary, 1002.75, is far: one that read would hold every other input 0.8 s waiting for it.
    now = [1000.95]
    busy = EpochSchedule(INTERVAL, poll=0.01, clock=lambda: now[0])
    quiet = EpochSchedule(INTERVAL, poll=0.01, clock=lambda: now[0])
    now[0] = 1001.94
    assert busy.wake_time(more=True) is None  # items waiting: it moves as soon as it may
    busy.took(5)
    assert busy.wake_time(more=False) == pytest.approx(1001.95)  # it read this epoch: the next poll
    assert quiet.wake_time(more=False) == pytest.approx(1002.75)  # it read nothing: the boundary
    assert math.isclose(quiet.period, 1.05)
