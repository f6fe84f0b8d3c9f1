"""Which input partition reads a topic, and the partition markers that make changing the count safe.

Topics are read in *shards*: besides each plain topic ``t``, the source may
read ``t/<s>`` for ``s < shards``, where producers pick ``s`` from a key of
their own (driver-stats: the driver id), so one key's messages stay on one
shard, in publish order. Partition ``i`` of ``N`` owns shard ``s`` when
``s % N == i`` (:func:`owner`) and the plain topics when ``i == 0``; every
partition has its own persistent session with plain subscriptions to the
topics it owns, so the broker delivers each message once, to its owner.

After each SUBACK, partition ``i`` publishes its retained *partition marker*
(:class:`Marker`) on :func:`.names.input_topic`::

    {"partitions": 4, "shards": 64}                        # runs as one of 4
    {"partitions": 4, "shards": 64, "draining_from": [2]}  # ... still taking 2's shards too
    {"partitions": 4, "shards": 64, "retired": true}       # a drained session, deleted

Every session also subscribes to the markers, so they arrive *in* each
session's stream. A marker from partition ``k`` is published after ``k``
subscribed, and the broker delivers a session's messages in publish order
(mosquitto: one queue per session), so every message after that marker in
any session's stream is also queued in ``k``'s session. That ends a change
of count:

* **Union.** A session whose own marker names another count takes the
  shards it owns under the old count *or* the new one (:func:`takes` with
  several counts) until its stream has carried, for every ``k < N``, a
  marker of ``k`` with ``partitions == N`` (:func:`transition_over`); then
  it unsubscribes the shards it no longer owns.
* **Drain.** A session ``j >= N`` left by a larger count is read by a
  partition of its own, ``in-<j>``, with its old counts until the same
  holds in ``j``'s stream; once what it took is committed, its marker is
  retired and its session deleted. A retired marker stays, so ``in-<j>``
  stays listed for a recovery store that still holds its key.

A message taken under both counts is a duplicate, absorbed by the
dataflow's dedupe. Anything on a marker topic that is not a well-formed
marker counts as none, which only ever makes a session take more, never
less. See docs/scaling-and-brokers.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from .limits import MAX_PARTITION_MARKER_BYTES, MAX_PARTITIONS, MAX_SHARDS
from .names import PARTITIONS, index_of, input_level
from .retained import load_json

EVERYTHING = 0
"""In a set of counts: every message its session's queue holds (the session
ran under no marker of this layout, so its queue may hold any message)."""


def marker_index(topic: str, client_id: str) -> int | None:
    """The partition a partition marker topic names, or None.

    >>> marker_index("connectors-mqtt/partitions/c/in-12", "c"), marker_index("x/in-1", "c")
    (12, None)
    """
    return index_of(topic, input_level(PARTITIONS, client_id))


def owner(shard: int | None, partitions: int) -> int:
    """The partition (of ``partitions``) that reads ``shard``; ``None`` is the plain topics (always 0).

    >>> owner(5, 1), owner(5, 2), owner(5, 4), owner(None, 4)
    (0, 1, 1, 0)
    """
    return 0 if shard is None else shard % partitions


def takes(shard: int | None, index: int, counts: Iterable[int]) -> bool:
    """Whether partition ``index`` takes a message of ``shard`` when it owns by each count in ``counts``.

    One count normally; the old and the new one during a change of count
    (:data:`EVERYTHING` takes all); none once a drained session is done.

    >>> takes(6, 2, {4}), takes(6, 1, {4}), takes(6, 1, {2, 4}), takes(None, 1, {2})
    (True, False, False, False)
    >>> takes(6, 0, {2, 4}), takes(7, 3, {EVERYTHING, 4}), takes(6, 2, ())
    (True, True, False)
    """
    return any(n == EVERYTHING or owner(shard, n) == index for n in counts)


def owned_shards(index: int, counts: Iterable[int], shards: int) -> list[int | None]:
    """The shards (``None``: the plain topics) partition ``index`` subscribes to under ``counts``.

    :data:`EVERYTHING` adds the plain topics.

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


def _count(value: object) -> int:
    """A partition count from JSON: an int in 1..MAX_PARTITIONS, else ValueError."""
    if type(value) is not int or not 1 <= value <= MAX_PARTITIONS:
        raise ValueError(value)
    return value


@dataclass(frozen=True)
class Marker:
    """What an input partition says about itself on its partition marker topic.

    ``shards``: the shard count it reads by (None: unknown, as no marker of
    this layout).
    """

    partitions: int
    draining_from: tuple[int, ...] = ()
    retired: bool = False
    shards: int | None = None

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
    def decode(payload: bytes) -> Marker | None:
        """The marker, or None for an empty, unreadable or out-of-range payload.

        >>> Marker.decode(Marker(4, (2,), shards=64).encode())
        Marker(partitions=4, draining_from=(2,), retired=False, shards=64)
        >>> [Marker.decode(p) for p in (b"", b"{", b'{"partitions":1e400}', b'{"partitions":-1}', b"\\xff")]
        [None, None, None, None, None]
        """
        if not payload:
            return None
        try:
            body = load_json(payload, MAX_PARTITION_MARKER_BYTES)
            shards = body.get("shards")
            if shards is not None and (type(shards) is not int or not 0 <= shards <= MAX_SHARDS):
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
        return frozenset({self.partitions, *self.draining_from})

    def proves(self, partitions: int, shards: int) -> bool:
        """Whether it shows its partition subscribed under ``partitions`` and ``shards``."""
        return not self.retired and self.partitions == partitions and self.shards == shards


def counts_at_start(own: Marker | None, partitions: int, shards: int, session_present: bool) -> frozenset[int]:
    """The counts partition ``i`` of ``partitions`` takes by when it starts.

    The new count, plus the old ones its own marker names until the change
    is over. A session present without a marker of this layout (none, or one
    of another shard count) may hold any message: it takes everything.

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
    elif own.shards != shards and not own.retired:
        old = frozenset({EVERYTHING})
    else:
        old = own.counts()
    return old | {partitions}
