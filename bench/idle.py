"""CPU of an idle flow of several processes: what a deployment pays while no events come.

Starts a private mosquitto and the live flow (`python -m bytewax.run
flows.driver_stats`, recovery on, 1 s epochs) as P processes (default 4)
with P input and output partitions, sends shard-topic traffic for 30 s
(events stamped with the producers' clock, a year behind the host's, on
their drivers' shard topics), waits until the traffic's records are out,
then leaves the flow idle for ``--minutes`` (default 10). Each idle minute
it prints the CPU the flow used in that minute, in cores: user + system
seconds of every flow process and of their MQTT child processes (from
/proc), over 60 s.

The reference, measured first over ``--reference-minutes`` (default 1): a
bare Bytewax dataflow of the same shape (P processes, recovery on, 1 s
epochs, one input partition per process that finds nothing and asks to be
woken in 10 ms, as ours polls), idle the same way. Bytewax's own loops wake
every millisecond in every process (its worker's ``step_or_park`` and the
main thread's signal check), so this is about the least an idle P-process
flow costs. The last lines:

    bare Bytewax 4-process idle: X.XX cores
    idle CPU of a 4-process flow: X.XX cores (minute 10)

    .venv/bin/python bench/idle.py [--minutes 10] [--processes 4] [--reference-minutes 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.mqtt.testing import Collector, Mosquitto, Publisher, free_port, process_cpu_seconds  # noqa: E402
from driver_stats.contract import STATS_TOPIC  # noqa: E402
from driver_stats.testing.live_flow import LiveFlow, parent_pid, wait_for_records  # noqa: E402
from driver_stats.testing.paced import PacedTraffic  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402

from bytewax import operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition  # noqa: E402
from bytewax.testing import TestingSink  # noqa: E402

WINDOW, LATENESS = 10, 2
A_YEAR = 365 * 24 * 3600.0


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds so far of ``roots`` and all their descendants."""
    parents = {int(entry): parent_pid(int(entry)) for entry in os.listdir("/proc") if entry.isdigit()}
    tree, grew = set(roots), True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0.0
    for pid in tree:
        try:
            total += process_cpu_seconds(pid)
        except OSError:
            continue  # gone since
    return total


class _Nothing(StatefulSourcePartition):
    def next_batch(self) -> list:
        return []

    def next_awake(self) -> datetime:
        return datetime.now(UTC) + timedelta(milliseconds=10)

    def snapshot(self) -> None:
        return None


class _NothingSource(FixedPartitionedSource):
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(self.partitions)]

    def build_part(self, step_id, for_part, resume_state) -> _Nothing:
        return _Nothing()


def bare_flow(partitions: int) -> Dataflow:
    """The reference: an input that never reads anything, a map, a sink (``python -m bytewax.run``)."""
    flow = Dataflow("bare_idle")
    items = op.input("in", flow, _NothingSource(partitions))
    op.output("out", op.map("same", items, lambda item: item), TestingSink([]))
    return flow


def per_minute(roots: list[int], minutes: int, label: str) -> float:
    """Print the cores ``roots`` and their descendants use in each of ``minutes``; the last minute's."""
    before, at, cores = tree_cpu_seconds(roots), time.monotonic(), 0.0
    for minute in range(1, minutes + 1):
        time.sleep(max(0.0, at + 60 - time.monotonic()))
        now, cpu = time.monotonic(), tree_cpu_seconds(roots)
        cores = (cpu - before) / (now - at)
        print(f"{label} minute {minute}: {cores:.3f} cores", flush=True)
        before, at = cpu, now
    return cores


def bare_bytewax(processes: int, minutes: int, workdir: Path) -> float:
    """Idle CPU of the reference flow, in cores (its last minute)."""
    recovery = workdir / "bare-recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), str(processes)], check=True)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = [subprocess.Popen([sys.executable, "-m", "bytewax.run", f"bench.idle:bare_flow({processes})",
                               "-i", str(i), "-a", addresses, "-s", "1", "-b", "0", "-r", str(recovery)],
                              cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # killed at the end: its peers panic on the lost link
             for i in range(processes)]
    try:
        time.sleep(5)
        return per_minute([proc.pid for proc in procs], minutes, "bare Bytewax")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--reference-minutes", type=int, default=1)
    options = parser.parse_args()
    processes = options.processes
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        bare = bare_bytewax(processes, options.reference_minutes, Path(tmp))
        collector = Collector(broker, STATS_TOPIC, client_id="idle-collector")
        publisher = Publisher(broker, client_id="idle-publisher")
        flow = LiveFlow(broker, Path(tmp) / "flow", client_id="idle", window=WINDOW, lateness=LATENESS,
                        recovery=True, epoch_seconds=1, processes=processes,
                        partitions_per_topic=str(processes)).start()
        try:
            traffic = PacedTraffic(publisher, count=6000, rate=200, drivers=200, window=WINDOW, lateness=LATENESS,
                                   clock_offset=-A_YEAR, duplicates=0)
            traffic.start()
            traffic.join()
            wait_for_records(collector, traffic.expected(), timeout=120)
            print(f"{processes}-process flow: {len(traffic.messages)} events in 30 s, every record out; "
                  f"idle for {options.minutes} minutes", flush=True)
            cores = per_minute([proc.pid for proc in flow.procs], options.minutes, "driver-stats")
            assert all(proc.poll() is None for proc in flow.procs), "a flow process exited while idle"
            print(f"bare Bytewax {processes}-process idle: {bare:.2f} cores")
            print(f"idle CPU of a {processes}-process flow: {cores:.2f} cores (minute {options.minutes})")
        finally:
            flow.kill()
            publisher.close()
            collector.close()


if __name__ == "__main__":
    main()
