"""The input partitions' wake-ups (connectors/mqtt/epochs.py), against a model of Bytewax's input loop.

``run`` plays what Bytewax 0.21 does with one input partition: it wakes the
partition when asked (a little late, at random), calls ``next_batch`` and
``next_awake``, and moves the epoch at the first activation at least
``epoch_interval`` after the last move (``snapshot``).
"""

from __future__ import annotations

import random

import pytest

from connectors.mqtt.epochs import NEAR, EpochSchedule

INTERVAL = 1.0


def run(start: float, seconds: float, *, schedule_interval: float | None = INTERVAL,
        bytewax_interval: float = INTERVAL, busy: bool = False, seed: int = 1,
        max_wait: float = float("inf")) -> tuple[list[float], int]:
    """The times the epoch moved, and the activations, of a partition built at ``start``."""
    rng = random.Random(seed)
    now = [start]
    schedule = EpochSchedule(schedule_interval, poll=0.01, clock=lambda: now[0], max_wait=max_wait)
    epoch_started, moves, activations = start, [], 0
    while now[0] < start + seconds:
        activations += 1
        activation = now[0]
        schedule.activated()
        now[0] += 0.0005  # next_batch
        wake = schedule.wake_time(more=busy)
        if activation - epoch_started >= bytewax_interval:
            schedule.epoch_moved()
            epoch_started = activation
            moves.append(activation)
        asked = now[0] if wake is None else max(wake, now[0])
        now[0] = asked + rng.uniform(0.0, 0.003)  # woken a little late
    return moves, activations


def test_partitions_started_apart_move_their_epochs_together():
    # Two processes' partitions whose clocks started 0.37 s apart.
    first, _ = run(1000.0, 20)
    second, _ = run(1000.37, 20, seed=2)
    late = [min(abs(a - b) for b in first) for a in second[3:] if a < first[-1]]
    assert len(late) > 10 and max(late) < 0.01, late


def test_an_input_that_waits_for_near_boundaries_only_is_aligned_later():
    # Within about period / MARGIN epochs both move at the boundaries.
    first, _ = run(1000.0, 150, max_wait=NEAR)
    second, _ = run(1000.37, 150, seed=2)
    late = [min(abs(a - b) for b in first) for a in second[-30:] if a < first[-1]]
    assert len(late) > 20 and max(late) < 0.01, late


def test_without_an_epoch_interval_they_stay_apart():
    # What the schedule fixes: plain polling keeps the start's offset (and drifts).
    first, _ = run(1000.0, 150, schedule_interval=None)
    second, _ = run(1000.37, 150, schedule_interval=None, seed=2)
    late = [min(abs(a - b) for b in first) for a in second[-30:] if a < first[-1]]
    assert len(late) > 20 and min(late) > 0.05, late


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_epochs_keep_their_interval(busy):
    moves, _ = run(1000.0, 30, busy=busy)
    lengths = [b - a for a, b in zip(moves, moves[1:])]
    assert len(moves) >= 27
    assert all(INTERVAL <= length < 2 * INTERVAL + 0.1 for length in lengths), lengths


def test_an_input_that_cannot_tell_it_is_busy_waits_for_a_near_boundary_only():
    now = [1000.5]
    schedule = EpochSchedule(INTERVAL, poll=0.01, clock=lambda: now[0], max_wait=NEAR)
    now[0] = 1001.495  # may move from 1001.5; the boundary (982 × 1.02 = 1001.64) is 0.145 s away
    assert schedule.wake_time(more=False) == pytest.approx(1001.505)  # far: it polls on
    now[0] = 1001.63
    schedule.epoch_moved()
    now[0] = 1002.62  # may move from 1002.63; the boundary 1002.66 is near
    assert schedule.wake_time(more=False) == pytest.approx(1002.66)
    assert schedule.wake_time(more=True) is None  # with messages waiting: at once


def test_it_sleeps_through_the_hold_it_saw_and_halves_it_when_woken_on_time():
    now = [1000.0]
    schedule = EpochSchedule(INTERVAL, poll=0.01, clock=lambda: now[0])

    def move_at(t: float) -> float | None:
        now[0] = t
        schedule.activated()
        wake = schedule.wake_time(more=False)
        schedule.epoch_moved()
        return wake

    # Boundaries: 982 × 1.02 = 1001.64, then 1002.66.
    assert move_at(1001.641) == pytest.approx(1001.651)  # no hold seen yet: the next poll
    now[0] = 1001.941  # held 0.3 s
    schedule.wake_time(more=False)
    assert schedule.hold == pytest.approx(0.3)
    assert move_at(1002.661) == pytest.approx(1002.661 + 0.3)  # sleeps through the hold it expects
    now[0] = 1002.661 + 0.301  # woken on time: the hold may be shorter
    schedule.wake_time(more=False)
    assert schedule.hold == pytest.approx(0.15)


def test_a_wrong_epoch_interval_never_spins():
    # Bytewax moves every 10 s, the schedule was told 1 s: it polls as usual.
    moves, activations = run(1000.0, 30, bytewax_interval=10.0)
    assert len(moves) == 2
    assert activations < 30 / 0.01 + 100


def test_a_partition_that_read_in_this_epoch_polls_on():
    now = [1000.6]
    schedule = EpochSchedule(INTERVAL, poll=0.01, clock=lambda: now[0])
    schedule.took(3)
    now[0] = 1001.595  # its epoch may move soon; the boundary 1001.64 is near
    assert schedule.wake_time(more=False) == pytest.approx(1001.605)
    now[0] = 1001.63
    schedule.epoch_moved()  # a new epoch in which it reads nothing
    now[0] = 1002.62
    assert schedule.wake_time(more=False) == pytest.approx(1002.66)  # 983 × 1.02
