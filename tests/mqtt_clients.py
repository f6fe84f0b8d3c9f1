"""MQTT clients for tests: a collecting subscriber, a QoS 1 publisher, polling."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.mqtt import MQTTMessage
from tests.mosquitto import Mosquitto


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Collector:
    """Subscribes (MQTT 5, QoS 1, persistent) and records what arrives."""

    def __init__(self, broker: Mosquitto, *topics: str, client_id: str = "collector") -> None:
        self.messages: list[MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        ready = threading.Event()

        def on_connect(client, userdata, flags, reason, props):
            if not flags.session_present:
                client.subscribe([(t, 1) for t in topics])
            ready.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: ready.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        wait_for(ready.is_set, 5, "collector connected")
        time.sleep(0.1)  # SUBACK

    def _on_message(self, client, userdata, msg) -> None:
        props = tuple(getattr(msg.properties, "UserProperty", ()) or ())
        with self.lock:
            self.messages.append(MQTTMessage(msg.topic, msg.payload, props))

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    def __init__(self, broker: Mosquitto, client_id: str = "publisher") -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payloads, wait: bool = True) -> None:
        infos = [self.client.publish(topic, p, qos=1) for p in payloads]
        if wait:
            for info in infos:
                wait_for(info.is_published, 10, "PUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
