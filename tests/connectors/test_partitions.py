"""The input's ownership and change-of-count rules (connectors.mqtt.partitions), without a broker.

The model: a broker that appends every publish to the queue of each session
subscribed at that moment and delivers each queue in order. A partition
count change is simulated as the connector runs it: old sessions hold their
own uncommitted messages, everything published while the flow is down, then
the live stream with the markers of the new partitions as they subscribe.
"""

from __future__ import annotations

import doctest
import random

import pytest

from connectors.mqtt import partitions as rules
from connectors.mqtt.partitions import EVERYTHING, Marker, counts_at_start, owner, takes, transition_over


def test_doctests():
    assert doctest.testmod(rules).failed == 0


def test_owner_is_stable_and_spreads_evenly():
    payloads = [f"event-{i}".encode() for i in range(4000)]
    for n in (1, 2, 4):
        shares = [sum(owner(p, n) == i for p in payloads) for i in range(n)]
        assert sum(shares) == len(payloads) and min(shares) > 0.9 * len(payloads) / n
        # Exactly one partition takes each message when no change is under way.
        assert all(sum(takes(p, i, {n}) for i in range(n)) == 1 for p in payloads)
    assert owner(b"x", 4) == owner(bytes(b"x"), 4)  # the payload alone decides


def simulate(old: int, new: int, seed: int, union: bool = True) -> tuple[dict[bytes, int], set[bytes]]:
    """Run a change from ``old`` to ``new`` partitions; (times each message was taken, messages after the change)."""
    rng = random.Random(seed)
    queues: dict[int, list] = {}  # session index -> its stream (("msg", payload) | ("marker", k, Marker))
    counter = iter(range(10**9))

    def publish(item) -> None:
        for q in queues.values():
            q.append(item)

    def message() -> bytes:
        payload = f"m{next(counter)}-{rng.random()}".encode()
        publish(("msg", payload))
        return payload

    # The old run: each session holds the messages it owns and has not committed.
    retained: dict[int, Marker] = {j: Marker(old) for j in range(old)}
    for j in range(old):
        queues[j] = []
    published = []
    for _ in range(40):
        payload = f"m{next(counter)}-{rng.random()}".encode()
        published.append(payload)
        queues[owner(payload, old)].append(("msg", payload))  # the others acked it at once
    # The flow is down: everything published is queued in every existing session.
    published += [message() for _ in range(40)]

    # The new run. Each partition reads the retained markers before it connects.
    taken: dict[bytes, int] = {}
    state = {}
    for i in range(new):
        present = i in queues
        counts = counts_at_start(retained.get(i), new, present) if union else frozenset({new})
        state[i] = {"index": i, "counts": counts, "proven": set(), "pos": 0}
    for j in range(new, old):
        state[j] = {"index": j, "counts": retained[j].counts() if union else frozenset(), "proven": set(), "pos": 0}
    started: set[int] = set()
    start_order = list(range(new))
    rng.shuffle(start_order)
    after_change: set[bytes] = set()

    def read(s: int, steps: int) -> None:
        st, q = state[s], queues[s]
        while st["pos"] < len(q) and steps:
            steps -= 1
            item = q[st["pos"]]
            st["pos"] += 1
            if item[0] == "marker":
                _, k, marker = item
                if marker.proves(new) and k < new:
                    st["proven"].add(k)
                    if transition_over(st["proven"], new):
                        st["counts"] = frozenset({new}) if st["index"] < new else frozenset()
            elif takes(item[1], st["index"], st["counts"]):
                taken[item[1]] = taken.get(item[1], 0) + 1

    for i in start_order:
        started.add(i)
        started.update(j for j in range(new, old) if j % new == i)
        if i not in queues:
            queues[i] = []  # a new session: subscribed from now on
        # Subscribing to the markers delivers the retained ones into its stream.
        queues[i].extend(("marker", k, m) for k, m in sorted(retained.items()))
        for j in range(new, old):  # the drains it opens get the retained markers too
            if j % new == i:
                queues[j].extend(("marker", k, m) for k, m in sorted(retained.items()))
        published += [message() for _ in range(rng.randrange(0, 20))]
        retained[i] = Marker(new, tuple(sorted(state[i]["counts"] - {new})))
        publish(("marker", i, retained[i]))
        for s in sorted(started):  # every started session reads a little meanwhile
            read(s, rng.randrange(0, 30))
    after_change = set(message() for _ in range(60))
    published += sorted(after_change)
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


def test_a_session_from_before_markers_takes_everything_until_the_change_is_over():
    assert counts_at_start(None, 2, session_present=True) == {EVERYTHING, 2}
    assert takes(b"anything", 1, {EVERYTHING, 2})
