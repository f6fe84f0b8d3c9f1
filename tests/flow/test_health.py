"""Health checks, gauges and the metrics server of the live process (issue 14), without a broker.

The live checks (a real Prometheus, a real broker going away, SIGTERM) are in
tests/deploy/test_observability.py.
"""

from __future__ import annotations

import gc
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.mqtt import MQTTLinkStats
from connectors.mqtt.testing import free_port
from driver_stats.core.intake import Accepted
from driver_stats.core.shards import DriverShard
from driver_stats.core.stream_clock import StreamClock
from driver_stats.settings import Settings
from flows import health, metrics
from flows.live import bytewax_run_options, is_interrupt
from flows.steps import DriverShardLogic
from tests.support import RATED, T0, rated, wire


def Stats(**fields) -> MQTTLinkStats:  # noqa: N802 - stands for the stats type in the tables below
    """An input or output client's stats, connected unless told otherwise."""
    return MQTTLinkStats(**{"connected": True, **fields})


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def checks(sources: dict, sinks: dict | None = None, now: float = 1000.0) -> tuple[health.Health, Clock]:
    clock = Clock(now)
    return health.Health(sources, sinks or {}, clock=clock), clock


# --------------------------------------------------------------------------
# /readyz and /livez decisions


def test_not_ready_while_starting_or_restoring():
    check, _ = checks({})
    assert check.readiness() == (False, "starting: no input partition opened on this process yet")
    assert check.liveness()[0] is True
    check, _ = checks({"c-in-0": Stats(last_call=999.0), "c-in-1": Stats(last_call=0.0)})
    ready, reason = check.readiness()
    assert not ready and reason.startswith("restoring: input c-in-1 not polled yet")
    assert check.liveness()[0] is True


def test_ready_when_every_input_was_polled_and_every_client_is_connected():
    check, _ = checks({"c-in-0": Stats(last_call=999.5)}, {"c-out-0": Stats(last_call=990.0)})
    assert check.readiness() == (True, "ok: 1 input partition(s) connected, polled 0.5s ago")
    assert check.liveness() == (True, "ok: input polled 0.5s ago")


@pytest.mark.parametrize("side", ["input", "output"])
def test_a_disconnected_client_is_not_ready_but_live(side):
    sources, sinks = {"c-in-0": Stats(last_call=500.0)}, {"c-out-0": Stats(last_call=500.0)}
    if side == "input":
        sources["c-in-0"].connected = False
    else:
        sinks["c-out-0"].connected = False
    check, _ = checks(sources, sinks)
    ready, reason = check.readiness()
    assert not ready and reason.endswith("disconnected from the broker") and side in reason
    # Waiting for the broker is not a wedge, however long it takes.
    live, reason = check.liveness()
    assert live and reason.startswith("waiting for the broker")


def test_records_the_broker_does_not_acknowledge():
    sinks = {"c-out-0": Stats(pending=12, oldest_pending_since=995.0, last_call=1000.0)}
    check, clock = checks({"c-in-0": Stats(last_call=995.0)}, sinks)
    assert check.readiness()[0] is True  # 5 s: still publishing
    clock.now = 1006.0
    assert check.readiness() == (False, "output c-out-0: 12 messages unacknowledged for 11s")
    assert check.liveness()[0] is True


def test_a_refused_publish_is_not_ready_at_once_with_its_reason_but_live():
    refused = "the broker refuses to publish on 'output/driver_stats': Not authorized (0x87)"
    # mosquitto drops the connection after a refusal too: the refusal is what /readyz names.
    sinks = {"c-out-0": Stats(pending=3, refused_reason=refused, refused_since=990.0, connected=False,
                              oldest_pending_since=999.0, last_call=999.0)}
    check, _ = checks({"c-in-0": Stats(last_call=999.0)}, sinks)
    assert check.readiness() == (False, f"output c-out-0: {refused} for 10s, 3 messages waiting")
    live, reason = check.liveness()
    assert live and reason == f"waiting for the broker: output c-out-0: {refused} for 10s, 3 messages waiting"
    sinks["c-out-0"] = Stats(last_call=999.0)  # accepted again
    assert check.readiness()[0] is True


