"""The dataflow of flows/driver_stats.py over Bytewax's TestingSource.

Input is real protobuf bytes on the contract's topics; output is read back
from the bytes the flow would publish.
"""

from __future__ import annotations

import itertools
import threading
from datetime import datetime

from msgspec.structs import replace

from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.mqtt import MQTTMessage
from driver_stats.contract import FinishReason, decode_stats, encode_event, to_json
from driver_stats.core.intake import Accepted
from driver_stats.core.shards import DriverShard
from driver_stats.core.stream_clock import StreamClock
from driver_stats.settings import Settings
from flows.driver_stats import build_flow
from flows.steps import DriverShardLogic
from tests.support import FINISHED, RATED, T0, TIPPED, at, finished, rated, seed_events, tipped, totals, wire

STATS = "output/driver_stats"


def run(events_or_messages, *, window=10, lateness=0, clock=None, batch_size=1000, **settings):
    """Run the flow; return (stats by (driver, start), rejected messages)."""
    messages = [
        item if isinstance(item, MQTTMessage) else MQTTMessage(*wire(item)) for item in events_or_messages
    ]
    out: list[MQTTMessage] = []
    flow = build_flow(
        Settings(window_seconds=window, allowed_lateness_seconds=lateness, **settings),
        TestingSource(messages, batch_size=batch_size),
        TestingSink(out),
        clock=clock or (lambda: T0.timestamp()),
    )
    run_main(flow)
    # Records are keyed by driver (the sink keeps a driver's order), rejections by topic.
    assert all(key == (decode_stats(m.payload).driver_id if m.topic == STATS else m.topic) for key, m in out)
    out = [m for _, m in out]
    stats = [decode_stats(m.payload) for m in out if m.topic == STATS]
    by_key = {(s.driver_id, s.interval_start): s for s in stats}
    assert len(by_key) == len(stats), "two records for one driver and interval"
    rejected = [m for m in out if m.topic != STATS]
    return by_key, rejected


def test_the_seed_scenario():
    stats, rejected = run(seed_events())
    assert rejected == []
    assert set(stats) == {("driver-1", at(0)), ("driver-2", at(0)), ("driver-1", at(10))}
    assert totals(stats["driver-1", at(0)]) == (2, 1, 3, 30, 6, 3.0)
    assert totals(stats["driver-2", at(0)]) == (0, 0, 0, 0, 0, 5.0)
    assert totals(stats["driver-1", at(10)]) == (1, 0, 1, 10, 0, 0.0)
    assert stats["driver-1", at(10)].interval_end == at(20)


def test_the_three_topics_interleave_out_of_order_within_lateness():
    events = seed_events()
    shuffled = sorted(events, key=lambda e: -e.event_time.timestamp())  # newest first
    stats, rejected = run(shuffled, lateness=30, batch_size=1)
    assert rejected == []
    assert totals(stats["driver-1", at(0)]) == (2, 1, 3, 30, 6, 3.0)
    assert totals(stats["driver-1", at(10)]) == (1, 0, 1, 10, 0, 0.0)


def test_an_event_at_the_end_of_an_interval_starts_the_next_one():
    stats, _ = run([tipped("d1", "j1", 9.999999, 1), tipped("d1", "j2", 10, 2)])
    assert stats["d1", at(0)].total_tips == 1 and stats["d1", at(10)].total_tips == 2


def test_intervals_never_overlap():
    events = [tipped("d1", f"j{i}", i * 2.5, 1) for i in range(40)]
    stats, _ = run(events, window=10)
    starts = sorted(s.interval_start for s in stats.values())
    assert all(b - a >= (at(10) - at(0)) for a, b in itertools.pairwise(starts))
    assert all(s.interval_end - s.interval_start == at(10) - at(0) for s in stats.values())
    assert sum(s.total_tips for s in stats.values()) == 40


def test_duplicates_count_once_across_batches():
    events = seed_events()
    stats, rejected = run(events + events[::-1] + events, lateness=30, batch_size=2)
    assert rejected == []
    assert totals(stats["driver-1", at(0)]) == (2, 1, 3, 30, 6, 3.0)


def test_a_driver_with_only_rider_or_admin_cancels_still_gets_a_record():
    stats, _ = run([
        finished("d9", "j1", 1, FinishReason.RIDER_CANCEL),
        finished("d9", "j2", 2, FinishReason.ADMIN_CANCEL),
    ])
    assert totals(stats["d9", at(0)]) == (0, 0, 0, 0, 0, 0.0)


