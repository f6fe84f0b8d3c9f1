"""End-to-end throughput at QoS 1 (MQTT -> driver-stats flow -> MQTT), and how it scales out.

Both modes start a private mosquitto (connectors/mqtt/testing.py), create
the flow's input sessions, then queue N contract events (protobuf, QoS 1;
the synthetic mix of bench/dataflow.py, ~10k drivers) while the flow is
down, each on its driver's shard topic ``<topic>/<shard>``
(``driver_stats.contract.sharded_topic``), as the producers do. The flow's
input and output are wired as the live flow wires them (flows/live.py
``mqtt_source`` and ``mqtt_sink``: the source reading the shard topics with
the event time as its watermark, each partition of both in a process of its
own) in the product's default protocol (MQTT 5, 3.1.1 only for a broker
without it), the stream clock on its low watermark, and the sink publishing
each record with QoS 1 at once (``commit_gated=False``, as the live flow
without a recovery directory). There is no recovery; epochs last 1 s.
``Settings(max_future_seconds=10**10)`` accepts the 2024 event times. A
flow stops once its input partitions have taken N messages between them
(end of input: every open interval closes and its record is published and
acknowledged before the flow exits). Times run from starting the flow to
its end, so connecting is included.

    .venv/bin/python bench/end_to_end.py [N] [--protocol default|5|3.1.1]

one process, one worker, one input and one output partition, in turn:

* input only: the MQTT input alone, reading in a process of its own as the
  live flow's does (input -> drop; no position function);
* end to end: the driver-stats flow (decode, validate, dedupe, windows,
  encode, publish).

Prints each rate (and the input protocol used) and, last, the ratio of the
two rates. ``--protocol`` forces one protocol on both inputs (default: the
product's default).

    .venv/bin/python bench/end_to_end.py [N] --scale [--processes 1,2,4]

runs the end-to-end flow as P = 1, 2 and 4 processes (``cluster_main``),
one worker each, ``DRIVER_STATS_PARTITIONS_PER_TOPIC`` = P (P input and P
output partitions, one of each per process), each on the same N events
queued anew for its own sessions (client id ``scale<P>``). For each P one
line: events/s (N / wall seconds from starting the processes until all have
exited); CPU seconds per 1,000 events of the flow processes (user + system,
all their threads) and of the broker (from /proc, over the same span); and
whether the stats records the flow published (each one acknowledged by the
broker, gathered from the sink's ``on_written`` in every process) equal
P=1's: the same (driver, interval_start) -> payload bytes, none twice.
Then ``2-process/1-process ratio`` (events/s at P=2 over P=1); with P=1 and
4, the reference: bare Bytewax (``bare_keyed``: ``key_on`` and a count per
driver in ``stateful_map``) on the same events, decoded, each process's
input partition holding the shards its MQTT partition reads, run as 1 and
4 processes the same way, and its ``bare Bytewax 4-process/1-process CPU
per event``, what Bytewax itself pays for more processes on this machine,
and the CPU that 4 processes add to 1, ours beside Bytewax's; last, ours: ``4-process/1-process CPU per event`` ((flow + broker CPU) per
event at P=4 over P=1). The 1-minute load average is printed too: on a machine with
fewer cores than P processes plus the broker, or one busy with other work,
the processes share cores and the rates say more about the machine than
about the flow.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import pickle
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402
from bytewax import operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition  # noqa: E402
from bytewax.testing import TestingSink, cluster_main, run_main  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.dataflow import TOPICS, synthetic_events  # noqa: E402
from connectors.mqtt import MQTTSource  # noqa: E402
from connectors.mqtt.testing import Mosquitto, create_sessions, free_port, process_cpu_seconds  # noqa: E402
from driver_stats.contract import INPUT_SHARDS, decode_stats, encode_event, input_shard, sharded_topic  # noqa: E402
from driver_stats.core.stream_clock import StreamClock  # noqa: E402
from driver_stats.settings import Settings  # noqa: E402
from flows.driver_stats import build_flow  # noqa: E402
from flows.live import mqtt_connection, mqtt_sink, mqtt_source  # noqa: E402

EPOCH = timedelta(seconds=1)


class Counted(MQTTSource):
    """Stops (EOF) once `n` messages were taken, by all processes together: a bench-only wrapper.

    ``taken`` is a ``multiprocessing.Value`` shared with the processes forked
    after it was made (default: a new one).
    """

    def __init__(self, n: int, *args, taken=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n = n
        self.taken = multiprocessing.Value("q", 0) if taken is None else taken

    @property
    def got(self) -> int:
        return self.taken.value

    def done(self) -> bool:
        return self.taken.value >= self.n

    def build_part(self, step_id, for_part, resume_state):
        part = super().build_part(step_id, for_part, resume_state)
        inner, source = part.next_batch, self

        def next_batch():
            if source.done():
                raise StopIteration
            batch = inner()
            if batch:
                with source.taken.get_lock():
                    source.taken.value += len(batch)
            return batch

        part.next_batch = next_batch
        return part


def live_source(settings: Settings, n: int, *, taken=None, protocol: str | None = None) -> Counted:
    """The live flow's input (flows/live.py ``mqtt_source``), counted."""
    return mqtt_source(settings, source_type=functools.partial(Counted, n, taken=taken), protocol=protocol,
                       epoch_interval=EPOCH.total_seconds())


