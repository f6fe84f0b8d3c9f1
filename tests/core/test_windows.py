"""One driver's intervals, clock, dedupe and lateness guard, without Bytewax."""

import pickle

import pytest

from driver_stats.contract import FinishReason
from driver_stats.core.shards import SHARDS, DriverShard, shard_of
from driver_stats.core.windows import COUNTED, DUPLICATE, LATE, DriverWindows
from tests.support import T0, at, finished, rated, tipped

BASE = T0.timestamp()


def add(windows, event, stream_time=BASE):
    return windows.add(event, event.event_time.timestamp(), stream_time)


def test_interval_is_left_closed_and_aligned_to_the_epoch():
    w = DriverWindows(window_seconds=10, lateness_seconds=0)
    assert add(w, tipped("d1", "j1", 9.999, 1)) is COUNTED
    assert add(w, tipped("d1", "j2", 10, 2)) is COUNTED
    first, second = w.close_all()
    assert (first.interval_start, first.interval_end, first.total_tips) == (at(0), at(10), 1)
    assert (second.interval_start, second.interval_end, second.total_tips) == (at(10), at(20), 2)


def test_repeat_of_type_and_journey_counts_once_but_other_types_of_the_journey_count():
    w = DriverWindows(10, 0)
    assert add(w, rated("d1", "j1", 1, 4)) is COUNTED
    assert add(w, rated("d1", "j1", 1, 4)) is DUPLICATE
    assert add(w, rated("d1", "j1", 2, 1)) is DUPLICATE  # same identity, other content
    assert add(w, tipped("d1", "j1", 1, 5)) is COUNTED
    [stats] = w.close_all()
    assert (stats.avg_rating, stats.total_tips) == (4.0, 5)


def test_an_interval_closes_when_the_event_time_passes_its_end_plus_lateness():
    w = DriverWindows(10, lateness_seconds=5)
    add(w, tipped("d1", "j1", 3, 1))
    add(w, tipped("d1", "j2", 14.9, 1))
    assert w.close_due(BASE) == []  # watermark 9.9 < 10
    add(w, tipped("d1", "j3", 15, 1))
    assert [s.interval_start for s in w.close_due(BASE)] == [at(0)]


def test_a_late_event_never_reopens_a_closed_interval_even_when_nothing_is_open():
    w = DriverWindows(10, lateness_seconds=0)
    add(w, tipped("d1", "j1", 3, 1))
    assert len(w.close_due(BASE + 3600)) == 1  # the stream closed it, nothing open now
    assert w.open == {}
    assert add(w, tipped("d1", "j2", 4, 1), stream_time=BASE + 3600).reason == LATE
    assert w.close_all() == []


def test_a_closed_interval_stays_closed_when_the_stream_time_goes_back_across_a_restart():
    # A restarted flow's stream time starts from the partitions' published
    # watermarks, which can be behind what its window step had processed.
    w = DriverWindows(10, lateness_seconds=5)
    add(w, tipped("d1", "j1", 3, 1))
    assert len(w.close_due(BASE + 100)) == 1
    resumed = DriverWindows.resume(pickle.loads(pickle.dumps(w.snapshot())), 10, 5)
    for windows in (w, resumed):
        assert add(windows, tipped("d1", "j2", 4, 1), stream_time=BASE).reason == LATE
        assert windows.close_all() == []


def test_within_lateness_out_of_order_events_count():
    w = DriverWindows(10, lateness_seconds=30)
    add(w, tipped("d1", "j1", 35, 1))
    assert add(w, tipped("d1", "j2", 2, 2)) is COUNTED  # watermark 5 < 10: [0,10) still open
    assert add(w, tipped("d1", "j3", 41, 1)) is COUNTED
    assert add(w, tipped("d1", "j4", 1, 2)).reason == LATE  # watermark 11 >= 10
    assert [(s.interval_start, s.total_tips) for s in w.close_all()] == [(at(0), 2), (at(30), 1), (at(40), 1)]


def test_the_stream_time_closes_the_intervals_of_a_quiet_driver_and_the_wall_clock_does_not():
    w = DriverWindows(10, lateness_seconds=30)
    add(w, tipped("d1", "j1", 5, 1), stream_time=BASE + 5)
    assert w.next_wakeup() == BASE + 10 + 30  # the stream time at which [0, 10) closes
    assert w.close_due(BASE + 39.9) == []
    assert len(w.close_due(BASE + 40)) == 1


def test_a_driver_clock_moves_only_with_its_events_and_the_stream_time():
    # However long the flow takes to read them (a backlog, an outage), events
    # published in order are never late: nothing here reads the wall clock.
    w = DriverWindows(10, lateness_seconds=2)
    for i in range(100):
        assert add(w, tipped("d1", f"j{i}", i, 1), stream_time=BASE + i - 5) is COUNTED
        w.close_due(BASE + i - 5)
    assert add(w, tipped("d1", "late", 87.9, 1), stream_time=BASE).reason == LATE  # its own newer events


