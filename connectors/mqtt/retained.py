"""Reading the coordination topics: their retained messages, behind a barrier, and small JSON payloads."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable

import paho.mqtt.client as paho

from .connection import MQTTConnection, connect


def load_json(payload: bytes, max_bytes: int) -> object:
    """The JSON value in ``payload``; ValueError, saying why, for anything else.

    Anyone with write access may put anything on a coordination topic, so
    nothing it holds may raise anything else or take long to read.

    >>> load_json(b'{"a": 1}', 64)
    {'a': 1}
    >>> for bad in (b"x" * 65, b"\\xff", b"{", b"[" * 60):
    ...     try:
    ...         load_json(bad, 64)
    ...     except ValueError as err:
    ...         print(err)
    65 bytes, more than 64
    not UTF-8
    not JSON
    not JSON
    """
    if len(payload) > max_bytes:
        raise ValueError(f"{len(payload)} bytes, more than {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None


def read_retained(
    client: paho.Client,
    connection: MQTTConnection,
    topic_filter: str,
    barrier: str,
    on_message: Callable[[paho.MQTTMessage], None],
    *,
    connect_as: str | None = None,
) -> str:
    """Subscribe ``client`` to ``topic_filter`` and hand ``on_message`` what comes, until all retained are in.

    The broker sends the retained messages on the SUBSCRIBE; a message that
    ``client`` then publishes on ``barrier`` (under the filter, with a token
    of its own) comes back after them, so once it is here every retained
    message has come, or there is none. Waits ``connection.connect_timeout``.

    Args:
        client: A connected client; or, with ``connect_as``, one to connect
            first, as that label, subscribing on every connection.
        connection: The broker.
        topic_filter: What to read.
        barrier: The barrier's topic.
        on_message: Called (from paho's thread) with every message but the
            barrier, until the caller replaces ``client.on_message``.

    Returns:
        Empty once the barrier came back; else why not: the broker refused
        the subscription or the barrier.

    Raises:
        TimeoutError: Neither came in time.
    """
    wait = _Barrier(client, barrier, on_message)
    if connect_as is None:
        client.subscribe(topic_filter, qos=1)
    else:
        client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        connect(client, connection, label=connect_as)
    if not wait.done.wait(connection.connect_timeout):
        raise TimeoutError(f"not read within {connection.connect_timeout:g}s")
    return wait.refused


class _Barrier:
    """A client's callbacks while it waits for its barrier (paho's network thread)."""

    def __init__(self, client: paho.Client, topic: str, on_message: Callable[[paho.MQTTMessage], None]) -> None:
        self.done = threading.Event()
        self.refused = ""
        self._topic = topic
        self._token = secrets.token_hex(8).encode()
        self._mids: list[int] = []
        self._on_message = on_message
        client.on_message = self._message
        client.on_subscribe = self._subscribed
        client.on_publish = self._published

    def _message(self, _client, _userdata, msg) -> None:
        if msg.topic == self._topic and msg.payload == self._token:
            self.done.set()
        else:
            self._on_message(msg)

    def _subscribed(self, client, _userdata, _mid, reasons, _properties) -> None:
        refused = [r for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            self._fail(f"subscribing refused: {reason_text(refused[0])}")
        else:
            self._mids.append(client.publish(self._topic, self._token, qos=1).mid)

    def _published(self, _client, _userdata, mid, reason, _properties) -> None:
        if mid in self._mids and getattr(reason, "is_failure", False):
            self._fail(f"publishing refused: {reason_text(reason)}")

    def _fail(self, why: str) -> None:
        if not self.done.is_set():
            self.refused = why
        self.done.set()


def reason_text(reason: object) -> str:
    """``Not authorized (0x87)``: an MQTT 5 reason code's name and number."""
    value = getattr(reason, "value", None)
    return f"{reason} (0x{value:02X})" if isinstance(value, int) else str(reason)