def test_average_rating_is_zero_without_ratings():
    stats, _ = run([tipped("d1", "j1", 1, 5)])
    assert stats["d1", at(0)].avg_rating == 0.0


def test_every_invalid_kind_goes_to_rejected_with_its_reason_and_the_original_bytes():
    good = finished("d1", "j1", 1)
    cases = [
        (RATED, encode_event(rated("", "j1", 1, 3)), "invalid: driver_id"),
        (TIPPED, encode_event(tipped("d1", "", 1, 3)), "invalid: journey_id"),
        (RATED, encode_event(replace(rated("d1", "j1", 1, 3), rated_at=None)), "invalid: rated_at"),
        (TIPPED, encode_event(replace(tipped("d1", "j1", 1, 3), tipped_at=None)), "invalid: tipped_at"),
        (FINISHED, encode_event(replace(good, ended_at=None)), "invalid: ended_at"),
        (RATED, encode_event(rated("d1", "j1", 1, 0)), "invalid: rating"),
        (RATED, encode_event(rated("d1", "j1", 1, 6)), "invalid: rating"),
        (FINISHED, bytes([0x20, 7]) + encode_event(good), "invalid: finish_reason"),
        (FINISHED, encode_event(replace(good, started_at=None)), "invalid: started_at"),
        (FINISHED, encode_event(replace(good, started_at=at(2))), "invalid: started_at"),
        (RATED, b"\x0a\xff\xff", "undecodable"),
        (TIPPED, b"{broken json", "undecodable"),
        (RATED, b"\x0a" + b"x" * 70000, "too large"),
        ("input/unknown", encode_event(good), "unknown topic"),
    ]
    messages = [MQTTMessage(topic, payload) for topic, payload, _ in cases]
    _, rejected = run(messages)
    expected = sorted((f"rejected/{t}", p, r) for t, p, r in cases if r)
    got = sorted((m.topic, m.payload, dict(m.user_properties)["reason"]) for m in rejected)
    assert got == expected
    assert all(dict(m.user_properties)["detail"] for m in rejected)


def test_json_payloads_are_accepted_too():
    stats, rejected = run([MQTTMessage(TIPPED, to_json(tipped("d1", "j1", 1, 7)))])
    assert rejected == [] and stats["d1", at(0)].total_tips == 7


def test_a_late_event_is_rejected_and_never_makes_a_second_record():
    # Each event its own batch; lateness 5 s: the event at 30 closes [0, 10).
    events = [tipped("d1", "j1", 3, 1), tipped("d1", "j2", 30, 1), tipped("d1", "late", 4, 100)]
    stats, rejected = run(events, lateness=5, batch_size=1)
    assert stats["d1", at(0)].total_tips == 1
    [late] = rejected
    assert late.topic == "rejected/input/driver_tipped"
    assert dict(late.user_properties)["reason"] == "late"
    assert late.payload == encode_event(events[2])


def test_late_after_the_stream_passed_the_interval_is_still_rejected():
    # The stream's time (as the input's watermark would give it) jumps past
    # [0, 10) + lateness between the two batches: j2 is late, j1 counted once.
    stream = [T0.timestamp()]

    def items():
        yield MQTTMessage(*wire(tipped("d1", "j1", 3, 1)))
        stream[0] = T0.timestamp() + 1000
        yield MQTTMessage(*wire(tipped("d1", "j2", 4, 1)))

    out: list = []
    run_main(build_flow(Settings(window_seconds=10, allowed_lateness_seconds=5), TestingSource(items()),
                        TestingSink(out), clock=lambda: T0.timestamp(), stream_clock=StreamClock(lambda: stream[0])))
    records = [decode_stats(m.payload) for _, m in out if m.topic == STATS]
    assert [(s.interval_start, s.total_tips) for s in records] == [(at(0), 1)]
    assert [dict(m.user_properties)["reason"] for _, m in out if m.topic != STATS] == ["late"]


def test_a_future_event_is_rejected_and_does_not_make_the_drivers_events_late():
    events = [tipped("d1", "wrong-clock", 3600, 1), tipped("d1", "j1", 5, 2)]
    stats, rejected = run(events, lateness=5, batch_size=1, max_future_seconds=300)
    assert [dict(m.user_properties)["reason"] for m in rejected] == ["future"]
    assert set(stats) == {("d1", at(0))} and stats["d1", at(0)].total_tips == 2


