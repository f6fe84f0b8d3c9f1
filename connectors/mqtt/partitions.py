"""Which input partition takes a message, and the markers that make changing the count safe.

Every partition ``i`` of ``N`` has its own persistent session with plain
subscriptions, so every session receives the whole stream. Partition ``i``
*takes* a message when ``crc32(payload) % N == i`` (:func:`owner`) and
acknowledges every other message at once: the owner has a copy of its own,
in its own session, until it commits.

**Markers.** After each SUBACK, partition ``i`` publishes a retained QoS 1
*marker* on ``connectors-mqtt/partitions/<client_id>/in-<i>``
(:func:`marker_topic`), JSON (:class:`Marker`)::

    {"partitions": 4}                        # runs as one of 4
    {"partitions": 4, "draining_from": [2]}  # ... still taking 2's share too
    {"partitions": 4, "retired": true}       # a drained session, being deleted

Every session also subscribes to ``connectors-mqtt/partitions/<client_id>/+``
(retained markers come on every subscribe), so markers arrive *in* each
session's stream. A marker from partition ``k`` is published after ``k``
subscribed; the broker delivers a session's messages in publish order
(mosquitto: one queue per session; MQTT itself promises it per topic only),
so every message after that marker in any session's stream is also queued
in ``k``'s session. That is what ends a change of count:

* **Union.** A session whose previous count was different (its own retained
  marker, read before it connects, says so) takes a message owned by it
  under the old count *or* the new one (:func:`takes` with several counts),
  until its stream has carried, for every ``k < N``, a marker of ``k`` with
  ``partitions == N`` (:func:`transition_over`). Then it republishes its
  marker without ``draining_from``.
* **Drain.** A session ``j >= N`` left by a larger count is read by a
  Bytewax partition of its own, ``in-<j>`` (listed from the retained
  markers), with its old counts, until the same condition holds in ``j``'s
  stream; once what it took is committed, the
  session is deleted (clean start) and its marker cleared. It is marked
  ``retired`` first, so a crash between the two steps is harmless; a crash
  before them redoes the drain at the next start.

A message taken twice (under both counts) is a duplicate, absorbed by the
dataflow's dedupe; a message taken by nobody cannot happen while the broker
keeps the sessions (see ``connectors/mqtt/__init__.py``).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import AbstractSet, Iterable, Optional

CONTROL_ROOT = "connectors-mqtt/partitions"
EVERYTHING = 0
"""In a set of counts: every message (a session left by a version before markers,
whose queue holds its share of a shared subscription)."""


def control_prefix(client_id: str) -> str:
    """The topic level above the markers of ``client_id``'s partitions."""
    return f"{CONTROL_ROOT}/{client_id}"


def marker_topic(client_id: str, index: int) -> str:
    """The retained marker topic of partition ``index``.

    >>> marker_topic("driver-stats", 3)
    'connectors-mqtt/partitions/driver-stats/in-3'
    """
    return f"{control_prefix(client_id)}/in-{index}"


def marker_index(topic: str, client_id: str) -> Optional[int]:
    """The partition a marker topic names, or None.

    >>> marker_index("connectors-mqtt/partitions/c/in-12", "c"), marker_index("x/in-1", "c")
    (12, None)
    """
    head = control_prefix(client_id) + "/in-"
    tail = topic[len(head):]
    return int(tail) if topic.startswith(head) and tail.isdigit() else None


def owner(payload: bytes, partitions: int) -> int:
    """The partition (of ``partitions``) that takes ``payload``: a stable hash, the same in every process.

    >>> owner(b"hello", 1), owner(b"hello", 2), owner(b"hello", 4)
    (0, 0, 2)
    """
    return zlib.crc32(payload) % partitions


def takes(payload: bytes, index: int, counts: Iterable[int]) -> bool:
    """Whether partition ``index`` takes ``payload`` when it owns by each count in ``counts``.

    One count normally; the old and the new one during a change of count
    (:data:`EVERYTHING` takes all); none once a drained session is done.

    >>> takes(b"hello", 2, {4}), takes(b"hello", 1, {4}), takes(b"hello", 1, {2, 4})
    (True, False, False)
    >>> takes(b"hello", 0, {2, 4}), takes(b"hello", 3, {EVERYTHING, 4}), takes(b"hello", 2, ())
    (True, True, False)
    """
    h = zlib.crc32(payload)
    return any(n == EVERYTHING or h % n == index for n in counts)


def transition_over(proven: AbstractSet[int], partitions: int) -> bool:
    """Whether a session has seen, in its own stream, a marker with ``partitions`` from each partition.

    >>> transition_over({0, 1}, 4), transition_over({0, 1, 2, 3}, 4), transition_over(set(), 1)
    (False, True, False)
    """
    return all(k in proven for k in range(partitions))


@dataclass(frozen=True)
class Marker:
    """What a partition says about itself on its marker topic."""

    partitions: int
    draining_from: tuple[int, ...] = ()
    retired: bool = False

    def encode(self) -> bytes:
        body: dict = {"partitions": self.partitions}
        if self.draining_from:
            body["draining_from"] = list(self.draining_from)
        if self.retired:
            body["retired"] = True
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def decode(payload: bytes) -> Optional[Marker]:
        """The marker, or None for an empty (cleared) or unreadable payload.

        >>> Marker.decode(Marker(4, (2,)).encode()), Marker.decode(b""), Marker.decode(b"{")
        (Marker(partitions=4, draining_from=(2,), retired=False), None, None)
        """
        try:
            body = json.loads(payload)
            return Marker(int(body["partitions"]), tuple(int(n) for n in body.get("draining_from", ())),
                          bool(body.get("retired", False)))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def counts(self) -> frozenset[int]:
        """The counts its session's unacknowledged messages may be owned by (none once retired)."""
        return frozenset() if self.retired else frozenset({self.partitions, *self.draining_from})

    def proves(self, partitions: int) -> bool:
        """Whether it shows its partition subscribed under ``partitions``."""
        return not self.retired and self.partitions == partitions


def counts_at_start(own: Optional[Marker], partitions: int, session_present: bool) -> frozenset[int]:
    """The counts partition ``i`` of ``partitions`` takes by when it starts.

    The new count, plus the old ones its own retained marker names until the
    transition is over. No marker: a new partition (nothing to take over), or
    a session left by a version without markers (shared subscriptions: its
    queue holds messages no other session has, so it takes everything).

    >>> sorted(counts_at_start(Marker(2), 4, True)), sorted(counts_at_start(Marker(4), 4, True))
    ([2, 4], [4])
    >>> sorted(counts_at_start(Marker(4, (2,)), 2, True)), sorted(counts_at_start(Marker(2, retired=True), 4, True))
    ([2, 4], [4])
    >>> sorted(counts_at_start(None, 4, False)), sorted(counts_at_start(None, 4, True))
    ([4], [0, 4])
    """
    if own is None:
        old = frozenset({EVERYTHING}) if session_present else frozenset()
    else:
        old = own.counts()
    return old | {partitions}