def queue_events(broker: Mosquitto, source: MQTTSource, messages: list[tuple[str, bytes]]) -> None:
    """Create the source's sessions, then publish everything while they are away."""
    create_sessions(source)
    publish_all(broker, messages)


def publish_all(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    """Publish every (topic, payload) with QoS 1 and wait until the broker has them all."""
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(0)  # paho re-scans its whole queue per PUBACK when bounded
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    while not pub.is_connected():
        time.sleep(0.01)
    for start in range(0, len(messages), 20_000):  # paho's mids wrap at 65535
        infos = [pub.publish(topic, payload, qos=1) for topic, payload in messages[start:start + 20_000]]
        infos[-1].wait_for_publish(120)
    pub.disconnect()
    pub.loop_stop()


def timed(flow: Dataflow) -> float:
    start = time.perf_counter()
    run_main(flow, epoch_interval=EPOCH)
    return time.perf_counter() - start


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _protocol_of(source: MQTTSource) -> str:
    return "5" if any(stats.inflight_cap for stats in source.stats.values()) else "3.1.1"


def _scale_process(settings: Settings, n: int, taken, addresses: list[str], proc_id: int, out: str) -> None:
    """One process of the scaled flow, wired as flows/live.py wires it; its published stats go to `out`."""
    source = live_source(settings, n, taken=taken)
    stats_topic = settings.topic_driver_stats
    records: list[bytes] = []
    others = [0]

    def written(messages, _seconds) -> None:
        for message in messages:
            if message.topic == stats_topic:
                records.append(message.payload)
            else:
                others[0] += 1

    sink = mqtt_sink(settings, on_written=written, commit_gated=False, epoch_interval=EPOCH.total_seconds())
    flow = build_flow(settings, source, sink, stream_clock=StreamClock.of_input(source.watermarks),
                      input_done=source.done)
    cluster_main(flow, addresses, proc_id, epoch_interval=EPOCH, worker_count_per_proc=1)
    Path(out, f"records-{proc_id}.pickle").write_bytes(pickle.dumps((records, others[0])))


class _Slice(StatefulSourcePartition):
    def __init__(self, events: list) -> None:
        self._batches = [events[i:i + 1000] for i in range(0, len(events), 1000)]

    def next_batch(self) -> list:
        if not self._batches:
            raise StopIteration
        return self._batches.pop(0)

    def snapshot(self) -> None:
        return None


class _Sliced(FixedPartitionedSource):
    """The reference's input: partition i has the events of the shards s with s mod P = i, as ours reads them."""

    def __init__(self, events: list, processes: int) -> None:
        self.events, self.processes = events, processes

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.processes)]

    def build_part(self, step_id, for_part, resume_state) -> _Slice:
        index = int(for_part)
        return _Slice([e for e in self.events if input_shard(e.driver_id) % self.processes == index])


