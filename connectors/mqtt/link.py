"""One paho client kept connected: reconnects, one log line per change of state, counters.

Paho reconnects with a backoff of 1 s doubling to 30 s. Each change of state
is one log line on logger ``connectors.mqtt`` with the fields ``partition``,
``client_id``, ``broker`` and ``state`` (``connected``, ``disconnected``
with its reason, ``reconnected``, ``session_lost``), is counted in
:class:`MQTTLinkStats`, and is passed to ``on_event(event, client_id,
detail)`` when given.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .connection import MQTTConnection, Protocol, connect
from .names import client_id_of

log = logging.getLogger("connectors.mqtt")

EventHook = Callable[[str, str, str], None]
"""``on_event(event, client_id, detail)``; event is one of ``connected``,
``disconnected``, ``reconnected``, ``session_lost``."""


@dataclass
class MQTTLinkStats:
    """Counters and current state of one client (read them for metrics and health).

    Written by the client's own threads without locks: a reader sees each
    field's last value, which is all a gauge needs.
    """

    connects: int = 0
    reconnects: int = 0
    disconnects: int = 0
    session_losses: int = 0
    redeliveries_skipped: int = 0
    passed_on: int = 0
    """Source: messages acknowledged at once because another partition takes them."""
    connected: bool = False
    buffered: int = 0
    """Source: messages received, not yet taken by the dataflow."""
    unacked: int = 0
    """Source: messages taken (or buffered) and not yet acknowledged to the broker."""
    pending: int = 0
    """Sink: messages handed to the client and not yet acknowledged by the broker, or held back by a refusal."""
    oldest_pending_since: float = 0.0
    """Sink: ``time.monotonic()`` when the oldest of them was handed over (0 if none)."""
    refused_reason: str = ""
    """Sink: what the broker refuses, e.g. ``the broker refuses to publish on 'out/x': Not
    authorized (0x87)`` (the record waits, those behind it too), or the progress
    marker; empty while it accepts everything."""
    refused_since: float = 0.0
    """Sink: ``time.monotonic()`` when that refusal began (0 if none)."""
    inflight_cap: int = 0
    """Source: the Receive Maximum the broker was asked to keep to (MQTT 5; 0 with 3.1.1)."""
    last_call: float = 0.0
    """``time.monotonic()`` of the dataflow's last call into the partition (liveness)."""
    process: str = ""
    """With ``own_process``: the child process serving the partition, e.g. ``input child mqtt-in-0
    (pid 4242)``; empty without one (or once closed). This and the next two are the worker's own
    view of the child (:mod:`.process`), not the child's counters."""
    process_heard_at: float = 0.0
    """``time.monotonic()`` of that child's last heartbeat, as the worker last read it (every 0.5 s)."""
    process_exit: str = ""
    """How that child ended without being closed, e.g. ``killed by SIGKILL``; empty while it runs."""


