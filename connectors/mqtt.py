"""MQTT input and output for Bytewax 0.21, on paho-mqtt 2.

Reads QoS 1 messages from MQTT topics into a dataflow and publishes
{py:obj}`MQTTMessage` items back with QoS 1, acknowledging each input
message only once the dataflow can no longer lose it.

```python
from bytewax import operators as op
from bytewax.dataflow import Dataflow

from connectors import mqtt

conn = mqtt.MQTTConnection(host="127.0.0.1", port=1883)
flow = Dataflow("echo")
inp = mqtt.input("in", flow, connection=conn, topics=["input/a"],
                 client_id="echo", max_message_bytes=65536)
out = op.map("upper", inp.oks,
             lambda m: mqtt.MQTTMessage("output/a", m.payload.upper()))
rejected = op.map("too-large", inp.errs,
                  lambda e: e.message.rejected("too large", e.reason))
mqtt.output("out", op.merge("all", out, rejected), connection=conn,
            client_id="echo")
# python -m bytewax.run this_module:flow
# with recovery: python -m bytewax.recovery DB 1
#                python -m bytewax.run this_module:flow -r DB -s 10 -b 0
```

## Input

{py:obj}`MQTTSource` (or the {py:obj}`input` operator, which also splits
oversized messages into an `errs` stream) has ``partitions`` partitions,
keys ``"in-<i>"``; each subscribes to every topic, so every topic has
``partitions`` partitions. Every worker lists them all and Bytewax assigns
each to one worker. A partition is one paho client with a stable client id
(:py:meth:`MQTTSource.client_id_for`, e.g. ``driver-stats-in-0``), a
persistent session (MQTT 3.1.1 ``clean_session=False``; with
``protocol="5"``: clean start off and a session expiry interval) and QoS 1
subscriptions to all the topics. One session for all topics matters: the
broker queues a disconnected client's messages in one queue in publish
order, so after an outage or a restart the backlog comes back interleaved
across topics as it was published, not one topic's whole backlog before
the next (which would make the later topics' events look late).

* ``partitions=1`` (default): plain subscriptions. Messages arrive in
  publish order; everything published while the flow is down is queued in
  its session, across broker restarts too.
* ``partitions>1``: shared subscriptions ``$share/<client_id>/<topic>``.
  Mosquitto hands each message to one member, round-robin, and queues the
  share of an offline member in its session: adding partitions (and
  workers) spreads the load, and a flow that was down gets what was
  published meanwhile. The trade-offs, measured with mosquitto 2.0.11:
  (1) no order across partitions; (2) a **restarted broker does not
  restore shared subscriptions** from its persistence file (it still
  reports the session present): messages already queued survive, but
  messages published after the broker restart and before the member
  reconnects are LOST (nobody is subscribed). The partition subscribes
  again on every connection to keep that window short, but a broker
  restart while the flow is down loses everything published until the flow
  is back; (3) when ``partitions`` is lowered, the sessions of the removed
  partitions stay members of the group and keep receiving their share until
  the broker expires them (``persistent_client_expiration`` for 3.1.1, the
  session expiry interval for 5): remove them, or run once more with the
  old value until drained. Switching between 1 and more replaces partition
  0's subscriptions (plain <-> shared).

MQTT 3.1.1 is the default for input: through a 1-worker flow, QoS 1,
100-byte payloads, this connector receives about 43k msg/s with 3.1.1 and
22k msg/s with 5 on a 2-core machine (``bench/mqtt_throughput.py``); use
``protocol="5"`` only to receive user properties.

### When a message is acknowledged

Messages are received with paho's ``manual_ack`` and PUBACKed (in the order
received, as MQTT 3.1.1 requires) only when Bytewax proves the dataflow has
finished with them. Bytewax's input operator calls
``snapshot()`` on each partition at the end of every epoch and calls
``next_batch()``/``snapshot()`` for the following epoch only once its probe
has passed the previous one. So every message emitted before a
``snapshot()`` is acknowledged at the next call of that partition.

* **With recovery** (``-r DIR -s N -b 0``) the probe follows the recovery
  committer: an epoch is passed once every worker has durably written the
  snapshots of that epoch (all stateful steps, and
  {py:obj}`MQTTSink`, which is a ``FixedPartitionedSink`` for exactly this
  reason: its snapshot is taken after its writes, which are PUBACKed). A
  message is acknowledged only once its effect (state and outputs) is in the
  recovery store: **at-least-once end to end**. A crash redelivers every
  message of the uncommitted epochs (duplicates, never losses). Restoring an
  *older* copy of the recovery directory loses what was acked since.
* **Without recovery** the probe follows the outputs: a message is
  acknowledged once every output of its epoch was written (PUBACKed). State
  held in memory (e.g. an open window) is lost on a crash although its
  messages were acknowledged: at-least-once only for what a message
  produces in the epoch it arrives; **at-most-once for aggregated state**.

``snapshot()`` returns ``None``: the broker session is the resume state.

### Memory and flow control

At most about ``max_pending`` received messages wait to be emitted: when the
buffer is full the network thread stops reading the socket (TCP pushes back
to the broker), waking every ``keepalive/4`` s (at most 1 s) to take one
message so keepalive pings still flow; the bound is therefore soft by one
message per wait. Messages already emitted but not yet acknowledged only
cost an id each. ``next_batch`` never blocks; paho's network thread
(``loop_start``) keeps the connection alive while Bytewax does not call it.

## Output

{py:obj}`MQTTSink` is a ``FixedPartitionedSink`` of ``(key, MQTTMessage)``
with ``partitions`` partitions (the {py:obj}`output` operator keys by topic,
so the messages of a topic keep their order). A partition is one MQTT 5
client (user properties), client id ``<client_id>-out-<i>``, QoS 1, no
retain. ``write_batch`` returns only once the broker PUBACKed every message
of the batch; if the connection drops, paho re-sends the unacknowledged ones
after reconnecting (clean start on the first connection of the process,
session resumed on reconnects) and the batch keeps waiting, up to
``timeout`` seconds, then raises :class:`MQTTPublishError`. A PUBACK with a
failure reason (e.g. not authorized) raises too. The payload is sent as
given, user properties in the given order: the same item gives the same
bytes.

## Connections

Paho reconnects with a backoff of 1 s doubling to 30 s. One log line per
change of state on logger ``connectors.mqtt`` (connected, disconnected with
reason, reconnected, session lost). Counters are in
:py:attr:`MQTTSource.stats` / :py:attr:`MQTTSink.stats` and
``on_event(event, client_id, detail)`` is called on each change. A broker
that cannot be reached when a partition starts (refused, unknown host, TLS
failure, bad credentials, no CONNACK) raises :class:`MQTTConnectError`, one
line with host:port and the reason, never the password.

## Broker settings this relies on (mosquitto 2)

* ``persistence true`` (and a ``persistence_location``): sessions and queued
  messages survive a broker restart.
* ``max_queued_messages 0`` (or more than can pile up while the flow is
  down): the default 1000 DROPS further messages for an offline or slow
  persistent client. ``max_queued_bytes 0`` likewise.
* ``max_inflight_messages 0`` (or at least the messages of one epoch): acks
  wait for the epoch to commit, so with the default 20 a 3.1.1 client gets
  20 messages per epoch (2 msg/s with 10 s epochs). MQTT 5 clients are
  limited by their receive maximum (65535) instead.
* ``persistent_client_expiration``: unset (never) or longer than any outage
  of the flow; expired sessions lose their queue.
* ``message_size_limit`` may cap payloads on the broker side; the
  connector's ``max_message_bytes`` turns larger ones into errors.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, List, Literal, Optional, Tuple, Union

import bytewax.operators as op
import paho.mqtt.client as paho
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "check_connection",
    "MQTTConnectError",
    "MQTTConnection",
    "MQTTError",
    "MQTTLinkStats",
    "MQTTMessage",
    "MQTTPublishError",
    "MQTTSink",
    "MQTTSource",
    "MQTTSourceOut",
    "input",
    "output",
]

log = logging.getLogger("connectors.mqtt")

Protocol = Literal["3.1.1", "5"]
EventHook = Callable[[str, str, str], None]
"""``on_event(event, client_id, detail)``; event is one of ``connected``,
``disconnected``, ``reconnected``, ``session_lost``."""

_PROTOCOLS = {"3.1.1": paho.MQTTv311, "5": paho.MQTTv5}
_SAFE_ID = re.compile(r"[^A-Za-z0-9_-]")
_SESSION_EXPIRY_S = 7 * 24 * 3600
_IDLE_POLL = timedelta(milliseconds=10)


class MQTTConnectError(ConnectionError):
    """The broker cannot be reached or refused us; ``str()`` is one line."""


class MQTTPublishError(RuntimeError):
    """Published messages were not acknowledged (in time, or at all)."""


@dataclass(frozen=True)
class MQTTConnection:
    """Where and how to connect. ``repr`` never shows the password."""

    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    ca_file: Optional[str] = None
    """PEM CA bundle to verify the broker; system CAs when None."""
    cert_file: Optional[str] = None
    """PEM client certificate (with ``key_file``) for mutual TLS."""
    key_file: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    keepalive: int = 30
    """Seconds; paho pings when nothing else was sent for this long."""
    connect_timeout: float = 10.0
    """Seconds to wait for the TCP/TLS connection and the CONNACK at start."""

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


@dataclass(frozen=True)
class MQTTMessage:
    """One MQTT message, in or out.

    Input messages carry user properties only with ``protocol="5"``.
    """

    topic: str
    payload: bytes
    user_properties: Tuple[Tuple[str, str], ...] = ()

    def user_property(self, name: str) -> Optional[str]:
        """The first user property ``name``, or None."""
        return next((v for k, v in self.user_properties if k == name), None)

    def rejected(
        self, reason: str, detail: Optional[str] = None, prefix: str = "rejected/"
    ) -> MQTTMessage:
        """This message, unchanged, for ``<prefix><topic>`` with ``reason`` (and ``detail``)."""
        props: Tuple[Tuple[str, str], ...] = (("reason", reason),)
        if detail is not None:
            props += (("detail", detail),)
        return MQTTMessage(prefix + self.topic, self.payload, props)


@dataclass(frozen=True)
class MQTTError:
    """A received message that cannot go on, and why (e.g. ``too large: ...``)."""

    message: MQTTMessage
    reason: str


@dataclass(frozen=True)
class MQTTSourceOut:
    """Streams of the {py:obj}`input` operator."""

    oks: Stream[MQTTMessage]
    errs: Stream[MQTTError]


@dataclass
class MQTTLinkStats:
    """Connection counters of one client (read them for metrics)."""

    connects: int = 0
    reconnects: int = 0
    disconnects: int = 0
    session_losses: int = 0
    redeliveries_skipped: int = 0


def _describe(err: BaseException) -> str:
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


class _Link:
    """A paho client with its network thread, connection logging and counters."""

    def __init__(
        self,
        connection: MQTTConnection,
        client_id: str,
        *,
        protocol: Protocol,
        label: str,
        persistent: bool,
        resume_first: bool,
        session_expiry: int,
        manual_ack: bool,
        stats: MQTTLinkStats,
        on_event: Optional[EventHook],
    ) -> None:
        self.connection = connection
        self.client_id = client_id
        self.label = label
        self.stats = stats
        self.persistent = persistent
        self._resume_first = resume_first
        self._session_expiry = session_expiry
        self._on_event = on_event
        self._v5 = protocol == "5"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self._v5 else not persistent,
            protocol=_PROTOCOLS[protocol],
            manual_ack=manual_ack,
        )
        connection.apply(self.client)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.suppress_exceptions = True
        self.after_connect: Callable[[bool], None] = lambda session_present: None
        self.connected = False
        self.session_gen = 0
        """Incremented when the broker lost our session: older message ids are void."""
        self._ever_connected = False
        self._down_since: Optional[float] = None
        self._closing = False
        self._connack = threading.Event()
        self._refusal: Optional[str] = None

    def _event(self, event: str, detail: str, level: int = logging.INFO) -> None:
        log.log(level, "%s %s (%s)%s", self.label, event, self.connection.address,
                f": {detail}" if detail else "")
        if self._on_event is not None:
            try:
                self._on_event(event, self.client_id, detail)
            except Exception:  # noqa: BLE001 - a metrics hook must not kill the link
                log.exception("on_event hook failed")

    def start(self) -> None:
        """Connect now; raise MQTTConnectError if the broker is unusable."""
        props = None
        kwargs = {}
        if self._v5:
            if self.persistent or not self._resume_first:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self._session_expiry
            kwargs["clean_start"] = False if self._resume_first else paho.MQTT_CLEAN_START_FIRST_ONLY
        where = f"{self.connection.address} as {self.client_id}"
        try:
            self.client.connect(
                self.connection.host,
                self.connection.port,
                keepalive=self.connection.keepalive,
                properties=props,
                **kwargs,
            )
        except (OSError, ValueError, ssl.SSLError) as err:
            raise MQTTConnectError(f"cannot connect to MQTT broker {where}: {_describe(err)}") from None
        self.client.loop_start()
        if not self._connack.wait(self.connection.connect_timeout):
            self.stop()
            raise MQTTConnectError(
                f"cannot connect to MQTT broker {where}: no CONNACK within "
                f"{self.connection.connect_timeout:g}s"
            )
        if self._refusal is not None:
            self.stop()
            raise MQTTConnectError(f"MQTT broker {where} refused the connection: {self._refusal}")

    def stop(self) -> None:
        self._closing = True
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001
            pass
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            if not self._ever_connected:
                self._refusal = str(reason)
                self._connack.set()
            return
        session_present = bool(flags.session_present)
        self.connected = True
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
        try:
            self.after_connect(session_present)
        finally:
            self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if not self.connected:
            if not self._ever_connected and not self._connack.is_set():
                self._refusal = f"connection closed before CONNACK ({reason})"
                self._connack.set()
            return
        self.connected = False
        if self._closing:
            log.debug("%s closed", self.label)
            return
        self.stats.disconnects += 1
        self._down_since = time.monotonic()
        self._event("disconnected", f"{reason}; reconnecting", logging.WARNING)


def check_connection(connection: MQTTConnection, client_id: str) -> None:
    """Connect once and disconnect: raise :class:`MQTTConnectError` if the broker is unusable.

    For a program's start, so a wrong URL or credential is one clear line
    before any partition is built.
    """
    link = _Link(
        connection,
        f"{client_id}-check",
        protocol="3.1.1",
        label="mqtt check",
        persistent=False,
        resume_first=False,
        session_expiry=0,
        manual_ack=False,
        stats=MQTTLinkStats(),
        on_event=None,
    )
    link.start()
    link.stop()


# -- input -------------------------------------------------------------------

_Entry = Tuple[int, int, int]  # (mid, qos, session generation)


class _MQTTSourcePartition(StatefulSourcePartition[Union[MQTTMessage, MQTTError], None]):
    def __init__(self, source: MQTTSource, index: int) -> None:
        self._batch_size = source.batch_size
        self._max_pending = source.max_pending
        self._max_bytes = source.max_message_bytes
        self._v5 = source.protocol == "5"
        self._cond = threading.Condition()
        # Received, not yet emitted: (entry, item).
        self._buffer: deque[Tuple[_Entry, Union[MQTTMessage, MQTTError]]] = deque()
        # Emitted in the current epoch / before the last snapshot.
        self._emitted: List[_Entry] = []
        self._committable: List[_Entry] = []
        # (mid, generation) of every QoS>0 message held and not yet acked,
        # to skip the broker's redeliveries after a reconnect.
        self._held: set[Tuple[int, int]] = set()
        self._closing = False
        self._block_s = min(1.0, max(0.05, source.connection.keepalive / 4))
        client_id = source.client_id_for(index)
        self.stats = source.stats.setdefault(client_id, MQTTLinkStats())
        self._link = _Link(
            source.connection,
            client_id,
            protocol=source.protocol,
            label=f"mqtt input #{index}",
            persistent=True,
            resume_first=True,
            session_expiry=source.session_expiry,
            manual_ack=True,
            stats=self.stats,
            on_event=source.on_event,
        )
        # One session for all topics: the broker queues a disconnected
        # client's messages in one queue, in publish order across topics, so
        # a backlog (after an outage or a restart) comes back interleaved as
        # it was published instead of one topic after the other.
        plain = [(topic, 1) for topic in source.topics]
        shared = [(f"$share/{source.client_id}/{topic}", 1) for topic in source.topics]
        client = self._link.client
        if source.partitions == 1:
            # Plain subscriptions: restored with the session by a restarted
            # broker. Drop shared ones left by a run with more partitions
            # (UNSUBSCRIBE of an unknown filter is harmless).
            def after_connect(session_present: bool) -> None:
                if not session_present:
                    client.subscribe(plain)
                client.unsubscribe([f for f, _ in shared])
        else:
            # Mosquitto 2.0 does not restore shared subscriptions from its
            # persistence file although it reports the session present:
            # subscribe again on every connection (no retained messages
            # are sent for shared subscriptions, so this is harmless).
            def after_connect(session_present: bool) -> None:
                client.unsubscribe([f for f, _ in plain])
                client.subscribe(shared)

        self._link.after_connect = after_connect
        self._link.client.on_message = self._on_message
        self._link.start()

    # Paho's network thread.
    def _on_message(self, client, userdata, msg) -> None:
        gen = self._link.session_gen
        key = (msg.mid, gen)
        with self._cond:
            if msg.qos > 0 and key in self._held:
                self.stats.redeliveries_skipped += 1
                return
            # Stop reading the socket while the buffer is full, waking
            # now and then so paho can keep the connection alive.
            if len(self._buffer) >= self._max_pending and not self._closing:
                self._cond.wait(self._block_s)
            if msg.qos > 0:
                self._held.add(key)
            self._buffer.append(((msg.mid, msg.qos, gen), self._convert(msg)))

    def _convert(self, msg) -> Union[MQTTMessage, MQTTError]:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
            return MQTTError(MQTTMessage(topic, msg.payload), "topic is not UTF-8")
        props: Tuple[Tuple[str, str], ...] = ()
        if self._v5 and msg.properties is not None:
            props = tuple(getattr(msg.properties, "UserProperty", ()) or ())
        message = MQTTMessage(topic, bytes(msg.payload), props)
        size = len(message.payload)
        if self._max_bytes is not None and size > self._max_bytes:
            return MQTTError(message, f"too large: {size} bytes > max {self._max_bytes}")
        return message

    def _ack(self, entries: List[_Entry]) -> List[_Entry]:
        """PUBACK ``entries`` in order; return those that must wait for a connection."""
        if not entries:
            return entries
        if not self._link.connected:
            return entries  # acks queued now would be dropped by paho's reconnect
        gen = self._link.session_gen
        client = self._link.client
        with self._cond:
            for mid, qos, egen in entries:
                if qos > 0:
                    self._held.discard((mid, egen))
        acked = 0
        for mid, qos, egen in entries:
            if qos > 0 and egen == gen:
                client.ack(mid, qos)
                acked += 1
        log.debug("%s acknowledged %d messages", self._link.label, acked)
        return []

    def next_batch(self) -> List[Union[MQTTMessage, MQTTError]]:
        # Called only once the epoch of the last snapshot is committed.
        self._committable = self._ack(self._committable)
        with self._cond:
            n = min(self._batch_size, len(self._buffer))
            if n == 0:
                return []
            taken = [self._buffer.popleft() for _ in range(n)]
            self._cond.notify_all()
        self._emitted.extend(entry for entry, _ in taken)
        return [item for _, item in taken]

    def next_awake(self) -> Optional[datetime]:
        if self._buffer:
            return None
        return datetime.now(timezone.utc) + _IDLE_POLL

    def snapshot(self) -> None:
        # Anything before the previous snapshot is committed by now.
        waiting = self._ack(self._committable)
        self._committable = waiting + self._emitted
        self._emitted = []
        return None

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._link.stop()


class MQTTSource(FixedPartitionedSource[Union[MQTTMessage, MQTTError], None]):
    """QoS 1 subscriptions as a partitioned Bytewax source.

    Emits {py:obj}`MQTTMessage`, or {py:obj}`MQTTError` for a message larger
    than ``max_message_bytes``. See the module documentation for guarantees.
    """

    def __init__(
        self,
        connection: MQTTConnection,
        topics: Iterable[str],
        *,
        client_id: str,
        partitions: int = 1,
        max_pending: int = 10_000,
        batch_size: int = 1000,
        max_message_bytes: Optional[int] = None,
        protocol: Protocol = "3.1.1",
        session_expiry: int = _SESSION_EXPIRY_S,
        on_event: Optional[EventHook] = None,
    ) -> None:
        self.connection = connection
        self.topics = list(topics)
        self.client_id = client_id
        self.partitions = partitions
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.protocol = protocol
        self.session_expiry = session_expiry
        self.on_event = on_event
        self.stats: dict[str, MQTTLinkStats] = {}
        """Counters per client id, filled as partitions start on this process."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", client_id):
            raise ValueError(f"client_id {client_id!r}: use 1 or more of A-Z a-z 0-9 _ -")
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: use '3.1.1' or '5'")
        if partitions < 1 or max_pending < 1 or batch_size < 1:
            raise ValueError("partitions, max_pending and batch_size must be >= 1")
        if not self.topics:
            raise ValueError("no topics")
        for topic in self.topics:
            if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
                raise ValueError(f"topic {topic!r}: give a plain topic name (no wildcards, not $...)")

    def client_id_for(self, index: int) -> str:
        """Stable client id of partition ``index``."""
        return f"{self.client_id}-in-{index}"

    def list_parts(self) -> List[str]:
        return [f"in-{i}" for i in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _MQTTSourcePartition:
        return _MQTTSourcePartition(self, int(for_part.removeprefix("in-")))


@operator
def _split(
    step_id: str, up: Stream[Union[MQTTMessage, MQTTError]]
) -> MQTTSourceOut:
    branch = op.branch("branch", up, lambda x: isinstance(x, MQTTMessage))
    return MQTTSourceOut(branch.trues, branch.falses)  # type: ignore[arg-type]


@operator
def input(  # noqa: A001
    step_id: str,
    flow: Dataflow,
    *,
    connection: MQTTConnection,
    topics: List[str],
    client_id: str,
    partitions: int = 1,
    max_message_bytes: Optional[int] = None,
    max_pending: int = 10_000,
    batch_size: int = 1000,
    protocol: Protocol = "3.1.1",
    on_event: Optional[EventHook] = None,
) -> MQTTSourceOut:
    """Subscribe to ``topics``: ``oks`` are messages, ``errs`` oversized ones.

    A bad message never stops the flow: it comes out on ``errs``.
    """
    source = MQTTSource(
        connection,
        topics,
        client_id=client_id,
        partitions=partitions,
        max_pending=max_pending,
        batch_size=batch_size,
        max_message_bytes=max_message_bytes,
        protocol=protocol,
        on_event=on_event,
    )
    return op.input("mqtt_input", flow, source).then(_split, "split")


# -- output ------------------------------------------------------------------


class _MQTTSinkPartition(StatefulSinkPartition[MQTTMessage, None]):
    def __init__(self, sink: MQTTSink, index: int) -> None:
        self._timeout = sink.timeout
        self._chunk = sink.max_inflight
        self._on_written = sink.on_written
        self._cond = threading.Condition()
        self._acked: dict[int, object] = {}
        client_id = f"{sink.client_id}-out-{index}"
        self.stats = sink.stats.setdefault(client_id, MQTTLinkStats())
        self._link = self._open(sink, client_id, index)
        self._v5 = self._link.client.protocol == paho.MQTTv5

    def _open(self, sink: MQTTSink, client_id: str, index: int) -> _Link:
        """Connect with MQTT 5, waiting up to ``sink.timeout`` for a broker that is down.

        Bytewax builds sink partitions at the first output, which may come
        during a broker outage: wait for it as a write would. A broker without
        MQTT 5 (e.g. the demo's embedded amqtt) drops or refuses the v5
        CONNECT: publish with 3.1.1 then; everything arrives, but user
        properties (the rejected messages' reason) cannot.
        """
        label = f"mqtt output #{index}"
        deadline = time.monotonic() + sink.timeout
        delay = 0.5
        while True:
            try:
                return self._connect(sink, client_id, index, "5")
            except MQTTConnectError as err:
                reason = str(err)
            if "CONNACK" in reason or "protocol" in reason.lower():
                try:
                    link = self._connect(sink, client_id, index, "3.1.1")
                except MQTTConnectError as err:
                    reason = str(err)
                else:
                    log.warning("%s: the broker does not speak MQTT 5; publishing with 3.1.1, "
                                "so user properties (reason, detail) are dropped", label)
                    return link
            # Credentials or authorization: waiting cannot help.
            if "refused the connection" in reason or time.monotonic() + delay > deadline:
                raise MQTTConnectError(reason)
            log.warning("%s: %s; retrying in %.1fs", label, reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _connect(self, sink: MQTTSink, client_id: str, index: int, protocol: Protocol) -> _Link:
        link = _Link(
            sink.connection,
            client_id,
            protocol=protocol,
            label=f"mqtt output #{index}",
            persistent=False,
            resume_first=False,
            session_expiry=sink.session_expiry,
            manual_ack=False,
            stats=self.stats,
            on_event=sink.on_event,
        )
        client = link.client
        client.max_inflight_messages_set(sink.max_inflight)
        client.max_queued_messages_set(0)
        client.on_publish = self._on_publish
        link.start()
        return link

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._cond:
            self._acked[mid] = reason
            self._cond.notify_all()

    def write_batch(self, values: List[MQTTMessage]) -> None:
        started = time.monotonic()
        deadline = started + self._timeout
        for start in range(0, len(values), self._chunk):
            self._publish_chunk(values[start : start + self._chunk], deadline)
        if self._on_written is not None:
            self._on_written(values, time.monotonic() - started)

    def _publish_chunk(self, items: List[MQTTMessage], deadline: float) -> None:
        client = self._link.client
        mids = {}
        for item in items:
            props = None
            if item.user_properties and self._v5:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [tuple(kv) for kv in item.user_properties]
            info = client.publish(item.topic, item.payload, qos=1, properties=props)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                raise MQTTPublishError(
                    f"cannot publish to {item.topic!r} on {self._link.connection.address}: "
                    f"{paho.error_string(info.rc)}"
                )
            mids[info.mid] = item.topic
        with self._cond:
            while True:
                done = [mid for mid in mids if mid in self._acked]
                for mid in done:
                    reason = self._acked.pop(mid)
                    topic = mids.pop(mid)
                    if getattr(reason, "is_failure", False):
                        raise MQTTPublishError(
                            f"broker {self._link.connection.address} refused a message "
                            f"for {topic!r}: {reason}"
                        )
                if not mids:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MQTTPublishError(
                        f"{len(mids)} messages not acknowledged by "
                        f"{self._link.connection.address} within {self._timeout:g}s"
                    )
                self._cond.wait(min(left, 1.0))

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._link.stop()


class MQTTSink(FixedPartitionedSink[MQTTMessage, None]):
    """Publish ``(key, MQTTMessage)`` items with QoS 1, MQTT 5.

    The key picks the partition (``zlib.adler32``), so items with the same
    key keep their order. ``write_batch`` returns once all are PUBACKed.
    """

    def __init__(
        self,
        connection: MQTTConnection,
        *,
        client_id: str,
        partitions: int = 1,
        timeout: float = 120.0,
        max_inflight: int = 1000,
        session_expiry: int = 300,
        on_event: Optional[EventHook] = None,
        on_written: Optional[Callable[[List[MQTTMessage], float], None]] = None,
    ) -> None:
        """``on_written(messages, seconds)`` is called after each acknowledged batch."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", client_id):
            raise ValueError(f"client_id {client_id!r}: use 1 or more of A-Z a-z 0-9 _ -")
        if partitions < 1 or max_inflight < 1 or timeout <= 0:
            raise ValueError("partitions, max_inflight and timeout must be > 0")
        self.connection = connection
        self.client_id = client_id
        self.partitions = partitions
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.session_expiry = session_expiry
        self.on_event = on_event
        self.on_written = on_written
        self.stats: dict[str, MQTTLinkStats] = {}

    def list_parts(self) -> List[str]:
        return [str(i) for i in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _MQTTSinkPartition:
        return _MQTTSinkPartition(self, int(for_part))


@operator
def output(
    step_id: str,
    up: Stream[MQTTMessage],
    *,
    connection: MQTTConnection,
    client_id: str,
    partitions: int = 1,
    timeout: float = 120.0,
    on_event: Optional[EventHook] = None,
) -> None:
    """Publish each {py:obj}`MQTTMessage` with QoS 1, keyed by topic."""
    keyed = op.key_on("key_on_topic", up, lambda m: m.topic)
    sink = MQTTSink(
        connection, client_id=client_id, partitions=partitions, timeout=timeout, on_event=on_event
    )
    return op.output("mqtt_output", keyed, sink)
