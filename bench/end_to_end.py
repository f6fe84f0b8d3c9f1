"""End-to-end throughput at QoS 1: MQTT -> full flow -> MQTT, against bare MQTT input.

    .venv/bin/python bench/end_to_end.py [N] [--protocol 3.1.1|5]

Starts a private mosquitto (connectors/mqtt/testing.py), creates the input session,
queues N contract events (protobuf, QoS 1; the synthetic mix of
bench/dataflow.py) while the flow is down, then, in the same run:

* reference: a 1-worker flow of the MQTT input alone (input -> drop);
* full: the driver-stats flow (decode, validate, dedupe, windows, encode)
  from the same kind of queue to QoS 1 publishes of every record, acked.

Each stops after N messages (records of open intervals are published at that
end). Times run from flow start, so connecting is included. The last line is
the ratio of the two rates.

    .venv/bin/python bench/end_to_end.py [N] --scale

instead runs the full flow with 2 input and 2 output partitions as 1
process and as 2 processes (one worker each, the same broker, the same
queued events), timed from starting the processes until both exit; the
last line is ``2-process/1-process ratio``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho  # noqa: E402
from bytewax import operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.testing import cluster_main, run_main  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.dataflow import TOPICS, synthetic_events  # noqa: E402
from connectors.mqtt import MQTTConnection, MQTTSink, MQTTSource  # noqa: E402
from connectors.mqtt.testing import Mosquitto  # noqa: E402
from driver_stats.contract import encode_event  # noqa: E402
from driver_stats.settings import Settings  # noqa: E402
from flows.driver_stats import build_flow  # noqa: E402


class Counted(MQTTSource):
    """Stops (EOF) once `n` messages were taken, by all processes together: a bench-only wrapper."""

    def __init__(self, n: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n = n
        self.taken = multiprocessing.Value("q", 0)

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
            with source.taken.get_lock():
                source.taken.value += len(batch)
            return batch

        part.next_batch = next_batch
        return part


def queue_events(broker: Mosquitto, source: MQTTSource, messages: list[tuple[str, bytes]]) -> None:
    """Create the source's sessions, then publish everything while they are away."""
    create_sessions(source)
    publish_all(broker, messages)


def create_sessions(source: MQTTSource) -> None:
    for part in source.list_parts():
        source.build_part("in", part, None).close()


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
    run_main(flow, epoch_interval=timedelta(seconds=1))
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_seconds(broker: Mosquitto) -> float:
    fields = Path(f"/proc/{broker.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cluster_process(flow_of, addresses: list[str], proc_id: int) -> None:
    cluster_main(flow_of(), addresses, proc_id, epoch_interval=timedelta(seconds=1), worker_count_per_proc=1)


def scaled(broker: Mosquitto, settings: Settings, messages, n: int, processes: int, protocol: str) -> tuple[float, int]:
    """Seconds for `processes` processes to take all `n` queued messages and publish every record."""
    conn = MQTTConnection(host=broker.host, port=broker.port)
    name = f"scale{processes}"
    source = Counted(n, conn, sorted(set(TOPICS.values())), client_id=name, partitions=2,
                      protocol=protocol, max_unacked=50_000)
    queue_events(broker, source, messages)
    published = multiprocessing.Value("q", 0)

    def count(batch, _seconds) -> None:
        with published.get_lock():
            published.value += len(batch)

    sink = MQTTSink(conn, client_id=name, partitions=2, on_written=count)
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(processes)]
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_cluster_process,
                          args=(lambda: build_flow(settings, source, sink, input_done=source.done), addresses, i))
             for i in range(processes)]
    broker_cpu, flows_cpu = _cpu_seconds(broker), _children_cpu_seconds()
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    seconds = time.perf_counter() - start
    broker_cpu, flows_cpu = _cpu_seconds(broker) - broker_cpu, _children_cpu_seconds() - flows_cpu
    print(f"  CPU seconds: flow processes {flows_cpu:.1f}, broker {broker_cpu:.1f}, "
          f"in {seconds:.1f}s on {os.cpu_count()} cores", flush=True)
    if any(proc.exitcode for proc in procs) or source.got < n:
        raise SystemExit(f"{processes}-process run failed: exit codes {[p.exitcode for p in procs]}, "
                         f"{source.got} of {n} taken")
    return seconds, published.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=100_000, help="events (default 100000)")
    parser.add_argument("--protocol", default="3.1.1", choices=["3.1.1", "5"], help="input MQTT version")
    parser.add_argument("--scale", action="store_true", help="1 process against 2 processes instead")
    args = parser.parse_args()
    events = synthetic_events(args.n, drivers=10_000)
    messages = [(TOPICS[type(e)], encode_event(e)) for e in events]
    topics = sorted(set(TOPICS.values()))
    settings = Settings(max_future_seconds=10**10)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(tmp) as broker:
        if args.scale:
            rates = {}
            for processes in (1, 2):
                seconds, published = scaled(broker, settings, messages, args.n, processes, args.protocol)
                rates[processes] = args.n / seconds
                print(f"{processes} process(es), 2+2 partitions: {rates[processes]:10,.0f} events/s "
                      f"({args.n} in {seconds:.2f}s, {published} messages published and acked)", flush=True)
            print(f"2-process/1-process ratio: {rates[2] / rates[1]:.2f}")
            return
        conn = MQTTConnection(host=broker.host, port=broker.port)

        bare = Counted(args.n, conn, topics, client_id="bare", protocol=args.protocol, max_unacked=50_000)
        queue_events(broker, bare, messages)
        flow = Dataflow("bare_input")
        op.inspect("drop", op.filter("none", op.input("in", flow, bare), lambda _m: False))
        bare_seconds = timed(flow)

        full = Counted(args.n, conn, topics, client_id="full", protocol=args.protocol, max_unacked=50_000)
        queue_events(broker, full, messages)
        published: list[int] = [0]
        sink = MQTTSink(conn, client_id="full", on_written=lambda batch, _s: published.__setitem__(
            0, published[0] + len(batch)))
        full_seconds = timed(build_flow(settings, full, sink, input_done=full.done))

    bare_rate, full_rate = bare.got / bare_seconds, full.got / full_seconds
    print(f"MQTT input only ({args.protocol}): {bare_rate:10,.0f} events/s ({bare.got} in {bare_seconds:.2f}s)")
    print(f"end to end, QoS 1:      {full_rate:10,.0f} events/s ({full.got} in {full_seconds:.2f}s, "
          f"{published[0]} messages published and acked)")
    print(f"end-to-end/input ratio: {full_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