def test_totals_sum_every_finished_journey_and_count_reasons():
    w = DriverWindows(600, 0)
    add(w, finished("d1", "j1", 1, FinishReason.DROP_OFF, distance=100, price=900))
    add(w, finished("d1", "j2", 2, FinishReason.DRIVER_CANCEL, distance=1, price=10))
    add(w, finished("d1", "j3", 3, FinishReason.RIDER_CANCEL))
    add(w, finished("d1", "j4", 4, FinishReason.ADMIN_CANCEL))
    [s] = w.close_all()
    assert (s.total_drop_offs, s.total_driver_cancels, s.total_distance, s.total_price) == (1, 1, 101, 910)
    assert s.avg_rating == 0.0


def test_a_total_that_would_overflow_uint32_rejects_the_event():
    w = DriverWindows(600, 0)
    assert add(w, tipped("d1", "j1", 1, 2**32 - 1)) is COUNTED
    assert add(w, tipped("d1", "j2", 2, 1)).reason == "overflow: total_tips"
    [s] = w.close_all()
    assert s.total_tips == 2**32 - 1


def test_dedupe_keys_are_dropped_the_retention_after_their_interval_closed():
    w = DriverWindows(10, 0, retention_seconds=100)
    for i in range(100):
        add(w, tipped("d1", f"j{i}", 1, 1))
    w.close_due(BASE + 3600)
    assert w.open == {} and w.recent == {} and len(pickle.dumps(w.snapshot())) < 200


def test_snapshot_resumes_totals_dedupe_and_clock():
    w = DriverWindows(10, lateness_seconds=30)
    add(w, tipped("d1", "j1", 5, 3))
    add(w, tipped("d1", "j9", 39, 1))
    state = pickle.loads(pickle.dumps(w.snapshot()))
    resumed = DriverWindows.resume(state, 10, 30)
    assert resumed.close_due(BASE) == []  # the stream has not moved: [0, 10) open
    assert add(resumed, tipped("d1", "j1", 5, 3)) is DUPLICATE
    assert add(resumed, tipped("d1", "j2", 6, 4)) is COUNTED
    assert add(resumed, tipped("d1", "j3", 9, 1), stream_time=BASE + 40).reason == LATE  # its clock came back
    [s, _] = resumed.close_all()
    assert (s.driver_id, s.total_tips) == ("d1", 7)


def test_with_unbounded_lateness_nothing_is_late_and_close_all_emits_everything():
    w = DriverWindows(10, lateness_seconds=float("inf"))
    add(w, tipped("d1", "j1", 500, 1), stream_time=BASE)
    assert add(w, tipped("d1", "j2", 3, 2), stream_time=BASE + 10**6) is COUNTED
    assert w.close_due(BASE + 10**6) == [] and w.next_wakeup() is None
    assert [(s.interval_start, s.total_tips) for s in w.close_all()] == [(at(0), 2), (at(500), 1)]


def test_a_repeat_is_a_duplicate_not_late_while_its_interval_is_held():
    w = DriverWindows(10, lateness_seconds=0)
    add(w, tipped("d1", "j1", 3, 1))
    add(w, tipped("d1", "j2", 25, 1))  # the clock passes [0, 10); it closes at batch end
    assert add(w, tipped("d1", "j1", 3, 1)) is DUPLICATE
    assert add(w, tipped("d1", "j3", 3, 1)).reason == LATE
    w.close_due(BASE)
    assert add(w, tipped("d1", "j1", 3, 1)) is DUPLICATE  # emitted, its keys kept for the retention


def test_a_refused_event_leaves_no_interval_no_dedupe_key_and_no_record():
    w = DriverWindows(10, 0)
    # A value no valid event carries (validation refuses it first): the
    # window logic still refuses it without creating the interval.
    assert add(w, tipped("d1", "j1", 1, 2**32)).reason == "overflow: total_tips"
    assert w.open == {} and w.close_all() == []
    assert add(w, tipped("d1", "j2", 1, 2**32 - 1)) is COUNTED
    assert add(w, tipped("d1", "j3", 2, 1)).reason == "overflow: total_tips"
    assert add(w, tipped("d1", "j3", 2, 0)) is COUNTED  # j3 was not remembered as seen
    [stats] = w.close_all()
    assert (stats.driver_id, stats.total_tips) == ("d1", 2**32 - 1)


def test_a_driver_is_discardable_once_its_records_are_the_retention_behind_its_clock():
    w = DriverWindows(10, lateness_seconds=0, retention_seconds=100)
    add(w, tipped("d1", "j1", 3, 1))
    assert not w.discardable(BASE + 50)  # [0, 10) still open
    [_] = w.close_due(BASE + 50)
    assert w.next_wakeup() == BASE + 110  # the stream reaches 10 + 100
    assert not w.discardable(BASE + 109.9) and w.discardable(BASE + 110)


