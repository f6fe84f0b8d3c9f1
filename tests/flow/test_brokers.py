"""The guarantees on each broker: mosquitto, RabbitMQ (3.1.1), NATS (3.1.1, order per topic only), ejabberd (MQTT 5).

Each test runs the real flow on a private broker of each kind (the
``any_broker`` fixture, one broker per kind for the module). The broker
table in docs/scaling-and-brokers.md names these tests. NATS keeps a
session's order per topic only, so the flow runs there with
``DRIVER_STATS_BROKER_ORDER=topic`` (no idle advance: a later event moves
the stream on) and a lateness that covers the broker reordering a burst
across the three topics.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.mqtt import MQTTConnection, check_session_order
from connectors.mqtt.brokers import Ejabberd, Nats
from connectors.mqtt.testing import Collector, Publisher, wait_for
from driver_stats.contract import encode_event
from driver_stats.testing.live_flow import LiveFlow, expected_stats, published_stats, wait_for_records
from tests.support import RATED, rated, seed_events, tipped, wire

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(240)]

WINDOW = 10


def per_topic(broker) -> bool:
    """The broker keeps a session's order per topic only (NATS)."""
    return isinstance(broker, Nats)


def flow_settings(broker) -> dict:
    """Lateness and broker order for this broker (see the module docstring)."""
    if per_topic(broker):
        return {"lateness": 20, "broker_order": "topic"}
    return {"lateness": 1}


def publish(publisher, events) -> None:
    for event in events:
        topic, payload = wire(event)
        publisher.client.publish(topic, payload, qos=1)
    publisher.publish("sync", [b""])  # every PUBACK before it


def move_on(broker, publisher, after: float, restarted: bool = False) -> None:
    """Where no partition counts as idle (NATS), a later event of another driver moves the stream time on.

    ``restarted``: after a broker restart NATS redelivers what it had
    delivered and not seen acknowledged only after its ack_wait (10 s here),
    behind newer messages: wait for it first, as a stream whose event time
    follows the clock would, with an allowed lateness above the ack_wait.
    """
    if per_topic(broker):
        time.sleep(12 if restarted else 0)
        publish(publisher, [tipped("mover", "m1", after, 1)])


def restart(broker, *clients) -> None:
    broker.stop()
    broker.start()
    for client in clients:
        wait_for(client.client.is_connected, 30, "a test client back")


ONE_IN_FLIGHT = ("ejabberd's mod_mqtt sends a session its next QoS 1 message only after the PUBACK of the one "
                 "before, and the flow acknowledges after the epoch's commit: one message per epoch per partition "
                 "(test_ejabberd_sends_one_qos1_message_at_a_time_and_forgets_sessions_on_restart shows it)")


def test_seed_case_and_rejections_with_their_reason(any_broker, tmp_path):
    if isinstance(any_broker, Ejabberd):
        pytest.xfail(ONE_IN_FLIGHT)
    broker, name = any_broker, f"seed-{type(any_broker).__name__.lower()}"
    collector = Collector(broker, "output/#", "rejected/#", "rejected-reasons/#", client_id=f"{name}-c")
    publisher = Publisher(broker, client_id=f"{name}-p")
    events = seed_events()
    bad_rating = encode_event(rated("driver-1", "j9", 3, 9))
    with LiveFlow(broker, tmp_path, client_id=name, window=WINDOW, **flow_settings(broker)):
        publish(publisher, events[:4] + events[:4] + events[4:])  # at-least-once: the first four twice
        publisher.publish(RATED, [bad_rating, b"\xff\xfe"])
        move_on(broker, publisher, 100)
        expected = expected_stats(events, WINDOW)
        wait_for_records(collector, expected, timeout=40)
        wait_for(lambda: len(collector.payloads("rejected/input/driver_rated")) == 2, 10, "rejected")
        if getattr(broker, "protocol", "5") != "5":
            wait_for(lambda: len(collector.payloads("rejected-reasons/input/driver_rated")) == 2, 10, "envelopes")
    got, repeats, conflicts = published_stats(collector.messages)
    assert got == expected and repeats == 0 and conflicts == 0
    assert sorted(collector.payloads("rejected/input/driver_rated")) == sorted([bad_rating, b"\xff\xfe"])
    if getattr(broker, "protocol", "5") == "5":  # the reason as the contract says: a user property
        reasons = {m.payload: m.user_property("reason") for m in collector.messages if m.topic.startswith("rejected/")}
    else:  # 3.1.1: the envelope names the rejected topic and carries the original bytes
        envelopes = [json.loads(p) for p in collector.payloads("rejected-reasons/input/driver_rated")]
        assert {e["topic"] for e in envelopes} == {"rejected/input/driver_rated"}
        reasons = {base64.b64decode(e["payload_base64"]): e["properties"]["reason"] for e in envelopes}
    assert reasons == {bad_rating: "invalid: rating", b"\xff\xfe": "undecodable"}
    collector.close(), publisher.close()


