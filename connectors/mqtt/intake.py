"""An input partition's messages from paho's network thread to the dataflow, and their PUBACKs after the commit.

A message the partition takes (:mod:`.ownership`) is PUBACKed only once Bytewax has committed the epoch it
was emitted in: emitted in one epoch, *committable* at its snapshot, and
acknowledged at the next call (Bytewax calls the partition again only once
that epoch is committed). See docs/delivery.md, "Input: acknowledged after
the commit". At most ``max_unacked`` messages are held unacknowledged: with
MQTT 5 the broker keeps to it (the Receive Maximum); with 3.1.1 paho's
network thread stops reading the socket at the bound (TCP pushes back),
waking every ``block_s`` to take one message so keepalive pings still flow.
A broker may reuse a packet id still held here (mosquitto 2.0.11 past its
first window), so a message is skipped as a redelivery only when it is
marked DUP and its id is held.

Its condition guards the buffer and the held ids, shared by paho's network
thread (:meth:`Intake.is_redelivery`, :meth:`Intake.receive`) and the
worker (the rest).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from .link import Link, MQTTLinkStats
from .message import MQTTError, MQTTMessage

log = logging.getLogger("connectors.mqtt")

Entry = tuple[int, int, int]
"""What acknowledging a message takes: (packet id, qos, the session generation it came in)."""

PROBE: Entry = (0, -1, -1)
"""The entry of a returned idle probe in the buffer (never acknowledged, never emitted)."""


class Intake:
    """Received messages waiting for the dataflow, and those taken and not yet acknowledged."""

    def __init__(self, index: int, max_unacked: int, max_bytes: int | None, block_s: float,
                 stats: MQTTLinkStats) -> None:
        self._index, self.stats = index, stats
        self._max_unacked, self.block_s = max_unacked, block_s
        self._max_bytes = max_bytes
        self.v5 = False
        """Whether messages may carry user properties (set once connected)."""
        self._cond = threading.Condition()
        self._buffer: deque[tuple[Entry, MQTTMessage | MQTTError | float]] = deque()  # received, not emitted
        # (mid, generation) -> how many QoS>0 messages with it are held (a
        # broker may reuse an id while it is in flight). A dict, not a
        # Counter: Counter's methods are Python.
        self.held: dict[tuple[int, int], int] = {}
        self.unacked = 0  # the sum of held
        self._emitted: list[Entry] = []  # in the current epoch
        self.committable: list[Entry] = []  # before the last snapshot
        self._closing = False

    # Paho's network thread.
    def is_redelivery(self, msg, gen: int) -> bool:
        """Whether ``msg`` is a DUP copy of a message still held (skipped, counted)."""
        if not (msg.dup and msg.qos > 0):
            return False
        with self._cond:
            if (msg.mid, gen) in self.held:
                self.stats.redeliveries_skipped += 1
                return True
        return False

    def receive(self, msg, gen: int) -> None:
        """Take ``msg`` for the dataflow; at the bound, wait (3.1.1: the broker is not held to it)."""
        item = self._convert(msg)
        with self._cond:
            if self.unacked >= self._max_unacked and not self._closing:
                self._cond.wait(self.block_s)
            if msg.qos > 0:
                key = (msg.mid, gen)
                self.held[key] = self.held.get(key, 0) + 1
                self.unacked += 1
            self._buffer.append(((msg.mid, msg.qos, gen), item))

    def probe_returned(self, sent: float) -> None:
        """An idle probe sent at ``sent`` came back: everything before it in the buffer was read before."""
        with self._cond:
            self._buffer.append((PROBE, sent))

    def _convert(self, msg) -> MQTTMessage | MQTTError:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
            return MQTTError(MQTTMessage(topic, msg.payload, (), self._index), "topic is not UTF-8")
        props: tuple[tuple[str, str], ...] = ()
        if self.v5 and msg.properties is not None:
            props = tuple(getattr(msg.properties, "UserProperty", ()) or ())
        message = MQTTMessage(topic, bytes(msg.payload), props, self._index)
        size = len(message.payload)
        if self._max_bytes is not None and size > self._max_bytes:
            return MQTTError(message, f"too large: {size} bytes > max {self._max_bytes}")
        return message

    # The worker.
    def pop(self, n: int) -> list[tuple[Entry, MQTTMessage | MQTTError | float]]:
        """Up to ``n`` buffered entries, in order (the caller tells which it emitted: :meth:`emitted`)."""
        with self._cond:
            self.stats.last_call = time.monotonic()
            self.stats.buffered = len(self._buffer)
            self.stats.unacked = self.unacked
            n = min(n, len(self._buffer))
            if n == 0:
                return []
            batch = [self._buffer.popleft() for _ in range(n)]
            self._cond.notify_all()
        return batch

    def emitted(self, entries: list[Entry]) -> None:
        self._emitted.extend(entries)

    def has_buffered(self) -> bool:
        return bool(self._buffer)

    def settled(self) -> bool:
        """Whether every message taken is acknowledged and none waits."""
        return not self.unacked and not self._buffer and not self.committable

    def ack_committed(self, link: Link | None) -> None:
        """The epoch of the last snapshot is committed: acknowledge what it emitted."""
        self.committable = self._ack(link, self.committable)

    def seal(self, link: Link | None) -> None:
        """The epoch ends (the snapshot): what it emitted is acknowledged once it is committed."""
        waiting = self._ack(link, self.committable)  # anything before the previous snapshot is committed by now
        self.committable = waiting + self._emitted
        self._emitted = []

    def _ack(self, link: Link | None, entries: list[Entry]) -> list[Entry]:
        """PUBACK ``entries`` in order; return those that must wait for a connection."""
        if not entries or link is None:
            return []
        if not link.connected:
            return entries  # acks queued now would be dropped by paho's reconnect
        gen = link.session_gen
        with self._cond:
            held = self.held
            for mid, qos, egen in entries:
                if qos == 0:
                    continue
                key = (mid, egen)
                self.unacked -= 1
                count = held.pop(key, 0)
                if count > 1:
                    held[key] = count - 1
        # One packet of PUBACKs: paho's network thread is woken once.
        acked = link.client.ack_all((mid, qos) for mid, qos, egen in entries if egen == gen)
        log.debug("%s acknowledged %d messages", link.label, acked)
        return []

    def close(self) -> None:
        """Stop waiting at the bound: the partition closes."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
