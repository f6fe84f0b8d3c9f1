"""The real flow (`python -m bytewax.run flows.driver_stats`) as subprocesses, for tests and benchmarks.

Also: what the flow should publish for a set of events (:func:`expected_stats`)
and how to read what it did publish (:func:`published_stats`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from connectors.mqtt import MQTTMessage
from connectors.mqtt.testing import Mosquitto, free_port, wait_for
from driver_stats.contract import STATS_TOPIC, DriverStats, Event, decode_stats
from driver_stats.core.windows import DriverWindows, Refused

ROOT = Path(__file__).resolve().parents[2]


class LiveFlow:
    """One dataflow of ``processes`` processes × ``workers`` workers, settings by env."""

    def __init__(
        self,
        broker: Mosquitto,
        workdir: Path,
        *,
        client_id: str,
        window: int = 10,
        lateness: int = 1,
        workers: int = 1,
        processes: int = 1,
        recovery: bool = False,
        epoch_seconds: int = 1,
        **settings: str,
    ):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.processes, self.workers, self.epoch_seconds = processes, workers, epoch_seconds
        self.partitions = int(settings.get("partitions_per_topic", 1))
        self.env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            DRIVER_STATS_MQTT_URL=f"mqtt://{broker.host}:{broker.port}",
            DRIVER_STATS_CLIENT_ID=client_id,
            DRIVER_STATS_WINDOW_SECONDS=str(window),
            DRIVER_STATS_ALLOWED_LATENESS_SECONDS=str(lateness),
            DRIVER_STATS_LOG_LEVEL="DEBUG",
            # A broker that requires a login (connectors.mqtt.brokers) takes any password.
            **({"DRIVER_STATS_MQTT_USERNAME": broker.username, "DRIVER_STATS_MQTT_PASSWORD": "x"}
               if getattr(broker, "username", None) else {}),
            **{f"DRIVER_STATS_{k.upper()}": str(v) for k, v in settings.items()},
        )
        self.recovery = workdir / "recovery" if recovery else None
        if self.recovery is not None:
            self.recovery.mkdir(exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "bytewax.recovery", str(self.recovery), str(processes * workers)],
                check=True, env=self.env, capture_output=True,
            )
        self.procs: list[subprocess.Popen] = []
        self.starts = 0

    def _command(self, index: int, addresses: str | None) -> list[str]:
        command = [sys.executable, "-m", "bytewax.run", "flows.driver_stats",
                   "-w", str(self.workers), "-s", str(self.epoch_seconds)]
        if addresses:
            command += ["-i", str(index), "-a", addresses]
        if self.recovery is not None:
            command += ["-r", str(self.recovery), "-b", "0"]
        return command

    def log_path(self, index: int) -> Path:
        return self.workdir / f"flow-{index}.log"

    def logs(self) -> str:
        return "".join(p.read_text() for p in self.workdir.glob("flow-*.log"))

    def child_pids(self) -> dict[str, int]:
        """The MQTT partitions' child processes of the running flow: label (``mqtt-in-0``, ``mqtt-out-0``) -> pid.

        Read from their start lines (``input child mqtt-in-0 (pid 123)
        started``, fields ``child`` and ``pid``), the latest of each, and
        kept only while that pid is a child of one of this flow's processes
        (so a line of an earlier start, or a reused pid, never counts).
        """
        pids: dict[str, int] = {}
        for line in self.logs().splitlines():
            if '"child":' not in line:
                continue
            try:
                record = json.loads(line)
                pids[record["child"]] = int(record["pid"])
            except (ValueError, KeyError, TypeError):
                continue
        flow = {proc.pid for proc in self.procs if proc.poll() is None}
        return {label: pid for label, pid in pids.items() if parent_pid(pid) in flow}

    def _input_subscriptions(self) -> int:
        # After the SUBACK: a message published from then on reaches the partition.
        return sum(line.count('"message":"mqtt input') for line in self.logs().splitlines()
                   if " subscribed to " in line)

    def start(self, timeout: float = 30.0, order: list[tuple[int, float]] | None = None) -> LiveFlow:
        """Start every process; ``order``: (process index, seconds to wait before starting it), in turn."""
        self.starts += 1
        before = self._input_subscriptions()
        addresses = None
        if self.processes > 1:
            addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(self.processes))
        for index, delay in order or [(index, 0.0) for index in range(self.processes)]:
            time.sleep(delay)
            with open(self.log_path(index), "ab") as log:
                self.procs.append(subprocess.Popen(
                    self._command(index, addresses), cwd=self.workdir, env=self.env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        wanted = before + self.partitions
        wait_for(lambda: self._input_subscriptions() >= wanted or any(p.poll() is not None for p in self.procs),
                 timeout, "flow's input partitions subscribed")
        assert all(p.poll() is None for p in self.procs), self.logs()[-4000:]
        return self

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> list[int]:
        codes = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc in self.procs:
            codes.append(proc.wait(timeout))
        self.procs = []
        return codes

    def __enter__(self) -> LiveFlow:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (Linux ``/proc``), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces: state, ppid


def expected_stats(events: list[Event], window: int) -> dict[tuple[str, object], DriverStats]:
    """Every event counted (the input is complete, none late): what the flow must publish."""
    drivers: dict[str, DriverWindows] = {}
    for event in events:
        windows = drivers.setdefault(event.driver_id, DriverWindows(window, float("inf")))
        verdict = windows.add(event, event.event_time.timestamp(), stream_time=0.0)
        if isinstance(verdict, Refused):  # repeats are fine; nothing may be refused
            raise ValueError(f"not a countable event ({verdict.reason}: {verdict.detail}): {event}")
    return {(s.driver_id, s.interval_start): s for w in drivers.values() for s in w.close_all()}


def published_stats(messages: list[MQTTMessage], topic: str = STATS_TOPIC):
    """(latest record by (driver, interval start), byte-identical repeats, conflicting records)."""
    records: dict[tuple[str, object], bytes] = {}
    repeats = conflicts = 0
    for message in messages:
        if message.topic != topic:
            continue
        stats = decode_stats(message.payload)
        key = (stats.driver_id, stats.interval_start)
        if key in records:
            if records[key] == message.payload:
                repeats += 1
            else:
                conflicts += 1
        records[key] = message.payload
    return {key: decode_stats(p) for key, p in records.items()}, repeats, conflicts


def wait_for_records(collector, expected: dict, timeout: float = 60.0, topic: str = STATS_TOPIC):
    """Wait until a record arrived for every expected (driver, interval)."""
    def arrived():
        got, _, _ = published_stats(list(collector.messages), topic)
        return set(expected) <= set(got)

    try:
        wait_for(arrived, timeout, f"{len(expected)} records on {topic}")
    except AssertionError:
        got, _, _ = published_stats(list(collector.messages), topic)
        missing = sorted(set(expected) - set(got))[:5]
        raise AssertionError(f"missing {len(set(expected) - set(got))} records, e.g. {missing}") from None
    time.sleep(0.5)  # let any extra (wrong) records show up too