def test_kill_9_and_broker_restarts_lose_and_repeat_nothing(any_broker, tmp_path):
    """kill -9 of the flow, a broker restart with the flow running, and one with the flow down and messages queued."""
    broker, name = any_broker, f"crash-{type(any_broker).__name__.lower()}"
    if isinstance(broker, Ejabberd):
        pytest.xfail("ejabberd's mod_mqtt keeps sessions in memory: a broker restart loses them and their "
                     "queued messages (retained messages survive, in mnesia; "
                     "test_ejabberd_sends_one_qos1_message_at_a_time_and_forgets_sessions_on_restart shows it)")
    collector = Collector(broker, "output/#", "rejected/#", client_id=f"{name}-c")
    publisher = Publisher(broker, client_id=f"{name}-p")
    first = [tipped(f"d{n}", f"a{n}", 1 + n, 10) for n in range(5)]
    second = [tipped(f"d{n}", f"b{n}", 21 + n, 20) for n in range(5)]
    third = [rated(f"d{n}", f"c{n}", 41 + n, 1 + n) for n in range(5)]
    flow = LiveFlow(broker, tmp_path, client_id=name, window=WINDOW, recovery=True, **flow_settings(broker))
    try:
        flow.start()
        publish(publisher, first)
        flow.kill()  # kill -9, records maybe not out yet
        flow.start()
        restart(broker, publisher)  # with the flow running
        publish(publisher, second)
        wait_for(lambda: flow.logs().count('"message":"mqtt input #0 subscribed') >= 3, 30, "input back")
        flow.kill()
        publish(publisher, third)  # queued in the flow's session while it is down
        restart(broker, publisher)  # with the flow down: the session and its queue must survive
        flow.start()
        move_on(broker, publisher, 100, restarted=True)
        expected = expected_stats(first + second + third, WINDOW)
        wait_for_records(collector, expected, timeout=60)
    finally:
        flow.kill()
    got, repeats, conflicts = published_stats(collector.messages)
    assert got == expected and repeats == 0 and conflicts == 0, (repeats, conflicts)
    assert not [m for m in collector.messages if m.topic.startswith("rejected/")]
    collector.close(), publisher.close()


