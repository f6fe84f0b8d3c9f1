"""connectors.mqtt.batch_client: what it hands on_message and on_publish is what paho's own client hands them."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.mqtt import MQTTConnection, batch_client
from connectors.mqtt.batch_client import BatchReadingClient
from connectors.mqtt.connection import connect
from connectors.mqtt.testing import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


def _publishes() -> list[tuple[str, bytes, int, bool, list]]:
    """(topic, payload, qos, retain, user properties): every shape the fast path and paho's share."""
    cases = [(f"in/b/{i % 7}", f"m{i}".encode() * (i % 5), 1, False, []) for i in range(3000)]
    cases += [
        ("in/b/ü/ß", b"unicode topic", 1, False, []),
        ("in/b/props", b"with properties", 1, False, [("reason", "late"), ("detail", "é")]),
        ("in/b/big", bytes(range(256)) * 2000, 1, False, []),  # 512 KB: several socket reads
        ("in/b/qos0", b"at most once", 0, False, []),
        ("in/b/qos2", b"exactly once", 2, False, []),
        ("in/b/empty", b"", 1, False, []),
        ("in/b/retained", b"kept", 1, True, []),
    ]
    return cases


def _received(client: paho.Client, mosquitto, client_id: str) -> tuple[list, threading.Event]:
    got: list = []
    subscribed = threading.Event()

    def on_message(_c, _u, msg) -> None:
        props = list(getattr(msg.properties, "UserProperty", []) or []) if msg.properties is not None else []
        got.append((msg.topic, msg.payload, msg.qos, msg.retain, msg.dup, props))
        if msg.qos == 1:
            _c.ack(msg.mid, msg.qos)

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("in/b/#", qos=2)
    client.on_subscribe = lambda *_: subscribed.set()
    connect(client, MQTTConnection(host="127.0.0.1", port=mosquitto.port), label=client_id)
    wait_for(subscribed.is_set, 10, f"{client_id} subscribed")
    return got, subscribed


def test_received_messages_and_acknowledgements_are_paho_s(mosquitto, monkeypatch):
    decoded: list = []  # the codec's work: proof that the fast path ran
    codec_read = batch_client.mqtt5.read
    monkeypatch.setattr(batch_client.mqtt5, "read", lambda view: decoded.append(1) or codec_read(view))
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    fast = conn.client("batch-reader", protocol="5", manual_ack=True, batch_read=True)
    assert isinstance(fast, BatchReadingClient)
    stock = conn.client("stock-reader", protocol="5", manual_ack=True)
    (fast_got, _), (stock_got, _) = _received(fast, mosquitto, "batch"), _received(stock, mosquitto, "stock")

    # The publisher reads its PUBACKs through the batch client too.
    publisher = conn.client("batch-publisher", protocol="5", batch_read=True)
    acked: list = []
    publisher.on_publish = lambda _c, _u, mid, reason, _p: acked.append((mid, reason.is_failure))
    connect(publisher, conn, label="publisher")
    cases = _publishes()
    infos = []
    for topic, payload, qos, retain, user_props in cases:
        props = None
        if user_props:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = user_props
        infos.append(publisher.publish(topic, payload, qos=qos, retain=retain, properties=props))
    for info in infos:
        info.wait_for_publish(20)
    wait_for(lambda: len(fast_got) >= len(cases) and len(stock_got) >= len(cases), 20, "every message")
    try:
        assert len(decoded) >= 3000
        assert fast_got == stock_got  # the same messages, in the same order, with the same flags
        # ... and they are what was published (MQTT orders messages per QoS level, so compare sorted).
        assert sorted((t, p, q) for t, p, q, *_ in fast_got) == sorted((t, p, q) for t, p, q, _r, _u in cases)
        assert [m[5] for m in fast_got if m[0] == "in/b/props"] == [[("reason", "late"), ("detail", "é")]]
        # on_publish once per publish, each a success (for QoS 0, once sent).
        assert sorted(m for m, failed in acked if not failed) == sorted(info.mid for info in infos)
    finally:
        for client in (fast, stock, publisher):
            client.disconnect()
            client.loop_stop()


def test_acknowledgements_written_at_once_are_the_broker_s_and_only_those(mosquitto):
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    got: list = []

    def reader() -> BatchReadingClient:
        client = conn.client("ack-all", persistent=True, manual_ack=True, batch_read=True)
        client.on_message = lambda _c, _u, msg: got.append((msg.mid, msg.qos, msg.payload))
        client.on_connect = lambda c, *_: c.subscribe("in/acks", qos=1)
        connect(client, conn, label="ack-all")
        return client

    client = reader()
    publisher = conn.client("ack-publisher")
    connect(publisher, conn, label="ack-publisher")
    wait_for(lambda: client.is_connected(), 10, "reader connected")
    time.sleep(0.3)  # subscribed
    for info in [publisher.publish("in/acks", str(i).encode(), qos=1) for i in range(500)]:
        info.wait_for_publish(10)
    wait_for(lambda: len(got) == 500, 10, "500 messages")
    first = got[:300]
    assert client.ack_all((mid, qos) for mid, qos, _ in first) == 300
    time.sleep(0.5)  # written
    client.disconnect()
    client.loop_stop()
    got.clear()
    client = reader()
    try:
        # The session redelivers exactly the 200 not acknowledged, in order.
        wait_for(lambda: len(got) >= 200, 10, "the unacknowledged messages again")
        time.sleep(0.5)
        assert [payload for _, _, payload in got] == [str(i).encode() for i in range(300, 500)]
    finally:
        for c in (client, publisher):
            c.disconnect()
            c.loop_stop()
