"""CPU of an idle flow of several processes: what a deployment pays while no events come.

Starts a private mosquitto and the live flow (`python -m bytewax.run
flows.driver_stats`, recovery on, 1 s epochs) as P processes (default 4)
with P input and output partitions, sends shard-topic traffic for 30 s
(events stamped with the producers' clock, a year behind the host's, on
their drivers' shard topics), waits until the traffic's records are out,
then leaves the flow idle for ``--minutes`` (default 10). Each idle minute
it prints the CPU the flow used in that minute, in cores: user + system
seconds of every flow process and of their MQTT child processes (from
/proc), over 60 s. The last line:

    idle CPU of a 4-process flow: X.XX cores (minute 10)

    .venv/bin/python bench/idle.py [--minutes 10] [--processes 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.mqtt.testing import Collector, Mosquitto, Publisher  # noqa: E402
from driver_stats.contract import STATS_TOPIC  # noqa: E402
from driver_stats.testing.live_flow import LiveFlow, wait_for_records  # noqa: E402
from driver_stats.testing.paced import PacedTraffic  # noqa: E402

WINDOW, LATENESS = 10, 2
A_YEAR = 365 * 24 * 3600.0


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
    return parents


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds so far of ``roots`` and all their descendants."""
    parents = _ppids()
    tree, grew = set(roots), True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0.0
    for pid in tree:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone since
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--processes", type=int, default=4)
    options = parser.parse_args()
    processes = options.processes
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
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
            roots = [proc.pid for proc in flow.procs]
            before, at = tree_cpu_seconds(roots), time.monotonic()
            for minute in range(1, options.minutes + 1):
                time.sleep(max(0.0, at + 60 - time.monotonic()))
                now, cpu = time.monotonic(), tree_cpu_seconds(roots)
                cores = (cpu - before) / (now - at)
                print(f"minute {minute}: {cores:.3f} cores", flush=True)
                before, at = cpu, now
            assert all(proc.poll() is None for proc in flow.procs), "a flow process exited while idle"
            print(f"idle CPU of a {processes}-process flow: {cores:.2f} cores (minute {options.minutes})")
        finally:
            flow.kill()
            publisher.close()
            collector.close()


if __name__ == "__main__":
    main()
