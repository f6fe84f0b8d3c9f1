"""Which input partition reads a topic, and the markers that make changing the count safe.

Topics are read in *shards*: besides each plain topic ``t``, the source may
read ``t/<s>`` for ``s < shards``, where producers pick ``s`` from a key of
their own (driver-stats: the driver id), so one key's messages stay on one
shard, in publish order. Partition ``i`` of ``N`` owns shard ``s`` when
``s % N == i`` (:func:`owner`) and the plain topics when ``i == 0``; every
partition has its own persistent session with plain subscriptions to the
topics it owns, so the broker delivers each message once, to its owner.

**Markers.** After each SUBACK, partition ``i`` publishes a retained QoS 1
*marker* on ``connectors-mqtt/partitions/<client_id>/in-<i>``
(:func:`marker_topic`), JSON (:class:`Marker`)::

    {"partitions": 4, "shards": 64}                        # runs as one of 4
    {"partitions": 4, "shards": 64, "draining_from": [2]}  # ... still taking 2's shards too
    {"partitions": 4, "shards": 64, "retired": true}       # a drained session, being deleted

(A marker without ``shards`` was written by a version that split the plain
topics by payload hash: its session may hold any message, see
:data:`EVERYTHING`.) Every session also subscribes to
``connectors-mqtt/partitions/<client_id>/+`` (retained markers come on every
subscribe), so markers arrive *in* each session's stream. A marker from
partition ``k`` is published after ``k`` subscribed; the broker delivers a
session's messages in publish order (mosquitto: one queue per session; MQTT
itself promises it per topic only), so every message after that marker in
any session's stream is also queued in ``k``'s session. That is what ends a
change of count:

* **Union.** A session whose previous count was different (its own retained
  marker, read before it connects, says so) subscribes to and takes the
  shards it owns under the old count *or* the new one (:func:`takes` with
  several counts), until its stream has carried, for every ``k < N``, a
  marker of ``k`` with ``partitions == N`` (:func:`transition_over`). Then it
  unsubscribes the shards it no longer owns and republishes its marker
  without ``draining_from``.
* **Drain.** A session ``j >= N`` left by a larger count is read by a
  Bytewax partition of its own, ``in-<j>`` (listed from the retained
  markers), with its old counts, until the same condition holds in ``j``'s
  stream; once what it took is committed, the
  session is deleted (clean start) and its marker cleared. It is marked
  ``retired`` first, so a crash between the two steps is harmless; a crash
  before them redoes the drain at the next start.

A message taken twice (under both counts) is a duplicate, absorbed by the
dataflow's dedupe; a message taken by nobody cannot happen while the broker
keeps the sessions (see ``connectors/mqtt/__init__.py``). Markers are
read defensively: anything on a marker topic that is not a well-formed
marker (wrong types, huge or non-finite numbers, binary, a partition index
beyond :data:`MAX_PARTITIONS`) counts as no marker, which only ever makes a
session take more (duplicates), never less.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import AbstractSet, Iterable, Optional

CONTROL_ROOT = "connectors-mqtt/partitions"
EVERYTHING = 0
"""In a set of counts: every message (a session left by a version before
shards, whose queue may hold a share of the plain topics by payload hash, or
of a shared subscription)."""
MAX_PARTITIONS = 1024
"""Partition indexes and counts above this on a marker topic are not ours: ignored."""
MAX_MARKER_BYTES = 4096


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
    if not topic.startswith(head) or not (tail.isascii() and tail.isdigit()) or len(tail) > 4:
        return None
    index = int(tail)
    return index if index < MAX_PARTITIONS else None


def owner(shard: Optional[int], partitions: int) -> int:
    """The partition (of ``partitions``) that reads ``shard``; ``None`` is the plain topics (always 0).

    >>> owner(5, 1), owner(5, 2), owner(5, 4), owner(None, 4)
    (0, 1, 1, 0)
    """
    return 0 if shard is None else shard % partitions


def takes(shard: Optional[int], index: int, counts: Iterable[int]) -> bool:
    """Whether partition ``index`` takes a message of ``shard`` when it owns by each count in ``counts``.

    One count normally; the old and the new one during a change of count
    (:data:`EVERYTHING` takes all); none once a drained session is done.

    >>> takes(6, 2, {4}), takes(6, 1, {4}), takes(6, 1, {2, 4}), takes(None, 1, {2})
    (True, False, False, False)
    >>> takes(6, 0, {2, 4}), takes(7, 3, {EVERYTHING, 4}), takes(6, 2, ())
    (True, True, False)
    """
    return any(n == EVERYTHING or owner(shard, n) == index for n in counts)


def owned_shards(index: int, counts: Iterable[int], shards: int) -> list[Optional[int]]:
    """The shards (``None``: the plain topics) partition ``index`` subscribes to under ``counts``.

    :data:`EVERYTHING` adds the plain topics (what an old session subscribed to).

    >>> owned_shards(1, {4}, 8), owned_shards(0, {2}, 4), owned_shards(1, {2, 4}, 4)
    ([1, 5], [None, 0, 2], [1, 3])
    >>> owned_shards(1, {EVERYTHING, 2}, 4), owned_shards(3, (), 4)
    ([None, 1, 3], [])
    """
    counts = set(counts)
    everything = EVERYTHING in counts
    counts.discard(EVERYTHING)
    return [s for s in (None, *range(shards)) if (everything and s is None) or takes(s, index, counts)]


def transition_over(proven: AbstractSet[int], partitions: int) -> bool:
    """Whether a session has seen, in its own stream, a marker with ``partitions`` from each partition.

    >>> transition_over({0, 1}, 4), transition_over({0, 1, 2, 3}, 4), transition_over(set(), 1)
    (False, True, False)
    """
    return all(k in proven for k in range(partitions))


def _count(value) -> int:
    """A partition count from JSON: an int in 1..MAX_PARTITIONS, else ValueError."""
    if type(value) is not int or not 1 <= value <= MAX_PARTITIONS:
        raise ValueError(value)
    return value


@dataclass(frozen=True)
class Marker:
    """What a partition says about itself on its marker topic.

    ``shards`` is the shard count it reads by; ``None`` on a marker written
    by a version that split the plain topics by payload hash.
    """

    partitions: int
    draining_from: tuple[int, ...] = ()
    retired: bool = False
    shards: Optional[int] = None

    def encode(self) -> bytes:
        body: dict = {"partitions": self.partitions}
        if self.shards is not None:
            body["shards"] = self.shards
        if self.draining_from:
            body["draining_from"] = list(self.draining_from)
        if self.retired:
            body["retired"] = True
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def decode(payload: bytes) -> Optional[Marker]:
        """The marker, or None for an empty (cleared), unreadable or out-of-range payload.

        >>> Marker.decode(Marker(4, (2,), shards=64).encode())
        Marker(partitions=4, draining_from=(2,), retired=False, shards=64)
        >>> [Marker.decode(p) for p in (b"", b"{", b'{"partitions":1e400}', b'{"partitions":-1}', b"\\xff")]
        [None, None, None, None, None]
        """
        if not payload or len(payload) > MAX_MARKER_BYTES:
            return None
        try:
            body = json.loads(payload)
            shards = body.get("shards")
            if shards is not None and (type(shards) is not int or not 0 <= shards <= 4096):
                raise ValueError(shards)
            retired = body.get("retired", False)
            if type(retired) is not bool:
                raise ValueError(retired)
            draining = tuple(n if n == EVERYTHING else _count(n) for n in body.get("draining_from", ()))
            if any(type(n) is not int for n in draining):
                raise ValueError(draining)
            return Marker(_count(body["partitions"]), draining, retired, shards)
        except Exception:  # noqa: BLE001 - whatever is on the topic: no marker
            return None

    def counts(self) -> frozenset[int]:
        """The counts its session's unacknowledged messages may be owned by (none once retired)."""
        if self.retired:
            return frozenset()
        if self.shards is None:
            return frozenset({EVERYTHING})
        return frozenset({self.partitions, *self.draining_from})

    def proves(self, partitions: int, shards: int) -> bool:
        """Whether it shows its partition subscribed under ``partitions`` and ``shards``."""
        return not self.retired and self.partitions == partitions and self.shards == shards


