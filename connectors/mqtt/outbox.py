"""What an output partition has handed to paho and the broker has not acknowledged yet, and the PUBACKs."""

from __future__ import annotations

import base64
import json
import time
from collections import deque

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .connection import MQTTPublishError
from .link import Link, one_wake_up
from .message import MQTTMessage
from .progress import ProgressMarker
from .retained import reason_text

Record = tuple[int, MQTTMessage]
"""A record of an output partition: its sequence number in the partition, and the message."""

Answer = tuple[Record | None, str, float]
"""The broker's answer to a publish: the record (None: a progress marker), why it was refused (empty:
accepted), and when (``time.monotonic()``) it was handed to paho."""


_ENVELOPE = (-1, MQTTMessage("", b""))
"""The entry of an envelope among the unacknowledged: waited for, never answered."""


def envelope(message: MQTTMessage) -> bytes:
    """``message`` as one JSON object, for a 3.1.1 consumer: its topic, user properties and bytes.

    >>> envelope(MQTTMessage("rejected/input/a", b"\\xff", (("reason", "undecodable"),)))
    b'{"topic": "rejected/input/a", "properties": {"reason": "undecodable"}, "payload_base64": "/w=="}'
    """
    properties: dict[str, str] = {}
    for key, value in message.user_properties:
        properties.setdefault(key, value)  # the first of a repeated name, as MQTTMessage.user_property
    return json.dumps({"topic": message.topic, "properties": properties,
                       "payload_base64": base64.b64encode(message.payload).decode("ascii")}).encode()


class Outbox:
    """The records (and progress markers) handed to paho and not yet acknowledged, by packet id.

    The PUBACKs come on paho's network thread (:meth:`on_publish`), which
    queues them for the worker (:meth:`answers`). A refusal there also
    moves the progress marker's floor below the refused record and publishes
    a marker claiming only the records before it, at once: the marker after
    the record's group may already be retained, and the worker may not look
    for a while.

    Its lock is paho's own ``_out_message_mutex``: paho holds it while it
    calls ``on_publish`` and ``publish()`` acquires it, so a lock of ours
    held in both would be acquired in both orders (a deadlock). Holding paho's makes
    handing a record to paho and noting its packet id one step against the
    PUBACK's callback (which so always finds its record), and likewise
    reading the floor and publishing the marker after a group. It is
    re-entrant.
    """

    def __init__(self, link: Link, progress: ProgressMarker | None,
                 envelopes: tuple[str, str] | None = None) -> None:
        self._link = link
        self._client = link.client
        self._progress = progress
        self._v5 = link.client.protocol == paho.MQTTv5
        self._envelopes = None if self._v5 else envelopes
        self._lock = link.client._out_message_mutex
        self._unacked: dict[int, tuple[Record | None, float]] = {}  # mid -> (record or None, handed over at)
        self._pubacks: deque[tuple[int, object]] = deque()  # (mid, reason) from paho's thread
        link.client.on_publish = self.on_publish

    def __len__(self) -> int:
        return len(self._unacked)

    def send(self, records: list[Record], *, marker: bool) -> None:
        """Hand ``records`` to paho, then (``marker``, with a progress marker) the marker claiming them."""
        client = self._client
        now = time.monotonic()
        with self._lock:
            with one_wake_up(client):
                for record in records:
                    item = record[1]
                    props = None
                    if item.user_properties and self._v5:
                        props = Properties(PacketTypes.PUBLISH)
                        props.UserProperty = [tuple(kv) for kv in item.user_properties]
                    info = client.publish(item.topic, item.payload, qos=1, properties=props)
                    if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                        raise MQTTPublishError(f"cannot publish to {item.topic!r} on {self._link.connection.address}: "
                                               f"{paho.error_string(info.rc)}")
                    self._unacked[info.mid] = (record, now)
                    if self._envelopes and item.user_properties and item.topic.startswith(self._envelopes[0]):
                        # Right behind its record: both or neither are in a group its marker claims.
                        topic = self._envelopes[1] + item.topic[len(self._envelopes[0]):]
                        self._unacked[client.publish(topic, envelope(item), qos=1).mid] = (_ENVELOPE, now)
            if marker and self._progress is not None:
                self._publish_marker(records[-1][0], now)

    def _publish_marker(self, seq: int, now: float) -> None:
        """Retain "the broker holds this run's records up to ``seq``" (under the lock)."""
        progress = self._progress
        info = self._client.publish(progress.topic, progress.claim(seq), qos=1, retain=True)
        self._unacked[info.mid] = (None, now)

    def on_publish(self, client, userdata, mid, reason, properties) -> None:
        """Paho's network thread: a PUBACK (paho holds the lock)."""
        self._pubacks.append((mid, reason))
        progress = self._progress
        if progress is not None and getattr(reason, "is_failure", False):
            with self._lock:
                record = self._unacked.get(mid, (None, 0.0))[0]
                if record is not None and (progress.floor is None or record[0] < progress.floor):
                    progress.floor = record[0]
                    self._publish_marker(record[0] - 1, time.monotonic())

    def answers(self) -> list[Answer]:
        """The broker's answers since the last call, in the order they came."""
        answers = []
        with self._lock:
            while self._pubacks:
                mid, reason = self._pubacks.popleft()
                if mid not in self._unacked:
                    continue  # not ours to count: a progress read's barrier
                record, sent_at = self._unacked.pop(mid)
                if record is _ENVELOPE:
                    continue  # 3.1.1: no refusal to see, nothing to count
                answers.append((record, reason_text(reason) if getattr(reason, "is_failure", False) else "", sent_at))
        return answers

    def clear_floor(self) -> None:
        """The refused record was accepted: markers may claim the records behind it again."""
        if self._progress is not None:
            with self._lock:
                self._progress.floor = None

    def oldest(self) -> float | None:
        """When the oldest record or marker still unacknowledged was handed to paho."""
        with self._lock:
            oldest = next(iter(self._unacked.values()), None)
        return None if oldest is None else oldest[1]

    def records(self) -> list[Record]:
        """The records still unacknowledged (not the markers)."""
        with self._lock:
            return [record for record, _sent_at in self._unacked.values()
                    if record is not None and record is not _ENVELOPE]
