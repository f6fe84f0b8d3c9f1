"""One input partition: its session and subscriptions, and its batches.

Partition ``in-<i>`` is one client with its own persistent session, for all
of its topics: the broker queues a disconnected client's messages in one
queue, so a backlog comes back interleaved as it was published. What it
takes (:class:`~.ownership.Ownership`), how messages reach the dataflow and
are acknowledged (:class:`~.intake.Intake`) and its watermark
(:class:`~.watermarks.PartitionWatermark`) are parts of their own; this
routes paho's messages to them and answers Bytewax. ``next_batch`` never
blocks. Each part guards what its threads share; this class keeps nothing
both threads write.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING

from bytewax.inputs import StatefulSourcePartition

from .connection import MQTTConnectError, Protocol, connect_preferring_v5
from .intake import PROBE, Intake
from .epochs import EpochSchedule
from .link import Link, MQTTLinkStats
from .message import MQTTError, MQTTMessage
from .names import PARTITIONS, input_key, input_level
from .ownership import Ownership, delete_session, read_markers
from .watermarks import PartitionWatermark

if TYPE_CHECKING:
    from .source import MQTTSource

log = logging.getLogger("connectors.mqtt")


class _MQTTSourcePartition(StatefulSourcePartition[MQTTMessage | MQTTError, None]):
    """Partition ``in-<index>``: its own session (``index < partitions``), or one left to drain."""

    def __init__(self, source: MQTTSource, index: int, start_watermark: float | None = None) -> None:
        self._source = source
        self._index = index
        self._schedule = EpochSchedule(source.epoch_interval)
        self._batch_size = source.batch_size
        client_id = source.client_id_for(index)
        # Before this partition says anything: its own marker names the count(s) its session ran under.
        marker = read_markers(source.connection, source.client_id, label=client_id).get(index)
        self._owner = Ownership(source, index, marker)
        drain = self._owner.drain
        self.stats = MQTTLinkStats() if drain else source.stats.setdefault(client_id, MQTTLinkStats())
        block_s = min(1.0, max(0.05, source.connection.keepalive / 4))
        self._intake = Intake(index, source.max_unacked, source.max_message_bytes, block_s, self.stats)
        self._watermark: PartitionWatermark | None = None
        if source.newest_position is not None:  # from its own retained watermark: downtime does not count
            self._watermark = PartitionWatermark(source.client_id, index, start_watermark, source.newest_position,
                                                 source.probe_interval)
        self._markers_b = (input_level(PARTITIONS, source.client_id) + "/").encode()
        self._probe_b = b"" if self._watermark is None else self._watermark.probe_topic.encode()
        # Plain-topic traffic does not scale out: said once, where it matters.
        self._plain_unwarned = index == 0 and source.partitions > 1 and source.shards > 0
        self._done = False  # a drained session is deleted: end of input
        self._subscribed = threading.Event()
        self._link: Link | None = None
        if drain and (marker is None or marker.retired):
            # Drained already (possibly deleted already): make sure, and end.
            delete_session(source.connection, client_id)
            self._done = True
            return
        self._link, protocol = connect_preferring_v5(lambda p: self._open(client_id, p), source.protocol)
        if protocol == "5":
            self.stats.inflight_cap = source.max_unacked
        if not self._subscribed.wait(source.connection.connect_timeout):
            log.warning("%s: no SUBACK within %gs", self._link.label, source.connection.connect_timeout)

    def _open(self, client_id: str, protocol: Protocol) -> Link:
        source, drain = self._source, self._owner.drain
        link = Link(
            source.connection,
            client_id,
            protocol=protocol,
            label=f"mqtt drain in-{self._index}" if drain else f"mqtt input #{self._index}",
            partition=input_key(self._index),
            persistent=True,
            resume_first=True,
            session_expiry=source.session_expiry,
            # The broker then never has more unacknowledged deliveries for
            # us than this, however long the commit takes: packet ids are
            # never reused while in flight, and a broker's own in-flight
            # limit (mosquitto: 20 by default) does not throttle.
            receive_maximum=source.max_unacked,
            manual_ack=True,
            batch_read=True,
            stats=self.stats,
            on_event=None if drain else source.on_event,
        )
        link.after_connect = lambda session_present: self._subscribe(link, session_present)
        link.client.on_subscribe = lambda *_: self._on_suback(link)
        link.client.on_message = self._on_message
        # Before start: a resumed session's messages come at once.
        self._link, self._intake.v5 = link, protocol == "5"
        link.start()
        return link

    # Paho's network thread.
    def _subscribe(self, link: Link, session_present: bool) -> None:
        """Subscribe on every connection: a resumed session keeps its subscriptions, a new count adds shards.

        The partition markers (and the probes) too, so the retained markers
        come each time, in this session's stream.
        """
        control = [(input_level(PARTITIONS, self._source.client_id) + "/+", 1)]
        if self._watermark is not None:
            control.append((self._watermark.probe_topic, 1))
        data = [(topic, 1) for topic in self._owner.connected(session_present)]
        link.client.subscribe(data + control)
        if session_present:
            # Subscribed already; the SUBACK may wait behind the backlog
            # (with 3.1.1, behind max_unacked messages not yet committed).
            self._subscribed.set()

    def _on_suback(self, link: Link) -> None:
        if not self._owner.drain:
            self._owner.publish_marker(link)
        log.info("%s subscribed to %d topics", link.label, self._owner.subscribed() * len(self._source.topics),
                 extra={"partition": input_key(self._index), "client_id": link.client_id})
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        topic = msg._topic
        if topic.startswith(self._markers_b) or topic == self._probe_b:
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            if topic == self._probe_b:
                sent = self._watermark.probe_returned(msg.payload)
                if sent is not None:
                    self._intake.probe_returned(sent)
            else:
                self._owner.on_marker(self._link, topic.decode("utf-8", "replace"), msg.payload)
            return
        gen = self._link.session_gen
        if self._intake.is_redelivery(msg, gen):
            return
        if self._plain_unwarned and self._source.shard_of_topic.get(topic) is None:
            self._plain_unwarned = False
            log.warning("%s: messages on the plain topics (%s) are all read by partition in-0; publish on "
                        "<topic>/<shard> to spread them over the %d partitions", self._link.label,
                        topic.decode("utf-8", "replace"), self._source.partitions)
        if not self._owner.takes(topic):
            # Another partition takes it, from its own copy: done with ours.
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            self.stats.passed_on += 1
            return
        self._intake.receive(msg, gen)
        if self._watermark is not None:
            self._watermark.clock.data_read()

    # The worker.
    def next_batch(self) -> list[MQTTMessage | MQTTError]:
        self._schedule.activated()
        # Called only once the epoch of the last snapshot is committed.
        self._intake.ack_committed(self._link)
        if self._watermark is not None:
            self._watermark.tend(self._link)
        if self._owner.drain:
            if self._done:
                raise StopIteration  # Bytewax discards this partition's recovery state
            if self._owner.over and self._intake.settled():
                self._finish_drain()
        batch = self._intake.pop(self._batch_size)
        self._schedule.took(len(batch))
        if self._watermark is None:
            self._intake.emitted([entry for entry, _ in batch])
            return [item for _, item in batch]
        entries, items = [], []
        for entry, item in batch:
            if entry is PROBE:
                self._watermark.clock.idle_emitted(item)  # everything before it is emitted
            else:
                entries.append(entry)
                items.append(item)
        self._intake.emitted(entries)
        self._watermark.emitted(items, time.monotonic())
        return items

    def _finish_drain(self) -> None:
        """Retire the marker, delete the drained session (what it took is all acknowledged)."""
        link = self._link
        try:
            self._owner.retire(link)
            if self._watermark is not None:
                self._watermark.finish(link)
            link.stop()
            delete_session(self._source.connection, link.client_id)
            log.info("%s: drained; session deleted", link.label)
        except (MQTTConnectError, RuntimeError, ValueError) as err:
            link.stop()
            log.warning("%s: could not delete the drained session (%s); the next start will", link.label, err)
        self._done = True

    def has_buffered(self) -> bool:
        """Whether messages wait for the next ``next_batch``."""
        return self._intake.has_buffered()

    def next_awake(self) -> datetime | None:
        return self._schedule.next_awake(self._intake.has_buffered())

    def snapshot(self) -> None:
        self._schedule.epoch_moved()
        self._intake.seal(self._link)
        if self._watermark is not None:
            self._watermark.tend(self._link)
            self._watermark.clock.seal()

    def close(self) -> None:
        self._intake.close()
        if self._link is not None:
            self._link.stop()
