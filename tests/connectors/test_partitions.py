"""The input's ownership and change-of-count rules (connectors.mqtt.partitions), without a broker.

The model: a broker that appends every publish to the queue of each session
subscribed to its shard at that moment and delivers each queue in order. A partition
count change is simulated as the connector runs it: old sessions hold their
own uncommitted messages, everything published while the flow is down, then
the live stream with the markers of the new partitions as they subscribe.
"""

from __future__ import annotations

import doctest
import random

import pytest

from connectors.mqtt import partitions as rules
from connectors.mqtt.partitions import (
    EVERYTHING,
    Marker,
    counts_at_start,
    owned_shards,
    takes,
    transition_over,
)


def test_doctests():
    assert doctest.testmod(rules).failed == 0


SHARDS = 8


def test_each_shard_has_one_owner_and_the_plain_topics_are_partition_0s():
    for n in (1, 2, 3, 4, 8):
        for shard in (None, *range(SHARDS)):
            assert sum(takes(shard, i, {n}) for i in range(n)) == 1  # no change under way: one owner
        owned = [owned_shards(i, {n}, SHARDS) for i in range(n)]
        assert sorted((s for shards in owned for s in shards), key=str) == sorted([None, *range(SHARDS)], key=str)
        assert None in owned[0]


def simulate(old: int, new: int, seed: int, union: bool = True) -> tuple[dict, set]:
    """Run a change from ``old`` to ``new`` partitions; (times each message was taken, messages after the change)."""
    rng = random.Random(seed)
    queues: dict[int, list] = {}  # session index -> its stream (("msg", (shard, payload)) | ("marker", k, Marker))
    subscribed: dict[int, set] = {}  # session index -> the shards it is subscribed to now
    counter = iter(range(10**9))

    def publish(item) -> None:
        for j, q in queues.items():
            if item[0] == "marker" or item[1][0] in subscribed[j]:
                q.append(item)

    def message() -> tuple:
        item = (rng.choice([None, *range(SHARDS)]), f"m{next(counter)}")
        publish(("msg", item))
        return item

    # The old run: each session is subscribed to its shards and holds what it
    # has not committed, and everything published while the flow is down.
    retained: dict[int, Marker] = {j: Marker(old, shards=SHARDS) for j in range(old)}
    for j in range(old):
        queues[j], subscribed[j] = [], set(owned_shards(j, {old}, SHARDS))
    published = [message() for _ in range(80)]

    # The new run. Each partition reads the retained markers before it connects.
    taken: dict[tuple, int] = {}
    state = {}
    for i in range(new):
        present = i in queues
        counts = counts_at_start(retained.get(i), new, SHARDS, present) if union else frozenset({new})
        state[i] = {"index": i, "counts": counts, "proven": set(), "pos": 0}
    for j in range(new, old):
        counts = counts_at_start(retained[j], new, SHARDS, True) - {new} if union else frozenset()
        state[j] = {"index": j, "counts": counts, "proven": set(), "pos": 0}
    started: set[int] = set()
    start_order = list(range(new))
    rng.shuffle(start_order)

    def read(s: int, steps: int) -> None:
        st, q = state[s], queues[s]
        while st["pos"] < len(q) and steps:
            steps -= 1
            item = q[st["pos"]]
            st["pos"] += 1
            if item[0] == "marker":
                _, k, marker = item
                if marker.proves(new, SHARDS) and k < new:
                    st["proven"].add(k)
                    if transition_over(st["proven"], new):
                        st["counts"] = frozenset({new}) if st["index"] < new else frozenset()
                        # Unsubscribes what it no longer owns; a drained session is deleted.
                        subscribed[s] = set(owned_shards(st["index"], st["counts"], SHARDS))
            elif takes(item[1][0], st["index"], st["counts"]):
                taken[item[1]] = taken.get(item[1], 0) + 1

    for i in start_order:
        started.add(i)
        started.update(j for j in range(new, old) if j % new == i)
        if i not in queues:
            queues[i] = []
        subscribed[i] = set(owned_shards(i, state[i]["counts"], SHARDS))  # its shards under every count
        # Subscribing to the markers delivers the retained ones into its stream.
        queues[i].extend(("marker", k, m) for k, m in sorted(retained.items()))
        for j in range(new, old):  # the drains it opens get the retained markers too
            if j % new == i:
                queues[j].extend(("marker", k, m) for k, m in sorted(retained.items()))
        published += [message() for _ in range(rng.randrange(0, 20))]
        retained[i] = Marker(new, tuple(sorted(state[i]["counts"] - {new})), shards=SHARDS)
        publish(("marker", i, retained[i]))
        for s in sorted(started):  # every started session reads a little meanwhile
            read(s, rng.randrange(0, 30))
    after_change = {message() for _ in range(60)}
    published += sorted(after_change, key=str)
    for s in state:
        read(s, 10**6)
    assert all(transition_over(state[s]["proven"], new) for s in state)
    return {p: taken.get(p, 0) for p in published}, after_change


@pytest.mark.parametrize("old,new", [(2, 4), (4, 2), (1, 4), (4, 1), (3, 5), (2, 2)])
def test_a_change_of_count_takes_every_message_and_ends_with_one_owner(old, new):
    for seed in range(30):
        taken, after = simulate(old, new, seed)
        lost = [p for p, n in taken.items() if n == 0]
        assert not lost, (seed, len(lost))
        # Once every partition's marker is in every stream: exactly one owner each.
        assert all(taken[p] == 1 for p in after), seed


def test_without_the_union_a_grow_loses_messages():
    # The rule is needed: sessions that take only their new share drop
    # messages whose new owner did not exist yet (or its old owner's share).
    for old, new in ((2, 4), (4, 2)):
        lost = sum(n == 0 for seed in range(10) for n in simulate(old, new, seed, union=False)[0].values())
        assert lost > 0, (old, new)


def test_a_session_from_before_shards_takes_everything_until_the_change_is_over():
    # No marker (shared subscriptions) or one without shards (payload hash):
    # its queue may hold any message, which no other session has.
    assert counts_at_start(None, 2, SHARDS, session_present=True) == {EVERYTHING, 2}
    assert counts_at_start(Marker(2), 2, SHARDS, session_present=True) == {EVERYTHING, 2}
    assert takes(None, 1, {EVERYTHING, 2}) and takes(3, 0, {EVERYTHING, 2})
    assert None in owned_shards(1, {EVERYTHING, 2}, SHARDS)  # keeps its plain subscriptions meanwhile
    # The marker it writes meanwhile keeps saying so, for a crash before the change is over.
    assert Marker.decode(Marker(2, (EVERYTHING,), shards=SHARDS).encode()).counts() == {EVERYTHING, 2}


def test_nothing_on_a_marker_topic_crashes_or_makes_a_session_take_less():
    for payload in (b"", b"{", b'{"partitions":1e400}', b'{"partitions":-1}', b'{"partitions":"4"}',
                    b'{"partitions":4,"shards":1e400}', b'{"partitions":4,"draining_from":[1e400]}',
                    b'{"partitions":4,"retired":"yes"}', b"\xff\xfe", b"[" * 100_000, b"{}" * 10**5):
        marker = Marker.decode(payload)
        assert marker is None, payload[:40]
        assert counts_at_start(marker, 2, SHARDS, session_present=True) == {EVERYTHING, 2}
    assert rules.marker_index("connectors-mqtt/partitions/c/in-\u00b2", "c") is None
    assert rules.marker_index("connectors-mqtt/partitions/c/in-99999", "c") is None
