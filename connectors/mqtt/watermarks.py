"""How far each input partition has read, in the stream's own time, as far as the whole dataflow has processed.

A source built with a ``newest_position`` function (:class:`~.source.MQTTSource`)
gives every batch of data messages a *position*, the newest time in Unix
seconds the messages themselves carry (driver-stats: the event time). Each
partition keeps a *watermark*: the newest position it has emitted, published
(retained, QoS 1, on :func:`.names.input_topic`) only once the epoch
that emitted it is committed, the acknowledgements' gate, so everything the
partition emitted before it has been processed by the whole dataflow.
:class:`WatermarkBoard` reads them all; the lowest over the listed
partitions is the dataflow's low watermark.

Positions come from the stream only, so a backlog is read at its own pace
and the watermark follows it. An idle stream still moves: a partition that
is *caught up and idle* advances by the time elapsed since it last read. It
finds out with *probes*: every ``probe_interval`` it publishes a QoS 1
message to its own :func:`.names.input_topic`, which the broker queues
behind everything already queued for its session. A probe counts as idle
(:meth:`PartitionClock.probe_returned`) only if no data came between
sending and receiving it and it, and the probe before it, came back within
:data:`FAST_ROUND_TRIP` seconds. Times are ``time.monotonic()``: a step of
the host's wall clock moves no watermark.

A partition that has read nothing has no watermark and holds the stream
back (``-inf``), since it may be about to deliver a backlog, until its
probes show it caught up and idle: then it says so each epoch
(:data:`NOTHING_READ`, not retained, so nothing of it outlives the run) and
:meth:`WatermarkBoard.of` leaves it out until it reads something. See
docs/event-time.md.

>>> clock = PartitionClock(restored=None, now=100.0)
>>> clock.idle_emitted(sent=110.0); clock.seal(); clock.release() is None   # read nothing: no watermark
True
>>> clock.release_nothing_read()                                             # ... but idle: say so
True
>>> clock.emitted(newest=52.0, now=101.0)
>>> clock.seal(); clock.release()       # not committed yet / committed
52.0
>>> clock.release() is None             # unchanged: nothing to publish
True
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from .connection import MQTTConnection
from .limits import MAX_WATERMARK_BYTES
from .link import Link
from .message import MQTTMessage
from .names import (
    PROBES,
    WATERMARKS,
    barrier_topic,
    index_of,
    input_level,
    input_topic,
    reader_client_id,
)
from .retained import load_json, read_retained

log = logging.getLogger("connectors.mqtt")

FAST_ROUND_TRIP = 1.0
"""Seconds within which a probe must come back to count as idle (the broker answers at once)."""
PROBE_TIMEOUT = 30.0
"""A probe not back by then is sent again (the broker may have lost it with the session)."""
DONE = math.inf
"""The watermark of a partition that has ended (a drained session): it holds nothing back."""
NOTHING_READ = b'{"idle":true}'
"""Published (not retained) by a partition that has read nothing and is caught up and idle: leave it out."""


def encode_watermark(value: float) -> bytes:
    """``{"watermark": value}``, or ``{"done": true}`` for :data:`DONE`."""
    return b'{"done":true}' if value == DONE else json.dumps({"watermark": value}).encode()


def decode_watermark(payload: bytes) -> float | None:
    """The watermark in ``payload``; None for anything else (no crash, whatever the bytes).

    >>> [decode_watermark(p) for p in (encode_watermark(5.5), encode_watermark(DONE))]
    [5.5, inf]
    >>> [decode_watermark(p) for p in (b"", b"{", b'{"watermark":1e400}', b'{"watermark":"5"}', b"\\xff")]
    [None, None, None, None, None]
    """
    if not payload:
        return None
    try:
        body = load_json(payload, MAX_WATERMARK_BYTES)
        if body.get("done") is True:
            return DONE
        value = body["watermark"]
        if type(value) not in (int, float) or not math.isfinite(value):
            return None
        return float(value)
    except Exception:  # noqa: BLE001 - whatever is on the topic: no watermark
        return None


class PartitionClock:
    """One partition's watermark: positions emitted, idle probes, and the epoch gate.

    Called from the worker thread (:meth:`emitted`, :meth:`seal`,
    :meth:`release`, :meth:`probe_due`) and from paho's network thread
    (:meth:`data_read`, :meth:`probe_returned`); the values they share are
    single values, each written by one side.

    ``restored``: the partition's last published watermark (from an earlier
    run), which it starts from; the time spent down does not count. ``now``
    and every other time it is given are ``time.monotonic()`` seconds.
    """

    def __init__(self, restored: float | None, now: float, probe_interval: float | None = 1.0) -> None:
        self.probe_interval = probe_interval
        self._position = -math.inf if restored is None or restored == DONE else restored
        # When (monotonic) the stream was last known to be at _position.
        self._position_wall = now
        self._has_position = restored is not None and restored != DONE
        self._epoch = -math.inf  # newest value emitted in the current epoch
        self._idle_unread = False  # an idle probe emitted in the current epoch, nothing ever read
        self._idle_unread_sealed = False
        self._sealed = -math.inf  # emitted before the last snapshot: publishable once committed
        self._published = -math.inf
        self._data_since_probe = False  # paho received data since the probe in flight was sent
        self._probe_sent: float | None = None  # the probe in flight
        self._probe_back = -math.inf  # when the last probe came back
        self._last_fast = False

    # Worker thread.
    def emitted(self, newest: float | None, now: float) -> None:
        """Data emitted in this epoch, the newest position among it (None: none known)."""
        if newest is not None and newest > self._position:
            self._position, self._position_wall, self._has_position = newest, now, True
        self._epoch = max(self._epoch, self._position)

    def idle_emitted(self, sent: float) -> None:
        """An idle probe sent at ``sent`` was emitted (it came after everything before it).

        A partition that has read nothing stays without a watermark: the
        wall clock alone never moves the stream.
        """
        if self._has_position:
            self._epoch = max(self._epoch, self._position + max(0.0, sent - self._position_wall))
        else:
            self._idle_unread = True

    def seal(self) -> None:
        """The epoch ended (snapshot): what it emitted becomes publishable once committed."""
        self._sealed = max(self._sealed, self._epoch)
        self._idle_unread_sealed = self._idle_unread and not self._has_position
        self._idle_unread = False

    def release_nothing_read(self) -> bool:
        """Whether to say :data:`NOTHING_READ` now: an epoch sealed before showed it idle, having read nothing."""
        idle, self._idle_unread_sealed = self._idle_unread_sealed and not self._has_position, False
        return idle

    def release(self) -> float | None:
        """The watermark to publish now (the epochs sealed before are committed), if it moved."""
        if self._sealed > self._published:
            self._published = self._sealed
            return self._sealed
        return None

    def probe_due(self, now: float) -> bool:
        """Whether to send a probe now (none in flight, or one lost); the caller then sends it at ``now``."""
        if self.probe_interval is None:  # no probes: never idle (a broker without cross-topic order)
            return False
        if self._probe_sent is not None and now - self._probe_sent < PROBE_TIMEOUT:
            return False
        if now - self._probe_back < self.probe_interval:
            return False
        self._probe_sent, self._data_since_probe = now, False
        return True

    # Paho's network thread.
    def data_read(self) -> None:
        self._data_since_probe = True

    def probe_returned(self, sent: float, now: float) -> bool:
        """A probe sent at ``sent`` came back at ``now``: whether it shows the partition idle and caught up."""
        if sent == self._probe_sent:
            self._probe_sent = None
        self._probe_back = now
        fast = 0.0 <= now - sent <= FAST_ROUND_TRIP
        idle = fast and self._last_fast and not self._data_since_probe
        self._last_fast = fast
        return idle


class PartitionWatermark:
    """One input partition's watermark on the broker: published as its epochs commit, and its probes.

    Probes carry a token of this process: a probe of an earlier run, left
    in the session, was timed on another monotonic clock.
    """

    def __init__(self, client_id: str, index: int, restored: float | None,
                 newest_position: Callable[[list[MQTTMessage]], float | None], probe_interval: float | None) -> None:
        self.clock = PartitionClock(restored, time.monotonic(), probe_interval)
        self._newest_position = newest_position
        self._topic = input_topic(WATERMARKS, client_id, index)
        self.probe_topic = input_topic(PROBES, client_id, index)
        self._token = uuid.uuid4().hex[:12]

    def emitted(self, messages: list[MQTTMessage | object], now: float) -> None:
        """The worker emitted these items (their newest position moves the partition on)."""
        self.clock.emitted(self._newest_position([m for m in messages if type(m) is MQTTMessage]), now)

    def probe_returned(self, payload: bytes) -> float | None:
        """Our probe came back (paho's network thread): when it was sent, if it shows the partition idle."""
        token, _, sent_text = payload.decode("ascii", "replace").partition(" ")
        try:
            sent = float(sent_text)
        except ValueError:
            return None  # not ours (the ACL should keep others off this topic)
        if token != self._token or not self.clock.probe_returned(sent, time.monotonic()):
            return None
        return sent

    def tend(self, link: Link | None) -> None:
        """Publish the watermark of the committed epochs; send a probe when one is due."""
        if link is None or not link.connected:
            return
        clock, client = self.clock, link.client
        value = clock.release()
        if value is not None:
            client.publish(self._topic, encode_watermark(value), qos=1, retain=True)
        elif clock.release_nothing_read():  # not retained: a restarted run proves it again
            client.publish(self._topic, NOTHING_READ, qos=1)
        now = time.monotonic()
        if clock.probe_due(now):
            client.publish(self.probe_topic, f"{self._token} {now!r}".encode(), qos=1)

    def finish(self, link: Link) -> None:
        """The partition ended (a drained session): it holds nothing back any more."""
        link.client.publish(self._topic, encode_watermark(DONE), qos=1, retain=True).wait_for_publish(5)


class WatermarkBoard:
    """The watermarks of ``client_id``'s input partitions, kept up to date by a client of its own.

    :meth:`start` returns once the retained ones are in. A value more than
    ``max_ahead`` seconds ahead of the wall clock is no partition's (the
    positions are bounded the same way): it is ignored with a warning, so
    that a forged one cannot close intervals early. Its lock guards the
    values, written by its client's thread and read by the workers.
    """

    def __init__(self, connection: MQTTConnection, client_id: str, max_ahead: float = math.inf,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._connection = connection
        self._client_id = client_id
        self._max_ahead = max_ahead
        self._wall_clock = wall_clock  # the calendar: a watermark is a time of day
        self._values: dict[int, float] = {}
        self._nothing_read: set[int] = set()  # partitions that said NOTHING_READ and have no watermark
        # of() per set of partitions, until a value changes: the window step
        # asks on every batch of every state key, a watermark comes once an epoch.
        self._marks: dict[tuple[int, ...], dict[int, float]] = {}
        self._client = None
        self._lock = threading.Lock()

    def start(self) -> WatermarkBoard:
        if self._client is not None:
            return self
        reader_id = reader_client_id(self._client_id, "watermarks")
        level = input_level(WATERMARKS, self._client_id)
        client = self._connection.client(reader_id)
        client.reconnect_delay_set(1, 30)
        try:
            refused = read_retained(client, self._connection, f"{level}/#", barrier_topic(level, reader_id),
                                    self._on_watermark, connect_as=reader_id)
        except TimeoutError as err:
            refused = str(err)
        if refused:
            log.warning("%s: retained watermarks %s", reader_id, refused)
        self._client = client
        return self

    def _on_watermark(self, msg) -> None:
        topic, payload = msg.topic, msg.payload
        index = index_of(topic, input_level(WATERMARKS, self._client_id))
        if index is None:
            return
        if not payload:  # cleared
            self._update(lambda: self._values.pop(index, None))
        elif payload == NOTHING_READ:
            if index not in self._values and index not in self._nothing_read:
                self._update(lambda: self._nothing_read.add(index))
        else:
            value = decode_watermark(payload)
            if value is None:
                log.warning("ignored a malformed watermark on %s (%d bytes)", topic, len(payload))
                return
            today = self._wall_clock()
            if value != DONE and value > today + self._max_ahead:
                log.warning("ignored a watermark on %s %.0fs ahead of the wall clock", topic, value - today)
                return
            self._update(lambda: (self._values.__setitem__(index, value), self._nothing_read.discard(index)))

    def _update(self, change: Callable[[], object]) -> None:
        with self._lock:
            change()
            self._marks = {}

    def value(self, index: int) -> float | None:
        with self._lock:
            return self._values.get(index)

    def of(self, indexes: tuple[int, ...]) -> Mapping[int, float]:
        """The watermark of each of ``indexes``: ``-inf`` for one that has none yet, none for one that read nothing.

        A partition that said :data:`NOTHING_READ` (caught up and idle,
        having read nothing) is left out of the mapping until its first
        watermark comes. The same mapping, unchanged, until a watermark
        changes: a caller may keep what it computed from it while it gets
        the same object.
        """
        marks = self._marks.get(indexes)
        if marks is None:
            with self._lock:
                known, values, unread = self._marks, self._values, self._nothing_read
                marks = known[indexes] = {i: values.get(i, -math.inf) for i in indexes
                                          if i in values or i not in unread}
        return marks

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
