"""The broker's access control, deploy/mosquitto/acl, with the real flow (issue 20).

A private mosquitto loads the shipped ACL and a password file made by the
compose stack's own command (its ``mosquitto-users`` service, run here with
the host's ``mosquitto_passwd``). The real flow logs in as ``driver-stats``,
a producer as ``producer``, a consumer as ``consumer``. First the ACL lacks
the flow's write on ``output/#``, as a misconfigured broker would: the
records wait, ``/readyz`` says why, and once the operator installs the
shipped ACL and reloads mosquitto (SIGHUP) every record arrives, once. Then
the producer tries to write the flow's progress marker and an output record:
the broker refuses both, and the producer's events were counted all along.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from connectors.mqtt.testing import Collector, Mosquitto, Publisher, free_port, wait_for
from driver_stats.testing.live_flow import LiveFlow, wait_for_records
from driver_stats.testing.paced import PacedTraffic, compare
from tests.support import http_get

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
ACL = REPO / "deploy" / "mosquitto" / "acl"
PASSWORDS = {"MQTT_FLOW_PASSWORD": "flow-secret", "MQTT_PRODUCER_PASSWORD": "producer-secret",
             "MQTT_CONSUMER_PASSWORD": "consumer-secret"}
WINDOW, LATENESS = 2, 1


def make_password_file(directory: Path) -> Path:
    """Run the compose service's command, its paths moved to ``directory``."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd not found: it comes with the mosquitto package", pytrace=False)
    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["mosquitto-users"]
    line = service["command"][-1].replace("$$", "$").replace("/mosquitto/auth", str(directory))
    subprocess.run(["sh", "-c", line], env={"PATH": "/usr/bin:/bin", **PASSWORDS}, check=True,
                   capture_output=True, timeout=30)
    return directory / "passwd"


def publish_v5(broker: Mosquitto, user: str, password: str, topic: str, payload: bytes, *, retain: bool = False):
    """Publish once with QoS 1 over MQTT 5; the PUBACK's reason code."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-try", protocol=paho.MQTTv5)
    client.username_pw_set(user, password)
    answers = []
    client.on_publish = lambda _c, _u, _mid, reason, _p: answers.append(reason)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: answers, 5, f"the PUBACK for {topic}")
        return answers[0]
    finally:
        client.disconnect()
        client.loop_stop()


def retained(broker: Mosquitto, user: str, password: str, topic: str) -> bytes | None:
    """The retained message on ``topic`` as ``user`` reads it (None if none)."""
    got, done = [], []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-look", protocol=paho.MQTTv5)
    client.username_pw_set(user, password)
    client.on_message = lambda _c, _u, msg: got.append(msg.payload) if msg.retain else None
    client.on_subscribe = lambda *_a: done.append(time.monotonic())
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        wait_for(lambda: done, 5, "SUBACK")
        time.sleep(0.3)  # a retained message follows the SUBACK at once
        return got[-1] if got else None
    finally:
        client.disconnect()
        client.loop_stop()


def test_only_the_flow_writes_its_topics_and_a_refused_output_waits_for_the_acl(tmp_path):
    passwd = make_password_file(tmp_path)
    acl = tmp_path / "acl"
    shipped = ACL.read_text()
    assert "topic write output/#" in shipped
    acl.write_text(shipped.replace("topic write output/#", "# (missing: topic write output/#)"))
    broker = Mosquitto(tmp_path / "broker", password_file=passwd, acl_file=acl).start()
    port = free_port()
    flow = LiveFlow(broker, tmp_path / "flow", client_id="driver-stats", window=WINDOW, lateness=LATENESS,
                    recovery=True, epoch_seconds=1, metrics_port=port, metrics_address="127.0.0.1",
                    mqtt_username="driver-stats", mqtt_password=PASSWORDS["MQTT_FLOW_PASSWORD"])
    consumer = Collector(broker, "output/#", client_id="consumer", username="consumer",
                         password=PASSWORDS["MQTT_CONSUMER_PASSWORD"])
    producer = Publisher(broker, client_id="producer", username="producer",
                         password=PASSWORDS["MQTT_PRODUCER_PASSWORD"])
    try:
        flow.start()
        traffic = PacedTraffic(producer, count=120, rate=40, drivers=6, window=WINDOW, lateness=LATENESS)
        traffic.start()

        # The flow's user may not write output/#: records wait, /readyz says why.
        def refused():
            status, body = http_get(port, "/readyz")
            return status == 503 and "refuses to publish on 'output/driver_stats'" in body and body

        answer = json.loads(wait_for(refused, 30, "/readyz to name the refusal"))
        assert answer["reason"].startswith("output driver-stats-out-0: the broker refuses to publish on "
                                           "'output/driver_stats': Not authorized (0x87)"), answer
        # Counted in the worker when its sink process next answers (an epoch at most).
        wait_for(lambda: 'driver_stats_publish_refused_total{reason="Not authorized (0x87)"}'
                 in http_get(port, "/metrics")[1], 10, "the refusal counted")
        assert consumer.payloads("output/driver_stats") == []

        # The operator installs the shipped ACL and reloads the broker: every record, once.
        shutil.copyfile(ACL, acl)
        broker.reload()
        traffic.join()
        wait_for_records(consumer, traffic.expected(), timeout=60)
        counts = compare(traffic.expected(), list(consumer.messages))
        assert counts == {"lost": 0, "wrong": 0, "conflicting": 0, "duplicate_records": 0}, counts
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 20, "/readyz ready again")

        # The producer may write the inputs only: not the flow's progress marker, not a record.
        marker_topic = "connectors-mqtt/progress/driver-stats-out-0"
        flows_marker = retained(broker, "driver-stats", PASSWORDS["MQTT_FLOW_PASSWORD"], marker_topic)
        assert set(json.loads(flows_marker)) == {"run", "seq"}
        forged = json.dumps({"run": json.loads(flows_marker)["run"], "seq": 10**12}).encode()
        producer_password = PASSWORDS["MQTT_PRODUCER_PASSWORD"]
        assert publish_v5(broker, "producer", producer_password, marker_topic, forged, retain=True).value == 0x87
        assert publish_v5(broker, "producer", producer_password, "output/driver_stats", b"forged").value == 0x87
        assert retained(broker, "driver-stats", PASSWORDS["MQTT_FLOW_PASSWORD"], marker_topic) != forged
        # Nor may a consumer, nor can a consumer read the coordination topics.
        consumer_password = PASSWORDS["MQTT_CONSUMER_PASSWORD"]
        assert publish_v5(broker, "consumer", consumer_password, marker_topic, forged, retain=True).value == 0x87
        assert retained(broker, "consumer", consumer_password, marker_topic) is None
        time.sleep(0.3)
        assert b"forged" not in consumer.payloads("output/driver_stats")
    finally:
        flow.kill()
        consumer.close()
        producer.close()
        broker.stop()
    assert "Traceback" not in flow.logs()
