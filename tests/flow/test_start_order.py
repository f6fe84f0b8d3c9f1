"""Processes started in any order, at any moments, move their epochs together and on time.

Bytewax moves each input's epoch on a clock of its own and then holds it
until every worker is done with the previous epoch; a worker held past its
wake-up spins, taking the cores the others need to end the hold
(connectors/mqtt/epochs.py). Each input partition publishes its watermark (or that it read nothing) and a
probe when its epoch moves: their arrival times show every process's epochs.
"""

from __future__ import annotations

import random
import statistics
import time

import pytest

from connectors.mqtt.testing import Collector
from driver_stats.testing.live_flow import LiveFlow

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(180)]

PROCESSES = 4
SKEW_BOUND = 0.1
"""Seconds between two processes' epoch moves, at most (most are a few ms apart)."""


def epoch_moves(collector: Collector, client_id: str, since: float) -> dict[int, list[float]]:
    """When each partition's epoch moved after ``since``: the arrival of what it publishes then.

    At each move a partition publishes its watermark, or says it has read
    nothing, and sends a probe when none is in flight; one time per move.
    """
    moves: dict[int, list[float]] = {}
    prefixes = (f"connectors-mqtt/probes/{client_id}/in-", f"connectors-mqtt/watermarks/{client_id}/in-")
    for message, at in zip(list(collector.messages), list(collector.arrived_at)):
        prefix = next((p for p in prefixes if message.topic.startswith(p)), None)
        if prefix is not None and at >= since:
            ats = moves.setdefault(int(message.topic.removeprefix(prefix)), [])
            if not any(abs(at - seen) < 0.3 for seen in ats):
                ats.append(at)
    return {p: sorted(ats) for p, ats in moves.items()}


def epoch_spreads(moves: dict[int, list[float]], gap: float = 0.3) -> list[float]:
    """For each epoch move seen from every partition: the seconds between the first partition's and the last's.

    Probes arriving less than ``gap`` apart belong to the same move.
    """
    arrivals = sorted((at, p) for p, ats in moves.items() for at in ats)
    groups: list[list[tuple[float, int]]] = []
    for at, p in arrivals:
        if groups and at - groups[-1][-1][0] < gap:
            groups[-1].append((at, p))
        else:
            groups.append([(at, p)])
    return [group[-1][0] - group[0][0] for group in groups if {p for _, p in group} == set(moves)]


def test_processes_started_in_any_order_move_their_epochs_together(mosquitto, tmp_path):
    rng = random.Random()
    order = [(index, rng.uniform(0.0, 1.5)) for index in rng.sample(range(PROCESSES), PROCESSES)]
    collector = Collector(mosquitto, "connectors-mqtt/probes/order/#", "connectors-mqtt/watermarks/order/#",
                          client_id="order-collector")
    flow = LiveFlow(mosquitto, tmp_path, client_id="order", recovery=True, epoch_seconds=1,
                    processes=PROCESSES, partitions_per_topic=str(PROCESSES))
    try:
        flow.start(order=order)
        since = time.time() + 5  # the first boundaries align what the start put apart
        time.sleep(15)
        moves = epoch_moves(collector, "order", since)
        assert sorted(moves) == list(range(PROCESSES)), f"probes from partitions {sorted(moves)} only"
        # 1 s epochs: about 10 moves in 10 s (a flow whose workers spin
        # through each other's holds moves every 2 s or slower).
        assert min(len(ats) for ats in moves.values()) >= 8, {p: len(ats) for p, ats in moves.items()}
        spreads = epoch_spreads(moves)
        # Most moves together: a process whose epochs drift off the
        # boundaries for a while (docs/limitations.md) moves some apart.
        together = statistics.median(spreads)
        assert together <= SKEW_BOUND, (
            f"started {order}: epoch moves {together:.3f} s apart (median); {[round(s, 3) for s in spreads]}")
    finally:
        flow.kill()
        collector.close()
