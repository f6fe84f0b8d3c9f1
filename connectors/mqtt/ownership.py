"""What one input partition takes under a change of the partition count, by the rules of :mod:`.partitions`.

An :class:`Ownership` starts from the partition's own partition marker
(:func:`read_markers`, before the partition connects), takes by the old
counts and the new one until the markers in its session's stream show the
change over (:meth:`Ownership.on_marker`), then unsubscribes what it no
longer owns, or, for a session left by a larger count (a *drain*), takes
nothing more: once what it took is committed, the partition retires its
marker and deletes the session (:meth:`Ownership.retire`,
:func:`delete_session`).

Its state is written on paho's network thread (the first CONNACK, the
markers) and read there (each message) and by the worker (whether the
change is over): single values, each written by one side, so it needs no
lock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .connection import MQTTConnectError, MQTTConnection, connect
from .link import Link
from .names import PARTITIONS, barrier_topic, input_level, input_topic, reader_client_id
from .partitions import (
    Marker,
    counts_at_start,
    marker_index,
    owned_shards,
    takes,
    transition_over,
)
from .retained import read_retained

if TYPE_CHECKING:
    from .source import MQTTSource

log = logging.getLogger("connectors.mqtt")


def read_markers(connection: MQTTConnection, client_id: str, *, label: str | None = None) -> dict[int, Marker]:
    """The retained partition markers of ``client_id``'s input partitions, by partition index.

    Read by a short clean-session client; ``label`` names it in errors
    (default: its own client id).
    """
    reader_id = reader_client_id(client_id, "markers")
    level = input_level(PARTITIONS, client_id)
    markers: dict[int, Marker] = {}

    def on_message(msg) -> None:
        k, marker = marker_index(msg.topic, client_id), Marker.decode(msg.payload)
        if k is not None and marker is not None:
            markers[k] = marker

    client = connection.client(reader_id)
    try:
        refused = read_retained(client, connection, f"{level}/#", barrier_topic(level, reader_id), on_message,
                                connect_as=label or reader_id)
    except TimeoutError as err:
        refused = str(err)
    finally:
        client.disconnect()
        client.loop_stop()
    if refused:
        raise MQTTConnectError(f"MQTT broker {connection.address}: partition markers {refused}")
    return markers


def delete_session(connection: MQTTConnection, client_id: str) -> None:
    """Delete the broker session of ``client_id``: connect with a clean session, disconnect."""
    client = connection.client(client_id)  # MQTT 3.1.1, clean session: the broker discards the old one
    connect(client, connection, label=client_id)
    client.disconnect()
    client.loop_stop()


class Ownership:
    """Which topics input partition ``index`` subscribes to and takes, as the partition count changes.

    Args:
        source: The source's settings: ``client_id``, ``partitions`` (the
            count it runs with now), ``shards``, ``shard_of_topic`` and
            ``topics_of``.
        index: The partition.
        marker: The partition's own retained marker, read before it connects.
    """

    def __init__(self, source: MQTTSource, index: int, marker: Marker | None) -> None:
        self._client_id, self._partitions, self._shards = source.client_id, source.partitions, source.shards
        self._shard_of, self._topics_of = source.shard_of_topic, source.topics_of
        self._index, self.marker = index, marker
        self.drain = index >= source.partitions
        """A session left by a larger count: it only takes what its old counts gave it."""
        self.over = True
        """Whether the change of count is over in this session's stream."""
        self._started = False
        self._proven: set[int] = set()  # partitions whose marker with the new count came
        self._subscribed: list[int | None] = []  # the shards asked for on the last connect
        self._by_counts(frozenset({source.partitions}))

    def _by_counts(self, counts: frozenset[int]) -> None:
        """Own by each of ``counts`` from now on (looked up once per topic, not per message)."""
        self._counts = counts
        self._takes = {topic: takes(shard, self._index, counts) for topic, shard in self._shard_of.items()}

    def takes(self, topic: bytes) -> bool:
        """Whether the partition takes a message on ``topic`` (paho's network thread)."""
        owned = self._takes.get(topic)
        if owned is None:  # a topic no longer configured, left subscribed in the session: plain
            return takes(None, self._index, self._counts)
        return owned

    def connected(self, session_present: bool) -> list[str]:
        """The data topics to subscribe to on this connection (on the first: the counts it starts with)."""
        if not self._started:
            self._started = True
            counts = counts_at_start(self.marker, self._partitions, self._shards, session_present)
            if self.drain:  # nothing to drain from a session the broker no longer had
                counts = counts - {self._partitions} if session_present else frozenset()
            self._by_counts(counts)
            self.over = self._counts <= {self._partitions}
        self._subscribed = owned_shards(self._index, self._counts, self._shards)
        return self._topics_of(self._subscribed)

    def subscribed(self) -> int:
        """How many shards (the plain topics count as one) the last connection subscribed to."""
        return len(self._subscribed)

    def publish_marker(self, link: Link) -> None:
        """Say, retained, the count this partition reads by, and the old ones it still takes by."""
        old = tuple(sorted(self._counts - {self._partitions}))
        marker = Marker(self._partitions, old, shards=self._shards)
        link.client.publish(input_topic(PARTITIONS, self._client_id, self._index), marker.encode(), qos=1, retain=True)

    def on_marker(self, link: Link, topic: str, payload: bytes) -> None:
        """A partition marker came in the session's stream (paho's network thread): is the change over?"""
        k = marker_index(topic, self._client_id)
        marker = Marker.decode(payload)
        if self.over or k is None or marker is None or not marker.proves(self._partitions, self._shards):
            return
        self._proven.add(k)
        if not transition_over(self._proven, self._partitions):
            return
        self.over = True
        if self.drain:
            self._by_counts(frozenset())
            log.info("%s: every message it must take is taken; deleted once committed", link.label)
            return
        self._by_counts(frozenset({self._partitions}))
        owned = owned_shards(self._index, self._counts, self._shards)
        gone = [shard for shard in self._subscribed if shard not in owned]
        if gone:
            # Their messages after the markers are in their owners' sessions.
            link.client.unsubscribe(self._topics_of(gone))
        self._subscribed = owned
        self.publish_marker(link)
        log.info("%s: change to %d partitions complete", link.label, self._partitions)

    def retire(self, link: Link) -> None:
        """Mark the drained session's marker retired: the partition stays listed (its key may be in a recovery store)."""
        retired = Marker(self.marker.partitions, retired=True, shards=self.marker.shards)
        topic = input_topic(PARTITIONS, self._client_id, self._index)
        link.client.publish(topic, retired.encode(), qos=1, retain=True).wait_for_publish(5)
