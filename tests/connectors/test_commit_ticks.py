"""The commit ticks of :func:`connectors.mqtt.operators.publish`: what they send, and that no worker spins.

Bytewax 0.21.1 re-activates an input at once, again and again, while its
wake-up is due and it waits for the other workers to finish its previous
epoch; the commit ticks' input must not give a worker such a wait (see
``_CommitTicks``).
"""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.testing import cluster_main

from connectors.mqtt import COMMIT_TICK, MQTTConnection, MQTTSink
from connectors.mqtt.operators import _CommitTicks
from connectors.mqtt.testing import free_port, process_cpu_seconds

INTERVAL = timedelta(milliseconds=100)


def ticks_of(sink: MQTTSink, until=None) -> _CommitTicks:
    return _CommitTicks(sink.tick_keys(), INTERVAL, until)


@pytest.mark.parametrize("partitions", [1, 4, 64])
def test_one_tick_partition_whatever_the_sink_partitions(partitions):
    # A recovery store lists the partitions it holds; they must all be
    # listed again on resuming, so the list must not follow the sink's count.
    sink = MQTTSink(MQTTConnection(), client_id="ticks", partitions=partitions)
    assert ticks_of(sink).list_parts() == ["ticks"]


def test_a_tick_for_each_sink_partition_every_interval():
    sink = MQTTSink(MQTTConnection(), client_id="ticks", partitions=4)
    names = sorted(sink.list_parts())
    part = ticks_of(sink).build_part("commit_ticks", "ticks", None)
    first = part.next_batch()
    assert {value for _key, value in first} == {COMMIT_TICK}
    assert sorted(names[sink.part_fn(key)] for key, _value in first) == ["0", "1", "2", "3"]
    assert part.next_batch() == []  # woken again before the interval is over
    awake = part.next_awake()
    assert awake is not None
    assert awake - datetime.now(UTC) <= timedelta(milliseconds=10)
    time.sleep(INTERVAL.total_seconds())
    assert part.next_batch() == first
    assert part.snapshot() is None
    # An epoch ended: the first call of the next one (Bytewax makes it once
    # the epoch is committed) ticks at once, however recent the last tick.
    assert part.next_batch() == first
    assert part.next_batch() == []


def test_until_ends_the_ticks():
    done = [False]
    part = ticks_of(MQTTSink(MQTTConnection(), client_id="ticks"), lambda: done[0]).build_part(
        "commit_ticks", "ticks", None)
    assert part.next_batch()
    done[0] = True
    with pytest.raises(StopIteration):
        part.next_batch()


# -- four processes ------------------------------------------------------------

PROCESSES = 4
SKEW = 0.3  # seconds between the processes' dataflow builds (as cluster_main's connection retries make)


class _IdlePoll(StatefulSourcePartition):
    """An idle input partition polling every 10 ms, as the MQTT input's does."""

    def __init__(self, until):
        self._until = until

    def next_batch(self):
        if self._until():
            raise StopIteration
        return []

    def next_awake(self):
        return datetime.now(UTC) + timedelta(milliseconds=10)

    def snapshot(self):
        return None


class _IdleInput(FixedPartitionedSource):
    def __init__(self, until, skew: float):
        self._until, self._skew = until, skew

    def list_parts(self):
        time.sleep(self._skew)  # each worker lists while building its dataflow
        return [str(i) for i in range(PROCESSES)]

    def build_part(self, step_id, for_part, resume_state):
        return _IdlePoll(self._until)


class _Ticked(StatefulSinkPartition):
    def __init__(self, out: Path, name: str):
        self._out, self._name, self._ticks = out, name, 0

    def write_batch(self, items):
        self._ticks += sum(item is COMMIT_TICK for item in items)

    def snapshot(self):
        return None

    def close(self):
        (self._out / f"part-{self._name}").write_text(str(self._ticks))


class _TickedSink(FixedPartitionedSink):
    """The sink's partitions and routing without MQTT: each partition writes its tick count on closing."""

    def __init__(self, out: Path):
        self._out = out
        self.mqtt = MQTTSink(MQTTConnection(), client_id="ticks", partitions=PROCESSES)

    def list_parts(self):
        return self.mqtt.list_parts()

    def part_fn(self, item_key):
        return self.mqtt.part_fn(item_key)

    def build_part(self, step_id, for_part, resume_state):
        return _Ticked(self._out, for_part)


def _process(addresses, proc_id: int, deadline: float, out: str) -> None:
    def until() -> bool:
        return time.time() >= deadline

    sink = _TickedSink(Path(out))
    flow = Dataflow("commit_ticks_cluster")
    idle = op.map("key", op.input("idle", flow, _IdleInput(until, SKEW * proc_id)), lambda x: ("idle", x))
    ticks = op.input("commit_ticks", flow, _CommitTicks(sink.mqtt.tick_keys(), INTERVAL, until))
    op.output("out", op.merge("with_ticks", op.filter("none", idle, lambda _x: False), ticks), sink)
    cluster_main(flow, addresses, proc_id, epoch_interval=timedelta(seconds=1), worker_count_per_proc=1)


def test_no_worker_spins_across_four_processes(tmp_path):
    # The old ticks (a DynamicSource on every worker) made the workers that
    # built first spin for the skew (mod 100 ms), every epoch: 40-70 % of a
    # core over 10 s in 6 runs of 6 with this skew, 4 of 8 without it.
    warmup, measured = 4.0, 6.0
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(PROCESSES)]
    start = time.time()
    deadline = start + SKEW * PROCESSES + warmup + measured + 1.0
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_process, args=(addresses, i, deadline, str(tmp_path)))
             for i in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        time.sleep(SKEW * PROCESSES + warmup)
        before, t0 = [process_cpu_seconds(p.pid) for p in procs], time.monotonic()
        time.sleep(measured)
        after, t1 = [process_cpu_seconds(p.pid) for p in procs], time.monotonic()
        for proc in procs:
            proc.join(timeout=60)
        assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    load = [(b - a) / (t1 - t0) for a, b in zip(before, after)]
    assert max(load) < 0.25, f"a worker spins: CPU share per process {[f'{x:.0%}' for x in load]}"
    ticked = {path.name: int(path.read_text()) for path in tmp_path.glob("part-*")}
    assert set(ticked) == {"part-0", "part-1", "part-2", "part-3"}, ticked
    assert min(ticked.values()) >= 5 * measured, ticked  # about 10 a second each