def bare_keyed(source) -> Dataflow:
    """The reference: decoded events keyed by driver, a count per driver in Bytewax's ``stateful_map``.

    The work Bytewax itself does for our flow: exchange by key between
    workers, state per key, epochs and progress. (Its ``fold_window`` is no
    reference here: its CPU per event grows with the windows a worker holds.)
    """
    flow = Dataflow("bare_keyed")
    keyed = op.key_on("key_by_driver", op.input("events", flow, source), lambda e: e.driver_id)
    counts = op.stateful_map("count", keyed, lambda count, _event: ((count or 0) + 1,) * 2)
    op.output("out", counts, TestingSink([]))
    return flow


def _bare_process(events: list, processes: int, addresses: list[str], proc_id: int) -> None:
    flow = bare_keyed(_Sliced(events, processes))
    cluster_main(flow, addresses, proc_id, epoch_interval=EPOCH, worker_count_per_proc=1)


def bare_scaled(events: list, processes: int) -> float:
    """CPU seconds of :func:`bare_keyed` on ``events`` as P processes."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_bare_process, args=(events, processes, addresses, i))
             for i in range(processes)]
    cpu = _children_cpu_seconds()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        raise SystemExit(f"bare {processes}-process run failed: exit codes {[p.exitcode for p in procs]}")
    return _children_cpu_seconds() - cpu


class ScaleRun(msgspec.Struct):
    processes: int
    seconds: float
    flow_cpu: float
    broker_cpu: float
    records: dict
    repeats: int  # records published more than once (same driver and interval)
    others: int  # messages published on other topics (rejections)


def scaled(broker: Mosquitto, settings: Settings, messages, n: int, processes: int, tmp: str) -> ScaleRun:
    """`processes` processes, one worker and one input and output partition each, on `n` queued events."""
    settings = msgspec.structs.replace(settings, client_id=f"scale{processes}", partitions_per_topic=processes)
    queue_events(broker, live_source(settings, n), messages)
    taken = multiprocessing.Value("q", 0)
    out = tempfile.mkdtemp(dir=tmp)
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_scale_process, args=(settings, n, taken, addresses, i, out))
             for i in range(processes)]
    broker_cpu, flows_cpu = process_cpu_seconds(broker.pid), _children_cpu_seconds()
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    seconds = time.perf_counter() - start
    broker_cpu, flows_cpu = process_cpu_seconds(broker.pid) - broker_cpu, _children_cpu_seconds() - flows_cpu
    if any(proc.exitcode for proc in procs) or taken.value < n:
        raise SystemExit(f"{processes}-process run failed: exit codes {[p.exitcode for p in procs]}, "
                         f"{taken.value} of {n} taken")
    records: dict = {}
    repeats = others = 0
    for i in range(processes):
        payloads, other = pickle.loads(Path(out, f"records-{i}.pickle").read_bytes())
        others += other
        for payload in payloads:
            stats = decode_stats(payload)
            key = (stats.driver_id, stats.interval_start)
            repeats += key in records
            records[key] = payload
    return ScaleRun(processes, seconds, flows_cpu, broker_cpu, records, repeats, others)


def scale(args, settings: Settings, events: list, messages) -> None:
    counts = [int(p) for p in args.processes.split(",")]
    runs: dict[int, ScaleRun] = {}
    n = args.n
    print(f"{n} events on {INPUT_SHARDS} shards per topic, {os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.1f}); P processes x 1 worker, P input + P output partitions",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(tmp) as broker:
        settings = msgspec.structs.replace(settings, mqtt_url=f"mqtt://{broker.host}:{broker.port}")
        for p in counts:
            run = runs[p] = scaled(broker, settings, messages, n, p, tmp)
            base = runs[counts[0]]
            same = run.records == base.records and not run.repeats and not base.repeats
            extra = f", {run.repeats} repeated" if run.repeats else ""
            extra += f", {run.others} other messages" if run.others else ""
            print(f"P={p}: {n / run.seconds:8,.0f} events/s ({run.seconds:.2f}s); "
                  f"CPU s per 1,000 events: flow {1000 * run.flow_cpu / n:.3f}, "
                  f"broker {1000 * run.broker_cpu / n:.3f}; "
                  f"records equal P={counts[0]}: {'yes' if same else 'no'} ({len(run.records)} records{extra}); "
                  f"load average {os.getloadavg()[0]:.1f}",
                  flush=True)
    if 1 in runs and 2 in runs:
        print(f"2-process/1-process ratio: {runs[1].seconds / runs[2].seconds:.2f}")
    if 1 in runs and 4 in runs:
        bare = {p: bare_scaled(events, p) for p in (1, 4)}
        print(f"bare Bytewax keyed state, the same events decoded, CPU s per 1,000 events: "
              f"P=1 {1000 * bare[1] / n:.3f}, P=4 {1000 * bare[4] / n:.3f}")
        print(f"bare Bytewax 4-process/1-process CPU per event: {bare[4] / bare[1]:.2f}")
        cpu = {p: runs[p].flow_cpu + runs[p].broker_cpu for p in (1, 4)}
        print(f"CPU s per 1,000 events that 4 processes add to 1: driver-stats {1000 * (cpu[4] - cpu[1]) / n:.3f}, "
              f"bare Bytewax {1000 * (bare[4] - bare[1]) / n:.3f}")
        print(f"4-process/1-process CPU per event: {cpu[4] / cpu[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=100_000, help="events (default 100000)")
    parser.add_argument("--protocol", default="default", choices=["default", "3.1.1", "5"],
                        help="input MQTT version (default: the product's, MQTT 5 unless the broker lacks it)")
    parser.add_argument("--scale", action="store_true", help="the flow as 1, 2 and 4 processes instead")
    parser.add_argument("--processes", default="1,2,4", help="with --scale: process counts, first the base "
                        "(default 1,2,4)")
    args = parser.parse_args()
    events = synthetic_events(args.n, drivers=10_000)
    messages = [(sharded_topic(TOPICS[type(e)], e.driver_id), encode_event(e)) for e in events]
    settings = Settings(max_future_seconds=10**10)
    if args.scale:
        scale(args, settings, events, messages)
        return
    protocol = None if args.protocol == "default" else args.protocol
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(tmp) as broker:
        settings = msgspec.structs.replace(settings, mqtt_url=f"mqtt://{broker.host}:{broker.port}")
        conn = mqtt_connection(settings)

        bare = Counted(args.n, conn, settings.input_topics, client_id="bare", shards=INPUT_SHARDS,
                       protocol=protocol, max_unacked=settings.max_unacked_messages, own_process=True)
        queue_events(broker, bare, messages)
        flow = Dataflow("bare_input")
        op.inspect("drop", op.filter("none", op.input("in", flow, bare), lambda _m: False))
        bare_seconds = timed(flow)

        settings = msgspec.structs.replace(settings, client_id="full")
        full = live_source(settings, args.n, protocol=protocol)
        queue_events(broker, full, messages)
        published: list[int] = [0]
        sink = mqtt_sink(settings, commit_gated=False, epoch_interval=EPOCH.total_seconds(), on_written=lambda batch, _s: published.__setitem__(
            0, published[0] + len(batch)))
        full_seconds = timed(build_flow(settings, full, sink, stream_clock=StreamClock.of_input(full.watermarks),
                                        input_done=full.done))

    bare_rate, full_rate = bare.got / bare_seconds, full.got / full_seconds
    print(f"MQTT input only ({_protocol_of(bare)}):   {bare_rate:10,.0f} events/s ({bare.got} in {bare_seconds:.2f}s)")
    print(f"end to end ({_protocol_of(full)}), QoS 1: {full_rate:10,.0f} events/s ({full.got} in {full_seconds:.2f}s, "
          f"{published[0]} messages published and acked)")
    print(f"end-to-end/input ratio: {full_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