def test_a_silent_child_process_is_not_ready_naming_it_and_ready_again_once_heard():
    # The child's last figures (connected, polled) look fine: only its heartbeat tells.
    source = Stats(last_call=999.0, process="input child mqtt-in-0 (pid 7)", process_heard_at=995.0)
    sink = Stats(last_call=999.0, process="output child mqtt-out-0 (pid 8)", process_heard_at=999.5)
    check, clock = checks({"c-in-0": source}, {"c-out-0": sink})
    assert check.readiness()[0] is True  # 5 s: within the bound
    clock.now = 1006.0
    assert check.readiness() == (False, "input child mqtt-in-0 (pid 7) silent for 11s")
    assert check.liveness()[0] is True  # seconds are no wedge
    source.process_heard_at = 1005.8  # it answers again
    assert check.readiness()[0] is True
    clock.now = 1011.5
    assert check.readiness() == (False, "output child mqtt-out-0 (pid 8) silent for 12s")
    check.child_silent_after = 15.0  # DRIVER_STATS_CHILD_SILENT_SECONDS
    assert check.readiness()[0] is True
    clock.now = 999.5 + health.WEDGED_AFTER + 1
    live, reason = check.liveness()
    assert not live and reason == "wedged: output child mqtt-out-0 (pid 8) silent for 181s (bound 180s)"
    source.process_heard_at = sink.process_heard_at = 0.0
    source.process = sink.process = ""  # closed children (or partitions in this process): not watched
    assert check.liveness()[0] is False and "not polled its input" in check.liveness()[1]


def test_a_dead_child_process_is_neither_ready_nor_live():
    sink = Stats(last_call=999.0, process="output child mqtt-out-0 (pid 8)", process_heard_at=999.0,
                 process_exit="killed by SIGKILL")
    check, _ = checks({"c-in-0": Stats(last_call=999.0)}, {"c-out-0": sink})
    assert check.readiness() == (False, "output child mqtt-out-0 (pid 8) died: killed by SIGKILL")
    assert check.liveness() == (False, "output child mqtt-out-0 (pid 8) died: killed by SIGKILL")


def metric(name: str, labels: dict) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_refusals_are_counted_by_reason():
    before = metric("driver_stats_publish_refused_total", {"reason": "Quota exceeded (0x97)"})
    metrics.count_refused("output/driver_stats", "Quota exceeded (0x97)")
    metrics.count_refused("rejected/input/driver_rated", "Quota exceeded (0x97)")
    assert metric("driver_stats_publish_refused_total", {"reason": "Quota exceeded (0x97)"}) == before + 2


def test_wedged_only_without_input_polls_for_the_bound_while_connected():
    sources = {"c-in-0": Stats(last_call=800.0), "c-in-1": Stats(last_call=700.0)}
    check, clock = checks(sources, {"c-out-0": Stats(last_call=700.0)})
    clock.now = 800.0 + health.WEDGED_AFTER
    assert check.liveness()[0] is True
    clock.now += 1
    live, reason = check.liveness()
    assert not live and reason.startswith("wedged: the dataflow has not polled its input for 181s")
    sources["c-in-0"].connected = False
    assert check.liveness()[0] is True


