"""Publishing with QoS 1 as a partitioned Bytewax sink: a batch is written once PUBACKed.

Each partition is one client, ``<client_id>-out-<i>``, QoS 1, no retain; it
speaks MQTT 5 (so user properties go out) and falls back to MQTT 3.1.1 for a
broker without MQTT 5, which then drops user properties. ``write_batch``
returns only once the broker acknowledged every message of the batch; if the
connection drops, paho re-sends the unacknowledged ones after reconnecting
and the batch keeps waiting: by default as long as the broker is away
(logging the wait after 10 s and then every minute), or up to ``timeout``
seconds, then raises :class:`MQTTPublishError`. Being a
``FixedPartitionedSink`` matters for recovery: its snapshot is taken after
its writes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional

import paho.mqtt.client as paho
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .connection import MQTTConnection, MQTTConnectError, MQTTPublishError, Protocol, connect_preferring_v5
from .link import EventHook, Link, MQTTLinkStats
from .message import MQTTMessage
from .source import check_client_id

log = logging.getLogger("connectors.mqtt")


class _MQTTSinkPartition(StatefulSinkPartition[MQTTMessage, None]):
    def __init__(self, sink: MQTTSink, index: int) -> None:
        self._timeout = sink.timeout
        self._chunk = sink.max_inflight
        self._on_written = sink.on_written
        self._cond = threading.Condition()
        self._acked: dict[int, object] = {}
        self._waiting_since: Optional[float] = None
        self._next_wait_log = 0.0
        client_id = f"{sink.client_id}-out-{index}"
        self.stats = sink.stats.setdefault(client_id, MQTTLinkStats())
        self._link = self._open(sink, client_id, index)
        self._v5 = self._link.client.protocol == paho.MQTTv5

    def _open(self, sink: MQTTSink, client_id: str, index: int) -> Link:
        """Connect, waiting up to ``sink.timeout`` for a broker that is down.

        Bytewax builds sink partitions at the first output, which may come
        during a broker outage: wait for it as a write would.
        """
        label = f"mqtt output #{index}"
        deadline = time.monotonic() + (sink.timeout if sink.timeout is not None else float("inf"))
        delay = 0.5
        while True:
            try:
                link, protocol = connect_preferring_v5(lambda p: self._connect(sink, client_id, index, p))
            except MQTTConnectError as err:
                # Credentials or authorization: waiting cannot help.
                if err.refused or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: %s; retrying in %.1fs", label, err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if protocol != "5":
                log.warning("%s: the broker does not speak MQTT 5; publishing with 3.1.1, "
                            "so user properties (reason, detail) are dropped", label)
            return link

    def _connect(self, sink: MQTTSink, client_id: str, index: int, protocol: Protocol) -> Link:
        # A fresh session each time: nothing is left to receive.
        link = Link(sink.connection, client_id, protocol=protocol, label=f"mqtt output #{index}",
                    partition=f"out-{index}", session_expiry=sink.session_expiry, stats=self.stats,
                    on_event=sink.on_event)
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
        started = self.stats.last_call = time.monotonic()
        deadline = started + (self._timeout if self._timeout is not None else float("inf"))
        self.stats.pending = len(values)
        for start in range(0, len(values), self._chunk):
            self._publish_chunk(values[start : start + self._chunk], deadline)
            self.stats.pending = max(0, len(values) - start - self._chunk)
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
                    self._waiting_since = None
                    return
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    raise MQTTPublishError(
                        f"{len(mids)} messages not acknowledged by "
                        f"{self._link.connection.address} within {self._timeout:g}s"
                    )
                self._log_wait(len(mids), now)
                self._cond.wait(min(left, 1.0))

    def _log_wait(self, pending: int, now: float) -> None:
        """One line after 10 s without the PUBACKs a batch waits for, then one a minute."""
        if self._waiting_since is None:
            self._waiting_since, self._next_wait_log = now, now + 10.0
        elif now >= self._next_wait_log:
            self._next_wait_log = now + 60.0
            state = "connected" if self._link.connected else "disconnected"
            log.warning("%s: %d messages waiting %.0fs for the broker's acknowledgement (%s); waiting on",
                        self._link.label, pending, now - self._waiting_since, state,
                        extra={"partition": self._link.label, "state": state})

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._link.stop()


class MQTTSink(FixedPartitionedSink[MQTTMessage, None]):
    """Publish ``(key, MQTTMessage)`` items with QoS 1: MQTT 5, or 3.1.1 where the broker lacks 5.

    The key picks the partition (``zlib.adler32``), so items with the same
    key keep their order. ``write_batch`` returns once all are PUBACKed; a
    PUBACK with a failure reason (e.g. not authorized) raises
    :class:`MQTTPublishError`. The payload is sent as given, user properties
    in the given order: the same item gives the same bytes.

    Args:
        connection: The broker.
        client_id: Partition ``i`` is client ``<client_id>-out-<i>``.
        partitions: Number of partitions (clients).
        timeout: Seconds a batch (and the first connection) may wait for the
            broker; ``None`` (default): as long as it takes. Waiting is what
            the guarantee needs: the dataflow stops at the sink (its input
            too, by backpressure) and nothing is lost or repeated.
        max_inflight: Messages published before waiting for their PUBACKs.
        session_expiry: MQTT 5 session expiry interval, seconds.
        on_event: ``on_event(event, client_id, detail)`` on each change of
            connection state.
        on_written: ``on_written(messages, seconds)`` after each acknowledged batch.
    """

    def __init__(
        self,
        connection: MQTTConnection,
        *,
        client_id: str,
        partitions: int = 1,
        timeout: Optional[float] = None,
        max_inflight: int = 1000,
        session_expiry: int = 300,
        on_event: Optional[EventHook] = None,
        on_written: Optional[Callable[[List[MQTTMessage], float], None]] = None,
    ) -> None:
        check_client_id(client_id)
        if partitions < 1 or max_inflight < 1 or (timeout is not None and timeout <= 0):
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
