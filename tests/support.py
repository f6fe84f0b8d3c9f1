"""Helpers shared by the tests: contract events at times given as seconds after ``T0``,
the seed scenario, a record's totals, and checks of what a live flow published."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from connectors.mqtt.testing import Collector, Publisher, create_sessions
from driver_stats.traffic import COUNTED_KINDS
from driver_stats.contract import STATS_TOPIC, DriverRated, DriverTipped, FinishReason, JourneyFinished, encode_event
from driver_stats.settings import Settings
from driver_stats.testing.live_flow import LiveFlow, expected_stats, published_stats, wait_for_records
from driver_stats.testing.paced import compare
from flows.live import mqtt_source

# Aligned to every window length the tests use (10 s and 600 s).
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
RATED, TIPPED, FINISHED = "input/driver_rated", "input/driver_tipped", "input/journey_finished"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rated(driver: str, journey: str, seconds: float, rating: int, rider: str = "r") -> DriverRated:
    return DriverRated(driver_id=driver, rider_id=rider, journey_id=journey, rated_at=at(seconds), rating=rating)


def tipped(driver: str, journey: str, seconds: float, amount: int, rider: str = "r") -> DriverTipped:
    return DriverTipped(driver_id=driver, rider_id=rider, journey_id=journey, tipped_at=at(seconds), amount=amount)


def finished(
    driver: str,
    journey: str,
    seconds: float,
    reason: FinishReason = FinishReason.DROP_OFF,
    distance: int = 0,
    price: int = 0,
    duration: float = 60,
) -> JourneyFinished:
    return JourneyFinished(
        journey_id=journey,
        driver_id=driver,
        rider_id="r",
        finish_reason=reason,
        started_at=at(seconds - duration),
        ended_at=at(seconds),
        distance=distance,
        price=price,
    )


TOPIC_OF = {DriverRated: RATED, DriverTipped: TIPPED, JourneyFinished: FINISHED}


def wire(event) -> tuple[str, bytes]:
    """The (topic, protobuf bytes) a producer would publish for ``event``."""
    return TOPIC_OF[type(event)], encode_event(event)


def totals(s):
    return (s.total_drop_offs, s.total_driver_cancels, s.total_distance, s.total_price, s.total_tips, s.avg_rating)


def seed_events():
    return [
        rated("driver-1", "j1", 1, 2), rated("driver-1", "j2", 2, 4),
        tipped("driver-1", "j1", 3, 2), tipped("driver-1", "j2", 4, 4),
        finished("driver-1", "j1", 5, FinishReason.DROP_OFF, distance=1, price=10),
        finished("driver-1", "j2", 6, FinishReason.DROP_OFF, distance=1, price=10),
        finished("driver-1", "j3", 7, FinishReason.DRIVER_CANCEL, distance=1, price=10),
        finished("driver-1", "j4", 15, FinishReason.DROP_OFF, distance=1, price=10),
        rated("driver-2", "j5", 8, 5),
    ]


def stop_process_groups(*procs: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM each process's group (started with ``start_new_session=True``); SIGKILL what lingers."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rejections(collector: Collector) -> list:
    return [(m.topic, m.user_property("reason")) for m in list(collector.messages) if m.topic.startswith("rejected/")]


def assert_counted_once(expected: dict, collector: Collector, flow: LiveFlow, timeout: float = 60) -> dict:
    """Every expected record arrives and is right; nothing is rejected, nothing conflicts."""
    try:
        wait_for_records(collector, expected, timeout=timeout)
    except AssertionError as missing:  # what the flow said, for a loss that shows rarely
        raise AssertionError(f"{missing}; rejected: {rejections(collector)[:5]}; the flow's log ends:\n"
                             f"{flow.logs()[-6000:]}") from None
    counts = compare(expected, list(collector.messages))
    assert counts["lost"] == counts["wrong"] == counts["conflicting"] == 0 and not rejections(collector), (
        counts, rejections(collector)[:5], flow.logs()[-3000:])
    return counts


def drain_backlog(broker, tmp_path, name: str, messages, window: int, lateness: int, *, partitions: int,
                  processes: int, workers: int = 1) -> tuple[dict, str]:
    """Create the flow's sessions, queue ``messages`` (on their shard topics) while it is down, start it.

    Asserts that every message is counted once and nothing rejected; returns
    the records by (driver, interval start) and the flow's logs.
    """
    collector = Collector(broker, STATS_TOPIC, "rejected/#", client_id=f"{name}-collector")
    flow = LiveFlow(broker, tmp_path / name, client_id=name, window=window, lateness=lateness, recovery=True,
                    processes=processes, workers=workers, partitions_per_topic=partitions)
    # The flow's input sessions, as a first run leaves them.
    create_sessions(mqtt_source(Settings(mqtt_url=f"mqtt://{broker.host}:{broker.port}", client_id=name,
                                         partitions_per_topic=partitions)))
    publisher = Publisher(broker, client_id=f"{name}-publisher")
    for message in messages:
        publisher.client.publish(message.shard_topic, message.payload, qos=1)
    publisher.publish("warm/up", [b""])  # waits for every PUBACK before it
    try:
        flow.start()
        expected = expected_stats([m.event for m in messages if m.kind in COUNTED_KINDS], window)
        assert_counted_once(expected, collector, flow)
        return published_stats(list(collector.messages))[0], flow.logs()
    finally:
        flow.kill()
        publisher.close()
        collector.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on 127.0.0.1:``port`` (the health and metrics server), errors included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
