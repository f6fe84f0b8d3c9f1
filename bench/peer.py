"""Peer benchmark: the same job end to end in driver-stats and in Pathway, same broker, same events.

    .venv/bin/python bench/peer.py [--runs 3] [--events 102000] [--drivers 2000]

The job is the product's: per driver and tumbling 10-minute interval, the
drop-offs, driver cancels, distance, price, tips and average rating, with
repeats (same message type and journey_id) counted once. The events
(seeded: the same in every run) are journeys of ``--drivers`` drivers over
4 hours of event time that end shortly before the wall clock, a rating and
a tip after some drop-offs, and 2 % redelivered repeats, published roughly
in event-time order (at most 15 s out of order, so no event is late for
either system), each on its driver's shard topic (``sharded_topic``). Then
one flush event (a tip of an extra driver, past the last interval's end +
the lateness) closes every interval in both systems; its own interval never
closes, so it has no record.

One private mosquitto (connectors/mqtt/testing.py, logging subscriptions)
serves every run. A run starts the system under test and waits until it is
subscribed (driver-stats: its log line ``subscribed to N topics``; Pathway:
the broker's log of its subscriptions), then a publisher in a separate
process (MQTT 3.1.1, QoS 1, unbounded in flight) publishes all N events as
fast as it can. A subscriber here decodes the records (driver-stats:
protobuf on ``output/driver_stats``; Pathway: JSON on
``output/peer_pathway``). The rate is N / (arrival of the last expected
record - first publish). Runs alternate, driver-stats first; each prints
its rate, its records, the publisher's own rate and the CPU seconds of the
system and of the broker during the run. Every run's records must equal the
expected ones (``driver_stats.testing.live_flow.expected_stats``, the
project's reference model): the same (driver, interval start) -> totals and
average rating (as a protobuf float; compared with a relative tolerance of
1e-6), nothing missing, extra or conflicting. So both systems produced the
same records, which the output says; otherwise the exit status is 1 with a
one-line reason. Then the medians and, last,
``driver-stats/pathway end-to-end ratio: X.XX`` (median over median).

driver-stats runs as the README says a user runs it, one process with one
worker: ``python -m bytewax.run flows.driver_stats -r DIR -s 1 -b 0`` with
this venv's python, recovery on (a store made by ``python -m
bytewax.recovery DIR 1``, fresh per run), ``DRIVER_STATS_MQTT_URL`` and a
fresh ``DRIVER_STATS_CLIENT_ID`` per run, every other setting at its default
(window 600 s, lateness 30 s); its persistent broker sessions are removed
after its run. Pathway runs bench/peer_pathway.py with
``.venv-peer/bin/python``, one process with Pathway's default of one worker,
its input committed every 1 s (driver-stats' epoch). Its input is one MQTT
session (paho-mqtt, QoS 1) on ``input/#`` handed to ``pw.io.python.read``
with each message's topic: every message in publish order, as driver-stats'
one input partition reads them; the product's 30 s lateness then gives the
same records. Pathway's own ``pw.io.mqtt.read`` cannot: one reader for all
three inputs cannot tell a rating from a tip (its table has no topic, and
both messages have the same protobuf layout), and with one reader per
input Pathway's event-time clock (the newest event of all) runs ahead of
the lagging readers by up to ~45 minutes of this replay's event time, so it
drops their events, whatever the lateness (bench/peer_pathway.py's
docstring has the figures).

Fairness: driver-stats acknowledges its input only once the epoch's snapshot
is committed (so mosquitto holds, and persists every second, up to 50,000
unacknowledged messages) and publishes records only after that commit:
at-least-once across crashes. Pathway runs without persistence and
acknowledges each message as soon as it has read it: at most once across a
crash. Both publish records with QoS 1. Pathway's Rust engine runs beside
its Python threads and can use more than one core (compare the CPU seconds).
The rate includes each system's delay from the flush to its last record:
up to the end of the epoch that read the flush, and its commit, for
driver-stats (README, "Speed"); about one commit for Pathway. On a small machine the publisher, the broker,
the subscriber and the system share the cores.

Pathway is installed only for this benchmark, in ``.venv-peer``
(git-ignored), which the script creates on first use; by hand:
``python3 -m venv .venv-peer && .venv-peer/bin/pip install pathway==0.33.0
protobuf==<pyproject.toml's pin> paho-mqtt==<its pin>``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from connectors.mqtt.testing import Mosquitto  # noqa: E402
from driver_stats.contract import (  # noqa: E402
    INPUT_OF,
    STATS_TOPIC,
    DriverRated,
    DriverTipped,
    FinishReason,
    JourneyFinished,
    decode_stats,
    encode_event,
    float32,
    sharded_topic,
)
from driver_stats.testing.live_flow import expected_stats  # noqa: E402

WINDOW, LATENESS = 600, 30  # the product's defaults
PATHWAY_TOPIC = "output/peer_pathway"
PEER_VENV = ROOT / ".venv-peer"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PATHWAY_COMMIT_MS = 1000
QUIET_SECONDS = 60  # a run is incomplete when no expected record arrived for this long after publishing


def ensure_peer_venv() -> None:
    """Create .venv-peer with Pathway (and the project's protobuf and paho-mqtt pins) unless it is there."""
    if PEER_PYTHON.exists():
        return
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    packages = ["pathway==0.33.0"] + [p for p in pins if p.startswith(("protobuf==", "paho-mqtt=="))]
    print(f"creating {PEER_VENV.name} with {' '.join(packages)} (once)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_PYTHON), "-m", "pip", "install", "-q", *packages], check=True)
    except subprocess.CalledProcessError:
        raise SystemExit(f"could not install Pathway; by hand: python3 -m venv .venv-peer && "
                         f".venv-peer/bin/pip install {' '.join(packages)}") from None


# -- the events ----------------------------------------------------------------


def make_events(count: int, drivers: int, now: float, seed: int = 7) -> tuple[list, object]:
    """`count` events in publish order over 24 intervals, and the flush event LATENESS + 1 s after the last end.

    The flush's event time is at most 1 s after `now` (driver-stats rejects events more than 300 s ahead).
    """
    rng = random.Random(seed)
    end = int(now - LATENESS) // WINDOW * WINDOW  # every event is before it
    start = end - 24 * WINDOW
    journeys = math.ceil(count / 1.75)
    keyed: list[tuple[float, object]] = []  # (publish order key, event)
    at = lambda seconds: datetime.fromtimestamp(round(seconds, 3), timezone.utc)  # noqa: E731

    def add(event, seconds: float) -> None:
        key = seconds + rng.uniform(0, 10)  # out of order by up to 10 s
        keyed.append((key, event))
        if rng.random() < 0.02:  # at-least-once delivery: a repeat up to 5 s after
            keyed.append((key + rng.uniform(0, 5), event))

    for number, ended in enumerate(sorted(rng.uniform(start, end - 60) for _ in range(journeys))):
        driver, journey = f"driver-{rng.randrange(drivers)}", f"journey-{number}"
        reason = rng.choices(list(FinishReason), weights=(85, 7, 5, 3))[0]
        drop = reason is FinishReason.DROP_OFF
        add(JourneyFinished(journey_id=journey, driver_id=driver, rider_id=f"rider-{rng.randrange(10**6)}",
                            finish_reason=reason, started_at=at(ended - rng.uniform(120, 1800)), ended_at=at(ended),
                            distance=rng.randrange(500, 20000) if drop else 0,
                            price=rng.randrange(500, 5000) if drop else 0), ended)
        if drop and rng.random() < 0.6:
            rated = ended + rng.uniform(5, 40)
            add(DriverRated(driver_id=driver, rider_id="r", journey_id=journey, rated_at=at(rated),
                            rating=rng.randint(1, 5)), rated)
        if drop and rng.random() < 0.3:
            tipped = ended + rng.uniform(5, 50)
            add(DriverTipped(driver_id=driver, rider_id="r", journey_id=journey, tipped_at=at(tipped),
                             amount=rng.randrange(50, 500)), tipped)
    events = [event for _key, event in sorted(keyed, key=lambda pair: pair[0])][:count]
    last_end = math.ceil(max(e.event_time.timestamp() for e in events) / WINDOW) * WINDOW
    flush = DriverTipped(driver_id="flush", rider_id="r", journey_id="flush",
                         tipped_at=at(last_end + LATENESS + 1), amount=1)
    return events, flush


Values = tuple  # drop-offs, driver cancels, distance, price, tips, average rating


def expected_records(events: list) -> dict[tuple[str, int], Values]:
    return {(s.driver_id, int(s.interval_start.timestamp())): _values(s)
            for s in expected_stats(events, WINDOW).values()}


def _values(s) -> Values:
    return (s.total_drop_offs, s.total_driver_cancels, s.total_distance, s.total_price, s.total_tips, s.avg_rating)


def decode_driver_stats(payload: bytes) -> tuple[tuple[str, int], Values]:
    s = decode_stats(payload)
    return (s.driver_id, int(s.interval_start.timestamp())), _values(s)


def decode_pathway(payload: bytes) -> tuple[tuple[str, int], Values] | None:
    r = json.loads(payload)
    if r.get("diff", 1) != 1:
        return None  # a retraction: never expected with exactly_once_behavior, counted as a conflict
    avg = float32(r["rating_sum"] / r["ratings"]) if r["ratings"] else 0.0
    return (r["driver_id"], r["interval_start"]), (r["drop_offs"], r["driver_cancels"], r["distance"],
                                                    r["price"], r["tips"], avg)


# -- MQTT: the records' subscriber and the publisher process ----------------------


class Records:
    """Subscribes to both systems' records; keeps each record and when the last expected one arrived."""

    def __init__(self, broker: Mosquitto):
        self.lock = threading.Lock()
        self.decoders = {STATS_TOPIC: decode_driver_stats, PATHWAY_TOPIC: decode_pathway}
        self.reset(set())
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="peer-records")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([(STATS_TOPIC, 1), (PATHWAY_TOPIC, 1), ("rejected/#", 1)])
        self.client.loop_start()

    def reset(self, expected: set) -> None:
        with self.lock:
            self.expected = expected
            self.got: dict[tuple[str, int], Values] = {}
            self.repeats = self.conflicts = self.rejected = self.arrived = 0
            self.last_arrival = time.monotonic()  # of an expected record (time.monotonic)

    def _on_message(self, _client, _userdata, message) -> None:
        now = time.monotonic()
        if message.topic.startswith("rejected/"):
            self.rejected += 1
            return
        decoded = self.decoders[message.topic](message.payload)
        with self.lock:
            if decoded is None:
                self.conflicts += 1
                return
            key, values = decoded
            if key in self.got:
                self.repeats += self.got[key] == values
                self.conflicts += self.got[key] != values
                return
            self.got[key] = values
            if key in self.expected:
                self.arrived += 1
                self.last_arrival = now

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(host: str, port: int, messages: list[tuple[str, bytes]], conn) -> None:
    """The publisher process: connect, say ready, publish everything on 'go' (QoS 1), report (first, last) times."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"peer-publisher-{os.getpid()}",
                         protocol=paho.MQTTv311)
    client.max_inflight_messages_set(0)  # unbounded (a bound makes paho rescan its queue per PUBACK)
    client.connect(host, port)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)
    conn.send("ready")
    conn.recv()
    first = time.monotonic()
    for begin in range(0, len(messages), 20_000):  # packet ids wrap at 65,535
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages[begin:begin + 20_000]]
        infos[-1].wait_for_publish(600)
    conn.send((first, time.monotonic()))
    client.disconnect()
    client.loop_stop()


def forget_sessions(broker: Mosquitto, prefix: str) -> None:
    """End the broker sessions of every client id `prefix`-... seen (else they would queue later runs' input)."""
    ids = set(re.findall(rf" as ({re.escape(prefix)}-\S+) \(", broker.log_file.read_text()))
    for client_id in ids:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                             clean_session=True)
        client.connect(broker.host, broker.port)
        client.loop_start()
        while not client.is_connected():
            time.sleep(0.01)
        client.disconnect()
        client.loop_stop()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` and of its live descendants (driver-stats' MQTT processes)."""
    if pid is None:
        return 0.0
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, ticks = {pid}, 0
    for _ in range(4):  # children, grandchildren, ...
        tree |= {p for p, (parent, _) in stats.items() if parent in tree}
    ticks = sum(stats[p][1] for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the systems -------------------------------------------------------------------


class System:
    """One run of a system under test as a subprocess; `ready` once it is subscribed."""

    def __init__(self, name: str, topic: str, command: list[str], env: dict[str, str], log: Path):
        self.name, self.topic, self.command, self.env, self.log = name, topic, command, env, log
        log.parent.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def ready(self, broker: Mosquitto) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DriverStatsSystem(System):
    def __init__(self, broker: Mosquitto, workdir: Path, client_id: str):
        recovery = workdir / "recovery"
        recovery.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIVER_STATS_")}
        self.settings = {"DRIVER_STATS_MQTT_URL": f"mqtt://{broker.host}:{broker.port}",
                         "DRIVER_STATS_CLIENT_ID": client_id}
        env.update(self.settings, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True, env=env,
                       capture_output=True)
        command = [sys.executable, "-m", "bytewax.run", "flows.driver_stats", "-r", str(recovery), "-s", "1",
                   "-b", "0"]
        super().__init__("driver-stats", STATS_TOPIC, command, env, workdir / "driver-stats.log")

    def ready(self, broker: Mosquitto) -> bool:
        return " subscribed to " in self.log.read_text()


class PathwaySystem(System):
    def __init__(self, broker: Mosquitto, workdir: Path, client_id: str):
        self.client_id = client_id
        command = [str(PEER_PYTHON), str(ROOT / "bench" / "peer_pathway.py"), f"mqtt://{broker.host}:{broker.port}",
                   client_id, PATHWAY_TOPIC, "--window", str(WINDOW),
                   "--lateness", str(LATENESS), "--commit-ms", str(PATHWAY_COMMIT_MS)]
        super().__init__("pathway", PATHWAY_TOPIC, command, dict(os.environ), workdir / "pathway.log")

    def ready(self, broker: Mosquitto) -> bool:
        # mosquitto logs each SUBSCRIBE (log_type subscribe): "<client id> <qos> <filter>"
        return f" {self.client_id}-in 1 input/#" in broker.log_file.read_text()


@dataclass
class Run:
    system: str
    rate: float  # events/s end to end
    seconds: float
    publish_rate: float  # the publisher's own events/s
    records: dict
    repeats: int
    conflicts: int
    rejected: int
    cpu: float  # CPU seconds of the system during the run
    broker_cpu: float


def run_once(system: System, broker: Mosquitto, records: Records, messages: list, expected: dict) -> Run:
    ctx = multiprocessing.get_context("spawn")  # not fork: this process runs paho's thread
    here, there = ctx.Pipe()
    publisher = ctx.Process(target=publish, args=(broker.host, broker.port, messages, there))
    publisher.start()
    system.start()
    try:
        deadline = time.monotonic() + 120
        while not system.ready(broker):
            if system.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{system.name} did not get subscribed; its log: {system.log}")
            time.sleep(0.05)
        if here.recv() != "ready":
            raise SystemExit("publisher failed")
        records.reset(set(expected))
        cpu, broker_cpu = cpu_seconds(system.proc.pid), cpu_seconds(broker.pid)
        here.send("go")
        first, published = here.recv()
        publisher.join()
    except BaseException:
        publisher.kill()
        system.stop()
        raise
    while records.arrived < len(expected) and time.monotonic() - max(records.last_arrival, published) < QUIET_SECONDS:
        if system.proc.poll() is not None:
            raise SystemExit(f"{system.name} exited with {system.proc.returncode}; its log: {system.log}")
        time.sleep(0.05)
    cpu, broker_cpu = cpu_seconds(system.proc.pid) - cpu, cpu_seconds(broker.pid) - broker_cpu
    time.sleep(1)  # let any extra (wrong) record show up too
    system.stop()
    if records.arrived < len(expected):
        raise SystemExit(f"{system.name} incomplete: {records.arrived} of {len(expected)} records "
                         f"(nothing new for {QUIET_SECONDS}s); its log: {system.log}")
    seconds = records.last_arrival - first
    with records.lock:
        return Run(system.name, len(messages) / seconds, seconds, len(messages) / (published - first),
                   dict(records.got), records.repeats, records.conflicts, records.rejected, cpu, broker_cpu)


def differences(run: Run, expected: dict) -> str:
    """'' when `run` published exactly the expected records, else what differs."""
    missing = expected.keys() - run.records.keys()
    extra = run.records.keys() - expected.keys()
    wrong = [k for k in expected.keys() & run.records.keys() if not _same(run.records[k], expected[k])]
    parts = [f"{len(missing)} missing", f"{len(extra)} extra", f"{len(wrong)} wrong",
             f"{run.conflicts} conflicting repeats", f"{run.rejected} rejected messages"]
    if not (missing or extra or wrong or run.conflicts or run.rejected):
        return ""
    example = next(iter(wrong or missing or extra), None)
    return ", ".join(parts) + (f" (e.g. {example}: got {run.records.get(example)}, "
                               f"expected {expected.get(example)})" if example else "")


def _same(got: Values, want: Values) -> bool:
    return got[:5] == want[:5] and math.isclose(got[5], want[5], rel_tol=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each system (default 3)")
    parser.add_argument("--events", type=int, default=102_000, help="events before the flush event (default 102000)")
    parser.add_argument("--drivers", type=int, default=2_000, help="distinct drivers (default 2000)")
    args = parser.parse_args()
    ensure_peer_venv()
    began = time.monotonic()

    events, flush = make_events(args.events, args.drivers, time.time())
    expected = expected_records(events)
    messages = [(sharded_topic(INPUT_OF[type(e)].default_topic, e.driver_id), encode_event(e))
                for e in events + [flush]]
    print(f"{len(messages):,} events ({len(events):,} + 1 flush), {args.drivers:,} drivers, window {WINDOW}s, "
          f"lateness {LATENESS}s, {len(expected):,} records expected; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    runs: list[Run] = []
    failures: list[str] = []
    tmp = tempfile.mkdtemp(prefix="peer-")  # kept when a run fails: the logs are there
    with Mosquitto(Path(tmp, "broker"), extra_conf="log_type subscribe") as broker:
        records = Records(broker)
        for n in range(1, args.runs + 1):
            for system in (DriverStatsSystem(broker, Path(tmp, f"driver-stats-{n}"), f"peer-driver-stats-{n}"),
                           PathwaySystem(broker, Path(tmp, f"pathway-{n}"), f"peer-pathway-{n}")):
                if n == 1:
                    settings = getattr(system, "settings", {})
                    print(f"{system.name}: " + " ".join([f"{k}={v}" for k, v in settings.items()] + system.command),
                          flush=True)
                run = run_once(system, broker, records, messages, expected)
                forget_sessions(broker, f"peer-{system.name}-{n}")
                runs.append(run)
                diff = differences(run, expected)
                if diff:
                    failures.append(f"{run.system} run {n}: {diff}")
                extra = f", {run.repeats} repeated" if run.repeats else ""
                print(f"run {n} {run.system:12} {run.rate:8,.0f} events/s ({run.seconds:.2f}s, "
                      f"{len(run.records):,} records{extra}, {'NOT ' if diff else ''}as expected; "
                      f"publisher {run.publish_rate:,.0f}/s; CPU s: {run.system} {run.cpu:.1f}, "
                      f"broker {run.broker_cpu:.1f}; load average {os.getloadavg()[0]:.1f})", flush=True)
        records.close()
    if not failures:
        shutil.rmtree(tmp)

    medians = {name: statistics.median(r.rate for r in runs if r.system == name)
               for name in ("driver-stats", "pathway")}
    print(f"median: driver-stats {medians['driver-stats']:,.0f} events/s, pathway {medians['pathway']:,.0f} events/s "
          f"({time.monotonic() - began:.0f}s in all)")
    if failures:
        raise SystemExit(f"records differ ({len(failures)} runs; logs in {tmp}): {failures[0]}")
    print(f"records: both systems published the same {len(expected):,} records in every run: (driver, interval "
          f"start) -> drop-offs, driver cancels, distance, price, tips, average rating")
    print(f"driver-stats/pathway end-to-end ratio: {medians['driver-stats'] / medians['pathway']:.2f}")


if __name__ == "__main__":
    main()