def test_partition_count_change(any_broker, tmp_path):
    """2 partitions, kill -9, 4 partitions: nothing lost or counted twice; NATS refuses the change at start."""
    if isinstance(any_broker, Ejabberd):
        pytest.xfail(ONE_IN_FLIGHT)
    broker, name = any_broker, f"count-{type(any_broker).__name__.lower()}"
    collector = Collector(broker, "output/#", "rejected/#", client_id=f"{name}-c")
    publisher = Publisher(broker, client_id=f"{name}-p")
    first = [tipped(f"d{n}", f"a{n}", 1 + n / 10, 10) for n in range(20)]
    second = [rated(f"d{n}", f"b{n}", 21 + n / 10, 3) for n in range(20)]
    flow = LiveFlow(broker, tmp_path, client_id=name, window=WINDOW, recovery=True, partitions_per_topic=2,
                    **flow_settings(broker))
    try:
        flow.start()
        publish(publisher, first)
        flow.kill()
        flow.partitions, flow.env["DRIVER_STATS_PARTITIONS_PER_TOPIC"] = 4, "4"
        if per_topic(broker):
            proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.driver_stats"], env=flow.env,
                                  cwd=flow.workdir, capture_output=True, text=True, timeout=60)
            last = proc.stderr.strip().splitlines()[-1]
            assert proc.returncode != 0 and "the partition markers record 2 partitions, this start has 4" in last
            assert "DRIVER_STATS_BROKER_ORDER=topic" in last, last
            return
        flow.start()
        publish(publisher, second)
        expected = expected_stats(first + second, WINDOW)
        wait_for_records(collector, expected, timeout=60)
    finally:
        flow.kill()
        collector.close(), publisher.close()
    got, repeats, conflicts = published_stats(collector.messages)
    assert got == expected and repeats == 0 and conflicts == 0, (repeats, conflicts)
    assert not [m for m in collector.messages if m.topic.startswith("rejected/")]


def test_cross_topic_order_is_checked_at_start(any_broker, tmp_path):
    """Only NATS reorders a session's messages across topics; there the flow refuses the default order at start."""
    broker = any_broker
    connection = MQTTConnection(broker.host, broker.port, username=getattr(broker, "username", None),
                                password="x" if getattr(broker, "username", None) else None)
    why = check_session_order(connection, "order-check")
    if not per_topic(broker):
        assert why is None
        return
    assert why is not None and "out of publish order" in why
    flow = LiveFlow(broker, tmp_path, client_id="order-refused", window=WINDOW)
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.driver_stats"], env=flow.env,
                          cwd=flow.workdir, capture_output=True, text=True, timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("driver-stats: MQTT broker ")
    assert "set DRIVER_STATS_BROKER_ORDER=topic" in last, last


def test_ejabberd_sends_one_qos1_message_at_a_time_and_forgets_sessions_on_restart(tmp_path):
    """Why two guarantees are not held on ejabberd, shown with a bare client (the flow tests above xfail on it)."""
    def session(broker, got: list, clean: bool = False) -> tuple[paho.Client, list]:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ej-session", protocol=paho.MQTTv5,
                             manual_ack=True)
        client.username_pw_set(broker.username, "x")
        present: list = []
        client.on_connect = lambda c, _u, flags, _rc, _p: present.append(flags.session_present)
        client.on_message = lambda _c, _u, msg: got.append(msg)
        props = paho.Properties(paho.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.connect(broker.host, broker.port, clean_start=clean, properties=props)
        client.loop_start()
        wait_for(lambda: present, 10, "connected")
        return client, present

    with Ejabberd(tmp_path / "ejabberd").start() as broker:
        got: list = []
        client, _ = session(broker, got, clean=True)
        client.subscribe("slow/t", qos=1)
        time.sleep(0.5)
        client.disconnect(), client.loop_stop()
        publisher = Publisher(broker, client_id="ej-publisher")
        publisher.publish("slow/t", [b"1", b"2", b"3"])
        client, present = session(broker, got)
        assert present == [True]
        time.sleep(2)  # nothing acknowledged: the rest stays queued
        assert [m.payload for m in got] == [b"1"]
        client.ack(got[0].mid, got[0].qos)
        wait_for(lambda: len(got) == 2, 10, "the next message after the PUBACK")
        client.disconnect(), client.loop_stop()
        broker.restart()
        client, present = session(broker, [])
        assert present == [False]  # the session did not survive the restart
        client.disconnect(), client.loop_stop()
        publisher.close()