def test_a_late_event_for_a_forgotten_driver_is_late_never_a_new_record():
    shard = DriverShard(10, lateness_seconds=0, retention_seconds=100)
    assert add(shard, tipped("d1", "j1", 3, 1)) is COUNTED
    [record] = shard.close_due(BASE + 50)
    assert shard.close_due(BASE + 110) == [] and len(shard) == 0  # forgotten
    assert shard.floor == BASE + 10
    assert add(shard, tipped("d1", "late", 4, 1), stream_time=BASE + 110).reason == LATE
    assert len(shard) == 0 and shard.close_all() == []
    # An interval the driver never had is still accepted above the floor
    # (where the stream has not passed it: a partition read behind the others).
    assert add(shard, tipped("d1", "new", 11, 1), stream_time=BASE + 11) is COUNTED


def test_the_floor_survives_a_restart_of_the_shard():
    shard = DriverShard(10, lateness_seconds=0, retention_seconds=100)
    add(shard, tipped("d1", "j1", 3, 1))
    shard.close_due(BASE + 50)
    shard.close_due(BASE + 110)
    add(shard, tipped("d2", "j1", 200, 1), stream_time=BASE + 200)
    resumed = DriverShard(10, lateness_seconds=0, retention_seconds=100).restore(
        pickle.loads(pickle.dumps(shard.snapshot())))
    assert add(resumed, tipped("d1", "late", 4, 1), stream_time=BASE + 9999).reason == LATE
    assert add(resumed, tipped("d2", "j1", 200, 1), stream_time=BASE + 9999) is DUPLICATE
    assert [s.total_tips for s in resumed.close_all()] == [1]


def test_shards_are_stable_and_bounded():
    assert shard_of("driver-1") == shard_of("driver-1") == "2573"  # crc32, not the per-process hash()
    assert len({shard_of(f"driver-{i}") for i in range(100_000)}) == SHARDS


def test_a_repeat_after_its_interval_closed_is_a_duplicate_within_the_retention():
    w = DriverWindows(10, lateness_seconds=0, retention_seconds=100)
    add(w, rated("d1", "j0", 0, 1))
    add(w, finished("d1", "j0", 10))
    assert [s.interval_start for s in w.close_due(BASE)] == [at(0)]
    assert add(w, rated("d1", "j0", 10, 1)) is DUPLICATE  # same identity, later time
    assert add(w, rated("d1", "j0", 0, 1)) is DUPLICATE  # a redelivery, not "late"
    w.close_due(BASE + 200)  # clock 210: [0, 10) closed more than 100 s ago
    assert add(w, rated("d1", "j0", 0, 1), stream_time=BASE + 200).reason == LATE


def test_unbounded_retention_never_forgets():
    w = DriverWindows(10, lateness_seconds=float("inf"))
    add(w, tipped("d1", "j1", 3, 1))
    w.close_all()
    assert w.next_wakeup() is None and not w.discardable(BASE + 10**9)


def test_a_huge_interval_snapshots_as_one_bytes_log_and_resumes_its_dedupe():
    w = DriverWindows(10, lateness_seconds=0)
    for i in range(10_000):
        add(w, finished("d1", f"journey-{i}", 3))
    state = w.snapshot()
    [(_, totals_state)] = state[2]
    assert isinstance(totals_state[-1], bytes)
    resumed = DriverWindows.resume(pickle.loads(pickle.dumps(state)), 10, 0)
    assert add(resumed, finished("d1", "journey-9999", 3)) is DUPLICATE
    assert add(resumed, finished("d1", "journey-10000", 3)) is COUNTED
    [stats] = resumed.close_all()
    assert stats.total_drop_offs == 10_001


def test_a_snapshot_written_before_the_dedupe_log_still_resumes():
    old_totals = (1, 0, 0, 0, 0, 0, 0, frozenset({(2, "j1")}))
    resumed = DriverWindows.resume(("d1", BASE - 5, [(int(BASE), old_totals)]), 10, 0)
    assert add(resumed, finished("d1", "j1", 3)) is DUPLICATE
    assert resumed.closed_until == float("-inf")


def test_an_event_near_year_one_gets_its_interval_exactly():
    from datetime import datetime, timezone

    from driver_stats.contract import DriverTipped

    just_before = datetime(1, 1, 1, 0, 9, 59, 999999, tzinfo=timezone.utc)
    w = DriverWindows(600, lateness_seconds=float("inf"))
    tip = DriverTipped(driver_id="d1", journey_id="j1", tipped_at=just_before, amount=1)
    w.add(tip, just_before.timestamp(), stream_time=BASE)
    [stats] = w.close_all()
    assert stats.interval_start == datetime(1, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("year", [1697, 1969, 1970, 2026, 2241, 2243, 9998])
def test_the_last_microsecond_of_an_interval_stays_in_it_whatever_the_year(year):
    # Within 2^33 s of 1970 (1697..2242) the interval comes from the float
    # event time, beyond from the datetime: the same interval either way.
    from datetime import datetime, timezone

    from driver_stats.contract import DriverTipped

    last = datetime(year, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
    w = DriverWindows(600, lateness_seconds=float("inf"))
    w.add(DriverTipped(driver_id="d1", journey_id="j1", tipped_at=last, amount=1), last.timestamp(), BASE)
    [stats] = w.close_all()
    assert stats.interval_start == datetime(year, 12, 31, 23, 50, tzinfo=timezone.utc)