class Link:
    """A paho client with its network thread, connection logging and counters.

    Args:
        connection: Where to connect.
        client_id: The MQTT client id.
        protocol: ``"3.1.1"`` or ``"5"``.
        label: How log lines name it (``mqtt input #0``).
        partition: Its ``partition`` log field (the Bytewax partition key).
        persistent: Keep the session across connections.
        resume_first: Resume a session left by an earlier process (MQTT 5:
            clean start off on the first connection too).
        session_expiry: MQTT 5 session expiry interval, seconds.
        receive_maximum: MQTT 5: the most unacknowledged QoS 1 messages the
            broker may send this client at a time.
        manual_ack: Acknowledge QoS 1 messages only on ``client.ack``.
        batch_read: Read with a :class:`~.batch_client.BatchReadingClient`.
        stats: Counters to update (default: its own).
        on_event: Called on each change of state; its errors are logged.
    """

    def __init__(
        self,
        connection: MQTTConnection,
        client_id: str,
        *,
        protocol: Protocol,
        label: str,
        partition: str,
        persistent: bool = False,
        resume_first: bool = False,
        session_expiry: int = 0,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        batch_read: bool = False,
        stats: MQTTLinkStats | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self.connection, self.client_id, self.protocol, self.label = connection, client_id, protocol, label
        self.stats = stats if stats is not None else MQTTLinkStats()
        # The session, and what the CONNECT asks for.
        self.persistent, self._resume_first = persistent, resume_first
        self._session_expiry, self._receive_maximum = session_expiry, receive_maximum
        self._v5 = protocol == "5"
        self._partition, self._on_event = partition, on_event  # for the log lines and the hook
        self.client = connection.client(
            client_id, protocol=protocol, persistent=persistent, manual_ack=manual_ack, batch_read=batch_read
        )
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.suppress_exceptions = True
        self.after_connect: Callable[[bool], None] = lambda session_present: None
        self.connected = False
        self.session_gen = 0
        """Incremented when the broker lost our session: older message ids are void."""
        self._ever_connected = False
        self._down_since: float | None = None
        self._closing = False

    def _event(self, event: str, detail: str, level: int = logging.INFO) -> None:
        fields = {"partition": self._partition, "client_id": self.client_id,
                  "broker": self.connection.address, "state": event}
        log.log(level, "%s %s (%s)%s", self.label, event, self.connection.address,
                f": {detail}" if detail else "", extra=fields)
        if self._on_event is not None:
            try:
                self._on_event(event, self.client_id, detail)
            except Exception:
                log.exception("on_event hook failed")

    def start(self) -> None:
        """Connect now; raise MQTTConnectError if the broker is unusable."""
        props = None
        clean_start = paho.MQTT_CLEAN_START_FIRST_ONLY
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            if self.persistent or not self._resume_first:
                props.SessionExpiryInterval = self._session_expiry
            if self._receive_maximum:
                props.ReceiveMaximum = self._receive_maximum
            if self._resume_first:
                clean_start = False
        connect(self.client, self.connection, label=self.client_id, properties=props, clean_start=clean_start)

    def stop(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        session_present = bool(flags.session_present)
        self.connected = self.stats.connected = True
        self.stats.connects += 1
        if not self._ever_connected:
            self._ever_connected = True
            kind = "session resumed" if session_present else "new session"
            self._event("connected", kind if self.persistent else "")
        else:
            self.stats.reconnects += 1
            down = time.monotonic() - (self._down_since or time.monotonic())
            self._event("reconnected", f"after {down:.1f}s"
                        + (f", session present: {session_present}" if self.persistent else ""))
            if self.persistent and not session_present:
                self.stats.session_losses += 1
                self.session_gen += 1
                self._event("session_lost", "the broker forgot this client's session: "
                            "messages queued for it are gone", logging.WARNING)
        self.after_connect(session_present)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if not self.connected:
            return
        self.connected = self.stats.connected = False
        if self._closing:
            log.debug("%s closed", self.label)
            return
        self.stats.disconnects += 1
        self._down_since = time.monotonic()
        self._event("disconnected", f"{reason}; reconnecting", logging.WARNING)


class _QuietWakeUp:
    """Stands in for paho's wake-up socket while a batch of packets is queued."""

    def send(self, _data: bytes) -> int:
        raise BlockingIOError  # what paho ignores when the wake-up socket is full

    def close(self) -> None:
        pass


@contextmanager
def one_wake_up(client: paho.Client) -> Iterator[None]:
    """Queue many packets (publishes, acks) and wake paho's network thread once.

    paho 2.2 writes a byte to a socket pair for every packet queued from
    another thread, to wake its network thread: a system call and a hand-over
    of the GIL per message, which doubled the cost of publishing and
    acknowledging. Within this block the wake-ups are skipped; one follows.
    """
    wake = client._sockpairW
    if wake is None:  # not started, or reconnecting: nothing to spare
        yield
        return
    quiet = _QuietWakeUp()
    client._sockpairW = quiet
    try:
        yield
    finally:
        if client._sockpairW is quiet:
            client._sockpairW = wake
            try:
                wake.send(b"0")
            except OSError:  # full (the thread is awake anyway) or closed
                pass
        else:
            # paho made itself a new pair meanwhile (a reconnect; it closed
            # our stand-in instead of this socket) and is awake.
            wake.close()


def check_connection(connection: MQTTConnection, client_id: str) -> None:
    """Connect once and disconnect: raise :class:`MQTTConnectError` if the broker is unusable.

    For a program's start, so a wrong URL or credential is one clear line
    before any partition is built.

    Args:
        connection: The broker.
        client_id: The program's client id; the check connects as ``<client_id>-check``.
    """
    link = Link(connection, client_id_of(client_id, "check"), protocol="3.1.1", label="mqtt check", partition="check")
    link.start()
    link.stop()