def test_json_output_format():
    out: list[MQTTMessage] = []
    flow = build_flow(Settings(window_seconds=10, output_format="json"),
                      TestingSource([MQTTMessage(*wire(tipped("d1", "j1", 1, 3)))]), TestingSink(out),
                      clock=lambda: T0.timestamp())
    run_main(flow)
    [(_, record)] = out
    assert record.payload.startswith(b'{"driverId":"d1","intervalStart":"2024-01-01T12:00:00Z"')
    assert decode_stats(record.payload).total_tips == 3


def test_metrics_count_received_accepted_duplicates_and_rejections_by_reason():
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    names = [("driver_stats_messages_received_total", {"topic": TIPPED}),
             ("driver_stats_events_accepted_total", {}),
             ("driver_stats_duplicates_total", {}),
             ("driver_stats_rejected_total", {"reason": "late"}),
             ("driver_stats_rejected_total", {"reason": "invalid: journey_id"}),
             ("driver_stats_records_emitted_total", {})]
    before = [sample(n, **labels) for n, labels in names]
    events = [tipped("d1", "j1", 3, 1), tipped("d1", "j1", 3, 1), tipped("d1", "j2", 30, 1),
              tipped("d1", "late", 4, 1), tipped("d1", "", 5, 1)]
    run(events, lateness=5, batch_size=1)
    after = [sample(n, **labels) for n, labels in names]
    assert [a - b for a, b in zip(after, before)] == [5, 2, 1, 1, 1, 2]


def test_a_first_event_that_would_overflow_leaves_no_interval_and_no_record():
    messages = [MQTTMessage(TIPPED, b'{"driverId":"d1","journeyId":"j1","tippedAt":"2024-01-01T12:00:01Z",'
                                    b'"amount":4294967296}'),
                MQTTMessage(*wire(tipped("d2", "j1", 1, 4_000_000_000))),
                MQTTMessage(*wire(tipped("d2", "j2", 2, 4_000_000_000)))]
    stats, rejected = run(messages)
    assert [dict(m.user_properties)["reason"] for m in rejected] == ["invalid: amount", "overflow: total_tips"]
    assert set(stats) == {("d2", at(0))} and stats["d2", at(0)].total_tips == 4_000_000_000


def test_an_exception_of_ours_rejects_that_event_and_the_flow_goes_on(monkeypatch):
    from driver_stats.core import windows

    real_add = windows.DriverWindows.add

    def add_that_fails_on_one_journey(self, event, event_time, now):
        if event.journey_id == "boom":
            raise ZeroDivisionError("a bug")
        return real_add(self, event, event_time, now)

    monkeypatch.setattr(windows.DriverWindows, "add", add_that_fails_on_one_journey)
    stats, rejected = run([tipped("d1", "j1", 1, 2), tipped("d1", "boom", 2, 5), tipped("d1", "j3", 3, 3)])
    [error] = rejected
    assert error.topic == "rejected/input/driver_tipped"
    assert dict(error.user_properties) == {"reason": "internal error", "detail": "ZeroDivisionError: a bug"}
    assert stats["d1", at(0)].total_tips == 5


def test_a_restart_from_a_snapshot_holding_a_bad_total_comes_up_and_rejects_the_record(tmp_path, monkeypatch):
    """A snapshot written by a buggy version (a negative total) must not crash-loop the flow."""
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig, init_db_dir

    from driver_stats.core import windows

    real_add = windows.IntervalTotals.add

    def buggy_add(self, event):
        verdict = real_add(self, event)
        if event.journey_id == "bad":
            self.tips = -5  # what a bug could leave in state
        return verdict

    init_db_dir(tmp_path, 1)
    items = [MQTTMessage(*wire(tipped("d1", "bad", 1, 2))), TestingSource.ABORT(),
             MQTTMessage(*wire(tipped("d2", "j1", 1, 3)))]
    source = TestingSource(items)
    out: list = []

    def run_once():
        flow = build_flow(Settings(window_seconds=10, allowed_lateness_seconds=0), source, TestingSink(out),
                          clock=lambda: T0.timestamp())
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(tmp_path)))

    monkeypatch.setattr(windows.IntervalTotals, "add", buggy_add)
    try:
        run_once()
    except Exception:  # noqa: BLE001 - TestingSource.ABORT stops the first run
        pass
    monkeypatch.setattr(windows.IntervalTotals, "add", real_add)
    run_once()  # resumes from the snapshot that holds tips=-5
    messages = [m for _, m in out]
    [unencodable] = [m for m in messages if m.topic == f"rejected/{STATS}"]
    assert dict(unencodable.user_properties)["reason"] == "unencodable"
    assert b'"totalTips":-5' in unencodable.payload
    [good] = [decode_stats(m.payload) for m in messages if m.topic == STATS]
    assert (good.driver_id, good.total_tips) == ("d2", 3)


