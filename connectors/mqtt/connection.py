"""Where and how to connect, the errors, and connecting with a wait for the CONNACK.

:func:`connect` is the one way a paho client of this package (and of the
command-line tools built on it) connects: it starts the network thread and
returns only after a successful CONNACK, or raises :class:`MQTTConnectError`
with one line that names the broker and the reason, never the password.
:func:`connect_preferring_v5` is the MQTT 5 → 3.1.1 fallback for brokers
that do not speak MQTT 5.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .batch_client import BatchReadingClient

Protocol = Literal["3.1.1", "5"]
PROTOCOLS = {"3.1.1": paho.MQTTv311, "5": paho.MQTTv5}

T = TypeVar("T")


class MQTTConnectError(ConnectionError):
    """The broker cannot be reached or refused us; ``str()`` is one line.

    Args:
        message: The line.
        refused: The broker answered with a failure CONNACK (credentials,
            authorization, protocol): waiting cannot help, except for
            ``protocol_mismatch``.
        protocol_mismatch: The broker refused or dropped the CONNECT the way
            one that lacks this MQTT version does.
    """

    def __init__(self, message: str, *, refused: bool = False, protocol_mismatch: bool = False):
        super().__init__(message)
        self.refused = refused
        self.protocol_mismatch = protocol_mismatch


class MQTTPublishError(RuntimeError):
    """Published messages were not acknowledged (in time, or at all)."""


@dataclass(frozen=True)
class MQTTConnection:
    """Where and how to connect. ``repr`` never shows the password.

    Args:
        host: Broker host name or address.
        port: Broker port.
        tls: Connect with TLS (``mqtts://``).
        ca_file: PEM CA bundle to verify the broker; system CAs when None.
        cert_file: PEM client certificate (with ``key_file``) for mutual TLS.
        key_file: PEM private key of ``cert_file``.
        username: Broker user name.
        password: Broker password.
        keepalive: Seconds; paho pings when nothing else was sent for this long.
        connect_timeout: Seconds to wait for the TCP/TLS connection and the
            CONNACK at start.
    """

    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive: int = 30
    connect_timeout: float = 10.0

    def __repr__(self) -> str:
        return (
            f"MQTTConnection(host={self.host!r}, port={self.port}, tls={self.tls}, "
            f"ca_file={self.ca_file!r}, cert_file={self.cert_file!r}, "
            f"key_file={self.key_file!r}, username={self.username!r}, "
            f"password={'***' if self.password else None}, keepalive={self.keepalive})"
        )

    __str__ = __repr__

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def apply(self, client: paho.Client) -> None:
        """Configure TLS and credentials of a paho client."""
        if self.tls:
            client.tls_set(
                ca_certs=self.ca_file,
                certfile=self.cert_file,
                keyfile=self.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if self.username is not None or self.password is not None:
            client.username_pw_set(self.username or "", self.password)
        client.connect_timeout = self.connect_timeout

    def client(
        self,
        client_id: str,
        *,
        protocol: Protocol = "3.1.1",
        persistent: bool = False,
        manual_ack: bool = False,
        batch_read: bool = False,
    ) -> paho.Client:
        """A paho client for this broker, not connected yet.

        Args:
            client_id: The MQTT client id.
            protocol: ``"3.1.1"`` or ``"5"``.
            persistent: Keep the session (3.1.1: ``clean_session=False``;
                with 5 the session is chosen at :func:`connect`).
            manual_ack: Acknowledge received QoS 1 messages only on
                ``client.ack``.
            batch_read: A :class:`~.batch_client.BatchReadingClient`, for
                a client that receives many messages.
        """
        v5 = protocol == "5"
        client = (BatchReadingClient if batch_read else paho.Client)(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else not persistent,
            protocol=PROTOCOLS[protocol],
            manual_ack=manual_ack,
        )
        self.apply(client)
        return client


def describe(err: BaseException) -> str:
    """A connection failure in a few words."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {err.verify_message or err.reason}"
    if isinstance(err, ssl.SSLError):
        return f"TLS failure: {err.reason or err}"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve host: {err.strerror or err}"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(err, FileNotFoundError):
        return f"cannot read {err.filename}"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def connect(
    client: paho.Client,
    connection: MQTTConnection,
    *,
    label: str | None = None,
    properties=None,
    clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY,
) -> None:
    """Connect ``client``, start its network thread and wait for a successful CONNACK.

    The client's own ``on_connect`` runs for every successful CONNACK (the
    first one before this returns, so subscriptions it makes are sent by
    then) and its ``on_disconnect`` for every loss after that. On failure the
    client is stopped and :class:`MQTTConnectError` raised.

    Args:
        client: A client from :meth:`MQTTConnection.client`.
        connection: Where to connect.
        label: Shown after the address in errors (``host:port as <label>``).
        properties: MQTT 5 CONNECT properties.
        clean_start: MQTT 5 clean start.
    """
    where = connection.address + (f" as {label}" if label else "")
    first = _FirstConnack(client, where)
    try:
        client.connect(
            connection.host,
            connection.port,
            keepalive=connection.keepalive,
            properties=properties,
            clean_start=clean_start,
        )
    except (OSError, ValueError, ssl.SSLError) as err:
        raise MQTTConnectError(f"cannot connect to MQTT broker {where}: {describe(err)}") from None
    client.loop_start()
    if not first.done.wait(connection.connect_timeout):
        first.failure.append(MQTTConnectError(
            f"cannot connect to MQTT broker {where}: no CONNACK within {connection.connect_timeout:g}s",
            protocol_mismatch=True,
        ))
    if first.failure:
        _stop(client)
        raise first.failure[0]


class _FirstConnack:
    """Wraps a client's ``on_connect``/``on_disconnect`` to catch how its first connection ends."""

    def __init__(self, client: paho.Client, where: str) -> None:
        self.done = threading.Event()
        self.failure: list[MQTTConnectError] = []
        self._where = where
        self._then_connect, self._then_disconnect = client.on_connect, client.on_disconnect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect

    def _on_connect(self, c, userdata, flags, reason, props) -> None:
        if reason.is_failure:  # at start: our error; on a reconnect: paho retries
            if not self.done.is_set():
                text = str(reason)
                self.failure.append(MQTTConnectError(
                    f"MQTT broker {self._where} refused the connection: {text}",
                    refused=True, protocol_mismatch="protocol" in text.lower(),
                ))
                self.done.set()
            return
        try:
            if self._then_connect is not None:
                self._then_connect(c, userdata, flags, reason, props)
        finally:
            self.done.set()

    def _on_disconnect(self, c, userdata, flags, reason, props) -> None:
        if not self.done.is_set():
            self.failure.append(MQTTConnectError(
                f"MQTT broker {self._where} refused the connection: connection closed before CONNACK ({reason})",
                refused=True, protocol_mismatch=True,
            ))
            self.done.set()
            return
        if self._then_disconnect is not None:
            self._then_disconnect(c, userdata, flags, reason, props)


def _stop(client: paho.Client) -> None:
    with contextlib.suppress(Exception):  # stopping a client that never connected
        client.disconnect()
    client.loop_stop()


def connect_preferring_v5(
    open_with: Callable[[Protocol], T], protocol: Protocol | None = None
) -> tuple[T, Protocol]:
    """``open_with("5")``, or ``open_with("3.1.1")`` if the broker lacks MQTT 5.

    A broker without MQTT 5 (e.g. the demo's embedded amqtt) refuses the v5
    CONNECT with a protocol error, or drops it without a CONNACK: only then
    is 3.1.1 tried. Everything else (and a failing 3.1.1) raises. A given
    ``protocol`` is used alone.

    Returns:
        What ``open_with`` returned, and the protocol it used.
    """
    if protocol is not None:
        return open_with(protocol), protocol
    try:
        return open_with("5"), "5"
    except MQTTConnectError as err:
        if not err.protocol_mismatch:
            raise
    return open_with("3.1.1"), "3.1.1"
