"""The real flow through a private mosquitto: protobuf in, protobuf out.

Each test drives `python -m bytewax.run flows.driver_stats` only through the
contract: protobuf publishes on the input topics, DRIVER_STATS_* settings,
and what appears on output/driver_stats and rejected/<topic>.
"""

from __future__ import annotations

import pytest

from driver_stats.contract import encode_event
from tests.support import RATED, rated, seed_events, tipped, totals, wire
from driver_stats.testing.live_flow import LiveFlow, expected_stats, published_stats, wait_for_records
from connectors.mqtt.testing import Collector, Publisher, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]


def publish(publisher, events):
    for event in events:
        topic, payload = wire(event)
        publisher.publish(topic, [payload], wait=False)
    publisher.client.publish("sync", b"").wait_for_publish(10)


def test_seed_scenario_duplicates_and_invalid_messages_end_to_end(mosquitto, tmp_path):
    collector = Collector(mosquitto, "output/#", "rejected/#")
    publisher = Publisher(mosquitto)
    events = seed_events()
    bad_rating = encode_event(rated("driver-1", "j9", 3, 9))
    with LiveFlow(mosquitto, tmp_path, client_id="e2e-seed", window=10, lateness=1):
        publish(publisher, events[:4] + events[:4] + events[4:])  # at-least-once: the first four twice
        publisher.publish(RATED, [bad_rating, b"\xff\xfe"])
        expected = expected_stats(events, 10)
        wait_for_records(collector, expected, timeout=40)
        wait_for(lambda: len(collector.payloads("rejected/input/driver_rated")) == 2, 10, "rejected")
    got, repeats, conflicts = published_stats(collector.messages)
    assert got == expected and repeats == 0 and conflicts == 0
    d1 = [s for (driver, _), s in sorted(got.items()) if driver == "driver-1"]
    assert [totals(s) for s in d1] == [(2, 1, 3, 30, 6, 3.0), (1, 0, 1, 10, 0, 0.0)]
    rejected = {m.payload: dict(m.user_properties) for m in collector.messages if m.topic.startswith("rejected/")}
    assert rejected[bad_rating]["reason"] == "invalid: rating"
    assert rejected[b"\xff\xfe"]["reason"] == "undecodable"
    collector.close(), publisher.close()


def test_late_event_is_rejected_live_and_the_record_stays_final(mosquitto, tmp_path):
    collector = Collector(mosquitto, "output/#", "rejected/#")
    publisher = Publisher(mosquitto)
    first, newer = tipped("d1", "j1", 3, 5), tipped("d1", "j2", 40, 1)
    late = tipped("d1", "j3", 4, 100)
    with LiveFlow(mosquitto, tmp_path, client_id="e2e-late", window=10, lateness=2):
        publish(publisher, [first, newer])
        wait_for_records(collector, expected_stats([first], 10), timeout=30)
        publish(publisher, [late])
        wait_for(lambda: collector.payloads("rejected/input/driver_tipped"), 10, "late rejection")
        wait_for_records(collector, expected_stats([first, newer], 10), timeout=30)
    got, repeats, conflicts = published_stats(collector.messages)
    assert got == expected_stats([first, newer], 10) and conflicts == 0 and repeats == 0
    [message] = [m for m in collector.messages if m.topic == "rejected/input/driver_tipped"]
    assert message.payload == encode_event(late) and dict(message.user_properties)["reason"] == "late"
    collector.close(), publisher.close()


def test_wrong_setting_and_unreachable_broker_stop_with_one_line(mosquitto, tmp_path):
    import subprocess
    import sys

    for env, line in [
        ({"DRIVER_STATS_ALLOWED_LATENESS_SECONDS": "soon"}, "DRIVER_STATS_ALLOWED_LATENESS_SECONDS='soon' is invalid"),
        ({"DRIVER_STATS_MQTT_URL": "mqtt://127.0.0.1:1"}, "cannot connect to MQTT broker 127.0.0.1:1"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.driver_stats"],
                              env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("driver-stats: ") and line in last, proc.stderr[-2000:]


def test_a_late_event_for_a_forgotten_driver_is_late_live(mosquitto, tmp_path):
    # A 2 s state retention: d1 is forgotten seconds after its record, and
    # the late event must still be "late", never a second record.
    import re
    import urllib.request

    from connectors.mqtt.testing import free_port

    port = free_port()

    def tracked_drivers() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return sum(float(v) for v in re.findall(r"^driver_stats_tracked_drivers\{[^}]*\} (\S+)$", text, re.M))

    collector = Collector(mosquitto, "output/#", "rejected/#")
    publisher = Publisher(mosquitto)
    first, late = tipped("d1", "j1", 3, 5), tipped("d1", "j9", 4, 100)
    with LiveFlow(mosquitto, tmp_path, client_id="e2e-forgotten", window=10, lateness=1,
                  state_retention_seconds=2, metrics_port=port):
        publish(publisher, [first])
        wait_for_records(collector, expected_stats([first], 10), timeout=30)
        wait_for(lambda: tracked_drivers() == 0, 20, "d1 forgotten")
        publish(publisher, [late])
        wait_for(lambda: collector.payloads("rejected/input/driver_tipped"), 10, "late rejection")
        [message] = [m for m in collector.messages if m.topic == "rejected/input/driver_tipped"]
        assert dict(message.user_properties)["reason"] == "late"
    got, repeats, conflicts = published_stats(collector.messages)
    assert got == expected_stats([first], 10) and conflicts == 0 and repeats == 0
    collector.close(), publisher.close()