def counts_at_start(own: Optional[Marker], partitions: int, shards: int, session_present: bool) -> frozenset[int]:
    """The counts partition ``i`` of ``partitions`` takes by when it starts.

    The new count, plus the old ones its own retained marker names until the
    transition is over. No marker: a new partition (nothing to take over), or
    a session left by a version without markers (shared subscriptions: its
    queue holds messages no other session has, so it takes everything). A
    marker of another layout (no shards: the payload-hash version; another
    shard count) takes everything too.

    >>> sorted(counts_at_start(Marker(2, shards=8), 4, 8, True)), sorted(counts_at_start(Marker(4, shards=8), 4, 8, True))
    ([2, 4], [4])
    >>> sorted(counts_at_start(Marker(4, (2,), shards=8), 2, 8, True))
    [2, 4]
    >>> sorted(counts_at_start(Marker(2, retired=True, shards=8), 4, 8, True))
    [4]
    >>> sorted(counts_at_start(None, 4, 8, False)), sorted(counts_at_start(None, 4, 8, True))
    ([4], [0, 4])
    >>> sorted(counts_at_start(Marker(4), 4, 8, True)), sorted(counts_at_start(Marker(4, shards=16), 4, 8, True))
    ([0, 4], [0, 4])
    """
    if own is None:
        old = frozenset({EVERYTHING}) if session_present else frozenset()
    elif own.shards not in (None, shards) and not own.retired:
        old = frozenset({EVERYTHING})
    else:
        old = own.counts()
    return old | {partitions}