def test_a_forgotten_driver_leaves_the_store_and_its_late_event_is_still_late(tmp_path):
    import pickle
    import sqlite3
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig, init_db_dir

    from driver_stats.core.shards import shard_of

    now = [T0.timestamp()]

    def at_wall(seconds, event):
        now[0] = T0.timestamp() + seconds  # the wall clock when this message arrives
        return MQTTMessage(*wire(event))

    def items():
        yield at_wall(5, tipped("d1", "j1", 3, 1))
        yield at_wall(400, tipped("d2", "j1", 400.5, 1))  # d1: [0, 10) closed at 10, forgotten at 160
        yield at_wall(401, tipped("d2", "j2", 401.5, 1))
        yield at_wall(402, tipped("d1", "late", 4, 7))  # d1 was forgotten: its shard's floor rejects it

    init_db_dir(tmp_path, 1)
    out: list = []
    flow = build_flow(Settings(window_seconds=10, allowed_lateness_seconds=0, state_retention_seconds=150),
                      TestingSource(items()), TestingSink(out), clock=lambda: now[0])
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(tmp_path)))
    messages = [m for _, m in out]
    records = [decode_stats(m.payload) for m in messages if m.topic == STATS]
    assert sorted((s.driver_id, s.total_tips) for s in records) == [("d1", 1), ("d2", 2)]
    [late] = [m for m in messages if m.topic != STATS]
    assert dict(late.user_properties)["reason"] == "late" and b"late" in late.payload
    [store] = tmp_path.glob("*.sqlite3")
    with sqlite3.connect(store) as db:
        latest = dict(db.execute(
            "SELECT state_key, ser_change FROM snaps WHERE step_id LIKE '%dedupe_and_window'"
            " ORDER BY snap_epoch"))
    assert set(latest) <= {shard_of("d1"), shard_of("d2")}, "state keys are shards, not drivers"
    floor, drivers = pickle.loads(latest[shard_of("d1")])
    assert (floor, drivers) == (T0.timestamp() + 10, []), "d1 is gone from the store; its shard keeps the floor"


def test_the_window_step_counts_what_it_processed_of_a_partition_only_once_the_whole_arrival_is_handled():
    # Bytewax hands the window step one arrival key by key (in key order, not
    # read order), then asks every key it woke for notify_at. Partition 0,
    # whose watermark is at 5 s, read d2's event at 12 s, then d1's at 100 s;
    # partition 1 is at 50 s.
    t = lambda second_: T0.timestamp() + second_  # noqa: E731
    marks = {0: t(5), 1: t(50)}
    root = StreamClock.of_input(lambda: marks)
    first, second = (DriverShardLogic(DriverShard(10, 5), root) for _ in range(2))

    def read(driver: str, second_: float, partition: int) -> Accepted:
        event = rated(driver, f"j-{driver}-{second_}", second_, 5)
        return Accepted(event, event.event_time.timestamp(), RATED, wire(event)[1], partition)

    assert first.on_batch([read("d1", 100, 0)])[0] == []
    # d2's event is not late: what d1's key handled counts once the arrival is handled.
    assert second.on_batch([read("d2", 12, 0)])[0] == []
    assert root.for_worker().now() == t(5)
    first.notify_at()
    # Now partition 0 is processed up to 100 s, partition 1 holds the stream at its watermark.
    assert root.for_worker().now() == t(50)
    assert isinstance(second.notify_at(), datetime)
    (record,), _ = second.on_notify()  # [10, 20) + 5 s passed: closed
    assert (record.driver_id, record.interval_start) == ("d2", at(10))
    assert first.on_notify()[0] == []  # [100, 110) + 5 s: not yet


def test_each_worker_counts_only_what_its_own_window_step_processed():
    root = StreamClock.of_input(lambda: {0: 10.0})
    clocks: dict[str, StreamClock] = {}
    both_running = threading.Barrier(2)

    def worker(name: str, newest: float) -> None:
        clock = clocks[name] = root.for_worker()
        assert clock is root.for_worker()  # one per thread
        clock.positions.pending[0] = newest
        clock.positions.settle()
        both_running.wait()

    threads = [threading.Thread(target=worker, args=args) for args in (("a", 500.0), ("b", 20.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (clocks["a"].now(), clocks["b"].now(), root.now()) == (500.0, 20.0, 10.0)