# --------------------------------------------------------------------------
# the server


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_the_server_answers_metrics_and_health_on_its_address():
    sources = {"c-in-0": Stats(last_call=time.monotonic())}
    check = health.Health(sources, {})
    server = health.serve("127.0.0.1", free_port(), check)
    assert server is not None and server.server_address[0] == "127.0.0.1"
    port = server.server_address[1]
    try:
        status, kind, body = get(port, "/readyz")
        assert (status, kind) == (200, "application/json") and body.count("\n") == 1
        answer = json.loads(body)
        assert answer["ready"] is True and answer["reason"].startswith("ok")
        sources["c-in-0"].connected = False
        status, _, body = get(port, "/readyz")
        assert status == 503 and json.loads(body) == {
            "ready": False, "reason": "input c-in-0 disconnected from the broker"}
        status, _, body = get(port, "/livez")
        assert status == 200 and json.loads(body)["live"] is True
        status, kind, body = get(port, "/metrics")
        assert status == 200 and kind.startswith("text/plain") and "driver_stats_events_accepted_total" in body
        assert get(port, "/other")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_port_is_a_warning_not_a_crash(caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert health.serve("127.0.0.1", busy.getsockname()[1], None) is None
    assert "metrics not served" in caplog.text


def test_the_metrics_address_setting():
    assert Settings.from_env({}).metrics_address == "0.0.0.0"
    assert Settings.from_env({"DRIVER_STATS_METRICS_ADDRESS": "::1"}).metrics_address == "::1"


# --------------------------------------------------------------------------
# what the flow reads of bytewax.run's command line


@pytest.mark.parametrize("argv, environ, expected", [
    (["flows.driver_stats"], {}, (None, None)),
    (["flows.driver_stats", "-w", "2", "-r", "/rec", "-s", "5", "-b", "0"], {}, ("/rec", 5.0)),
    (["flows.driver_stats", "--recovery-directory=/rec", "-i", "1", "-a", "a:1;b:2"], {}, ("/rec", None)),
    (["flows.driver_stats"], {"BYTEWAX_RECOVERY_DIRECTORY": "/env", "BYTEWAX_SNAPSHOT_INTERVAL": "3"}, ("/env", 3.0)),
    (["flows.driver_stats", "-r", "/arg"], {"BYTEWAX_RECOVERY_DIRECTORY": "/env"}, ("/arg", None)),
])
def test_recovery_options_are_read_as_bytewax_run_reads_them(argv, environ, expected):
    assert bytewax_run_options(argv, environ) == expected


def test_recovery_options_only_under_bytewax_run():
    assert bytewax_run_options() == (None, None)  # pytest's own -r must not count


def test_snapshot_age_is_the_last_write_of_the_recovery_partitions(tmp_path):
    assert metrics.recovery_store_age(str(tmp_path)) is None
    for name, mtime in (("part-0.sqlite3", 100.0), ("part-0.sqlite3-wal", 130.0), ("part-0.sqlite3-shm", 150.0)):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (mtime, mtime))
    assert metrics.recovery_store_age(str(tmp_path), now=140.0) == 10.0


# --------------------------------------------------------------------------
# gauges of the window step: kept per batch, equal to a full count


def accepted(driver: str, journey: str, second: float) -> Accepted:
    event = rated(driver, journey, second, 5)
    return Accepted(event, event.event_time.timestamp(), RATED, wire(event)[1])


def full_count(logic: DriverShardLogic) -> tuple[int, int, float]:
    drivers = logic.shard.drivers.values()
    starts = [start for w in drivers for start in w.open]
    return len(logic.shard), len(starts), (min(starts) + logic.shard.window if starts else float("inf"))


def test_shard_gauges_marked_per_batch_and_counted_on_scrape_match_a_full_count():
    rng = random.Random(4)
    wall = Clock(T0.timestamp())
    logic = DriverShardLogic(DriverShard(10, 5, retention_seconds=30), StreamClock(wall))
    journeys = 0
    for _ in range(300):
        wall.now += rng.uniform(0, 4)
        if rng.random() < 0.2:
            logic.on_notify()
        else:
            batch = []
            for _ in range(rng.randrange(1, 6)):
                journeys += 1
                second = wall.now - T0.timestamp() - rng.uniform(0, 12)  # some of them late
                batch.append(accepted(f"d{rng.randrange(6)}", f"j{journeys}", second))
            logic.on_batch(batch)
        gauges = logic.gauges
        assert gauges.stale
        gauges.refresh()
        assert not gauges.stale
        assert (gauges.drivers, gauges.open_intervals, gauges.oldest_end) == full_count(logic)
    logic.on_eof()
    logic.gauges.refresh()
    assert (logic.gauges.open_intervals, logic.gauges.oldest_end) == (0, float("inf"))


