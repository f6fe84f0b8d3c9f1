"""A shard's wake-ups: drivers by stream time (a heap of times), so a wake-up costs what is due, not every driver held."""

import math
import pickle
import random

import pytest

from driver_stats.core.shards import DriverShard
from driver_stats.core.windows import COUNTED, DUPLICATE, LATE, DriverWindows
from tests.support import T0, at, tipped

BASE = T0.timestamp()


def add(shard, event, stream_time=BASE):
    return shard.add(event, event.event_time.timestamp(), stream_time)


@pytest.fixture
def calls(monkeypatch):
    """How many times each DriverWindows method below ran: the work a shard does per driver."""
    counted = {"close_due": 0, "discardable": 0, "next_wakeup": 0}

    for name in counted:
        original = getattr(DriverWindows, name)

        def counting(self, *args, _name=name, _original=original):
            counted[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(DriverWindows, name, counting)
    return counted


def test_a_forgotten_driver_is_woken_once_its_retention_passed_and_then_leaves_no_wakeup():
    shard = DriverShard(10, lateness_seconds=5, retention_seconds=100)
    assert add(shard, tipped("d1", "j1", 3, 1)) is COUNTED
    assert shard.next_wakeup() == BASE + 10 + 5  # [0, 10) closes
    assert shard.close_due(BASE + 14.9) == []
    [record] = shard.close_due(BASE + 15)
    assert record.total_tips == 1
    assert shard.next_wakeup() == BASE + 10 + 100 + 5  # forgotten: its last record + retention, on its clock
    assert shard.close_due(BASE + 114.9) == [] and len(shard) == 1
    assert shard.close_due(BASE + 115) == [] and len(shard) == 0
    assert shard.floor == BASE + 10
    assert shard.next_wakeup() is None and shard.times == [] and shard.slots == {} and shard.due == {}


def test_a_driver_forgotten_and_seen_again_is_woken_for_its_new_interval_not_by_its_old_entries():
    shard = DriverShard(10, lateness_seconds=0, retention_seconds=20)
    add(shard, tipped("d1", "j1", 3, 1))
    add(shard, tipped("d2", "j1", 3, 1))
    shard.close_due(BASE + 10)
    add(shard, tipped("d2", "j2", 12, 1), stream_time=BASE + 12)  # d2 stays
    shard.close_due(BASE + 30)  # d1 forgotten (10 + 20)
    assert set(shard.drivers) == {"d2"}
    assert add(shard, tipped("d1", "j9", 35, 1), stream_time=BASE + 30) is COUNTED
    assert shard.next_wakeup() == BASE + 40  # d2 is forgotten at 20 + 20, d1's [30, 40) closes at 40
    assert [(r.driver_id, r.total_tips) for r in shard.close_due(BASE + 40)] == [("d1", 1)]
    assert set(shard.drivers) == {"d1"}
    assert shard.next_wakeup() == BASE + 60


def test_a_driver_rewoken_earlier_by_a_new_interval_is_woken_then_and_its_old_entry_is_skipped():
    shard = DriverShard(10, lateness_seconds=30, retention_seconds=60)
    add(shard, tipped("d1", "j1", 25, 1), stream_time=BASE + 25)
    assert shard.next_wakeup() == BASE + 20 + 10 + 30
    add(shard, tipped("d1", "j2", 5, 1), stream_time=BASE + 25)  # an earlier interval, within the lateness
    assert shard.next_wakeup() == BASE + 0 + 10 + 30
    [first] = shard.close_due(BASE + 40)
    assert first.total_tips == 1 and first.interval_start == T0
    assert shard.next_wakeup() == BASE + 60  # [20, 30) next
    assert len(shard.close_due(BASE + 60)) == 1
    # The keys of [0, 10) go once its end is the retention (60) behind the clock (stream - 30), ...
    assert shard.next_wakeup() == BASE + 10 + 60 + 30
    assert shard.close_due(BASE + 100) == [] and list(shard.drivers["d1"].recent) == [at(20).timestamp()]
    # ... and the driver once its last record's end (30) is.
    assert shard.next_wakeup() == BASE + 30 + 60 + 30
    assert shard.close_due(BASE + 120) == [] and len(shard) == 0


def test_a_driver_with_nothing_open_lets_an_older_intervals_keys_go_at_their_own_time():
    shard = DriverShard(10, lateness_seconds=0, retention_seconds=20)
    add(shard, tipped("d1", "j1", 1, 1))
    add(shard, tipped("d1", "j2", 11, 1))
    assert len(shard.close_due(BASE + 20)) == 2
    assert shard.next_wakeup() == BASE + 30  # [0, 10)'s keys go at 10 + 20; the driver at 20 + 20
    assert add(shard, tipped("d1", "j1", 35, 1), stream_time=BASE + 29) is DUPLICATE
    assert shard.close_due(BASE + 30) == [] and list(shard.drivers["d1"].recent) == [at(10).timestamp()]
    assert shard.next_wakeup() == BASE + 40
    assert add(shard, tipped("d1", "j2", 35, 1), stream_time=BASE + 30) is DUPLICATE  # [10, 20)'s are kept
    assert add(shard, tipped("d1", "j1", 35, 1), stream_time=BASE + 30) is COUNTED  # the retention is over


def test_a_later_interval_beside_an_open_one_leaves_the_wakeup_as_it_is():
    shard = DriverShard(10, lateness_seconds=30, retention_seconds=60)
    add(shard, tipped("d1", "j1", 5, 1), stream_time=BASE + 5)
    add(shard, tipped("d1", "j2", 15, 1), stream_time=BASE + 15)  # [10, 20) while [0, 10) waits for the lateness
    assert shard.entries == 1 and shard.next_wakeup() == BASE + 40


def test_a_driver_with_an_open_interval_is_woken_when_the_retention_drops_its_old_dedupe_keys():
    shard = DriverShard(10, lateness_seconds=0, retention_seconds=100)
    add(shard, tipped("d1", "old", 3, 1))
    shard.close_due(BASE + 10)
    add(shard, tipped("d1", "new", 1000, 1), stream_time=BASE + 105)  # [1000, 1010) stays open a long time
    assert shard.next_wakeup() == BASE + 110  # [0, 10)'s keys go at 10 + 100
    assert add(shard, tipped("d1", "old", 3, 1), stream_time=BASE + 105) is DUPLICATE
    assert shard.close_due(BASE + 110) == []
    assert shard.drivers["d1"].recent == {}  # dropped without a single event of the driver
    assert shard.next_wakeup() == BASE + 1010
    assert add(shard, tipped("d1", "old", 3, 1), stream_time=BASE + 110).reason == LATE


def test_a_wakeup_and_notify_at_cost_what_is_due_however_many_drivers_the_shard_holds(calls):
    per_size = {}
    for held in (10, 100, 10_000):
        shard = DriverShard(1, lateness_seconds=0, retention_seconds=10**6)
        # ``held`` drivers that stay (their records are within the retention), one a second.
        for i in range(held):
            add(shard, tipped(f"held-{i}", "j", i, 1), stream_time=BASE + i)
        start = held + 10
        assert len(shard.close_due(BASE + start)) == held
        for name in calls:
            calls[name] = 0
        # Then 100 new drivers, each an event, its close, and the shard asked for its next wake-up each time.
        for k in range(100):
            now = BASE + start + k
            driver = f"new-{k}"
            add(shard, tipped(driver, "j", start + k, 1), stream_time=now)
            assert shard.close_due(now, [driver]) == []
            assert shard.next_wakeup() == now + 1
            assert [r.driver_id for r in shard.close_due(now + 1)] == [driver]
            assert shard.next_wakeup() is not None
        assert len(shard) == held + 100
        assert shard.entries <= 2 * len(shard.due) + 64
        per_size[held] = dict(calls)
    assert per_size[10] == per_size[100] == per_size[10_000]
    assert per_size[10_000]["close_due"] <= 2 * 100  # the touched driver, then the woken one


def test_forgetting_many_drivers_costs_one_look_each_and_leaves_nothing_scheduled(calls):
    shard = DriverShard(1, lateness_seconds=0, retention_seconds=10)
    for i in range(5000):
        add(shard, tipped(f"d{i}", "j", i * 0.001, 1), stream_time=BASE + i * 0.001)
    assert len(shard.close_due(BASE + 5)) == 5000  # all closed at once, ...
    assert len(shard) == 5000
    assert shard.close_due(BASE + 20) == [] and len(shard) == 0  # ... and all forgotten at once
    # One close each, and one look whether it may go after its close and once its retention passed.
    assert calls["close_due"] == 5000 and calls["discardable"] == 2 * 5000
    assert shard.times == [] and shard.slots == {} and shard.due == {} and shard.next_wakeup() is None


def test_stale_entries_never_outnumber_the_live_ones_by_much():
    shard = DriverShard(10, lateness_seconds=10**6, retention_seconds=10**6)
    add(shard, tipped("d1", "j0", 10**5, 1))
    for i in range(1000):  # each an earlier interval: the wake-up moves every time
        add(shard, tipped("d1", f"j{i + 1}", 10**5 - 10 * (i + 1), 1))
    assert len(shard.due) == 1 and shard.entries <= 2 + 64 and len(shard.times) <= 2 + 64
    assert shard.next_wakeup() == BASE + 10**5 - 10 * 1000 + 10 + 10**6


def test_a_restored_shard_wakes_its_drivers_as_before():
    shard = DriverShard(10, lateness_seconds=0, retention_seconds=100)
    add(shard, tipped("d1", "j1", 3, 1))
    add(shard, tipped("d2", "j1", 25, 1), stream_time=BASE + 25)
    shard.close_due(BASE + 25)  # d1 closed, kept for the retention
    resumed = DriverShard(10, 0, 100).restore(pickle.loads(pickle.dumps(shard.snapshot())))
    assert resumed.due == shard.due
    assert resumed.next_wakeup() == shard.next_wakeup() == BASE + 30
    assert [r.driver_id for r in resumed.close_due(BASE + 30)] == ["d2"]
    assert resumed.close_due(BASE + 110) == [] and list(resumed.drivers) == ["d2"]


def test_after_the_end_of_input_only_forgetting_is_left_to_wake_for():
    shard = DriverShard(10, lateness_seconds=0, retention_seconds=100)
    add(shard, tipped("d1", "j1", 3, 1))
    assert len(shard.close_all()) == 1
    assert shard.next_wakeup() == BASE + 110


def test_unbounded_lateness_schedules_nothing():
    shard = DriverShard(10, lateness_seconds=math.inf, retention_seconds=math.inf)
    add(shard, tipped("d1", "j1", 3, 1))
    assert shard.next_wakeup() is None and shard.times == [] and shard.close_due(BASE + 10**9) == []


class FullScan(DriverShard):
    """The shard as it was before its schedule: every wake-up looks at every driver."""

    __slots__ = ()

    def close_due(self, stream_time, driver_ids=None):
        return super().close_due(stream_time, list(self.drivers) if driver_ids is None else driver_ids)

    def next_wakeup(self):
        return min((at for w in self.drivers.values() if (at := w.next_wakeup()) is not None), default=None)


@pytest.mark.parametrize("seed", range(8))
def test_the_schedule_closes_and_forgets_exactly_what_a_pass_over_every_driver_does(seed):
    # As the window step drives a shard: each batch's drivers looked at with the
    # batch (their own clocks), the rest when the stream time reaches their wake-up.
    rng = random.Random(seed)
    shards = DriverShard(10, 3, 20), FullScan(10, 3, 20)
    now, journeys = 0.0, 0
    for _ in range(600):
        now += rng.choice((0, 0.5, 1, 3, 7))
        stream = BASE + now
        if rng.random() < 0.3:
            # The scheduled wake-up is never later (it may be earlier: a driver's own events
            # can drop its old keys before its wake-up, which then finds nothing to do).
            wake, full = shards[0].next_wakeup(), shards[1].next_wakeup()
            assert (wake is None) == (full is None) and (wake is None or wake <= full)
            if wake is not None and wake <= stream:
                outs = [sorted((r.driver_id, r.interval_start) for r in s.close_due(stream)) for s in shards]
                assert outs[0] == outs[1]
            continue
        batch = []
        for _ in range(rng.randrange(1, 4)):
            journeys += 1
            journey = f"j{rng.randrange(journeys)}" if rng.random() < 0.1 else f"j{journeys}"  # some repeats
            batch.append(tipped(f"d{rng.randrange(12)}", journey, now + rng.uniform(-15, 2), 1))
        verdicts = [[add(s, event, stream) for event in batch] for s in shards]
        assert verdicts[0] == verdicts[1]
        touched = {event.driver_id for event in batch}
        outs = [sorted((r.driver_id, r.interval_start) for r in s.close_due(stream, touched)) for s in shards]
        assert outs[0] == outs[1]
        assert set(shards[0].drivers) == set(shards[1].drivers) and shards[0].floor == shards[1].floor
    assert sorted(map(repr, shards[0].close_all())) == sorted(map(repr, shards[1].close_all()))