def test_lag_and_state_per_worker_on_scrape():
    gc.collect()  # shards of flows run earlier in this process
    wall = Clock(T0.timestamp() + 100)
    logic = DriverShardLogic(DriverShard(10, 5), StreamClock(wall))
    logic.on_batch([accepted("d1", "j1", 95), accepted("d2", "j2", 101)])  # intervals [90, 100) and [100, 110)

    def scraped(name: str) -> float:
        values = [s.value for family in metrics.REGISTRY.collect() for s in family.samples if s.name == name]
        assert len(values) == 1, values  # this test's thread is one worker
        return values[0]

    assert scraped("driver_stats_open_intervals") == 2 and scraped("driver_stats_tracked_drivers") == 2
    assert scraped("driver_stats_event_time_lag_seconds") == pytest.approx(0.0)  # [90, 100) ends at 100: now
    wall.now += 4
    assert scraped("driver_stats_event_time_lag_seconds") == pytest.approx(4.0)
    del logic  # a finished flow's shards leave the gauges
    assert not [s for f in metrics.REGISTRY.collect() for s in f.samples if s.name == "driver_stats_open_intervals"]


def test_record_delay_is_read_from_acknowledged_records():
    from driver_stats.contract import DriverStats, encode_stats
    from datetime import timedelta

    record = DriverStats(driver_id="d", interval_start=T0, interval_end=T0 + timedelta(seconds=10),
                         total_drop_offs=0, total_driver_cancels=0, total_distance=0, total_price=0,
                         total_tips=0, avg_rating=0.0)
    before = metrics.RECORD_DELAY.collect()[0].samples
    count = next(s.value for s in before if s.name.endswith("_count"))
    assert metrics.observe_record_delays([encode_stats(record), b"not a record"], now=T0.timestamp() + 12) == 1
    after = metrics.RECORD_DELAY.collect()[0].samples
    assert next(s.value for s in after if s.name.endswith("_count")) == count + 1
    assert metrics.LAST_RECORD.collect()[0].samples[0].value == T0.timestamp() + 12


def test_broker_inflight_cap_is_absent_until_known():
    def caps():
        return {s.labels["client"]: s.value for f in metrics.REGISTRY.collect() for s in f.samples
                if s.name == "driver_stats_broker_inflight_cap"}

    sources = {"x-in-0": Stats(), "x-in-1": Stats()}
    sources["x-in-1"].inflight_cap = 500  # asked for with MQTT 5
    metrics.watch(source_stats=sources, sink_stats={})
    try:
        assert caps() == {"x-in-1": 500}
    finally:
        metrics.watch(source_stats={}, sink_stats={})


def test_scraping_while_the_flow_runs(caplog):
    """The scrape thread counts shards the worker is changing: no error, and the end state is exact."""
    import threading

    from bytewax.testing import TestingSink, TestingSource, run_main

    from connectors.mqtt import MQTTMessage
    from flows.driver_stats import build_flow

    gc.collect()
    messages = [MQTTMessage(*wire(rated(f"d{i % 500}", f"j{i}", i * 0.01, 4))) for i in range(6_000)]
    flow = build_flow(Settings(window_seconds=10, allowed_lateness_seconds=5), TestingSource(messages, batch_size=100),
                      TestingSink([]), clock=lambda: T0.timestamp())
    done = threading.Event()
    scrapes = []

    def scrape():
        while not done.is_set():
            scrapes.append(sum(s.value for f in metrics.REGISTRY.collect() for s in f.samples
                               if s.name == "driver_stats_tracked_drivers"))
            time.sleep(0.005)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        run_main(flow)
    finally:
        done.set()
        scraper.join()
    assert "collecting gauges failed" not in caplog.text
    assert len(scrapes) > 3 and max(scrapes) == 500


def test_an_interrupt_that_bytewax_wrapped_twice_is_still_the_signal_s():
    # SIGTERM's KeyboardInterrupt raised inside a flat_map_batch step comes
    # back as the cause of the cause of the error cli_main raises: the exit
    # code must still be 0 (Kubernetes stops pods with SIGTERM).
    def interrupted(_items):
        raise KeyboardInterrupt

    flow = Dataflow("interrupted")
    op.output("out", op.flat_map_batch("step", op.input("in", flow, TestingSource([1])), interrupted),
              TestingSink([]))
    with pytest.raises(BaseException) as caught:
        run_main(flow)
    assert not isinstance(caught.value.__cause__, KeyboardInterrupt)  # the case one level did not see
    assert is_interrupt(caught.value)
    assert not is_interrupt(RuntimeError("a bug"))
