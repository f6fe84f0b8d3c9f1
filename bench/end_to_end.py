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
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho  # noqa: E402
from bytewax import operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.testing import run_main  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.dataflow import TOPICS, synthetic_events  # noqa: E402
from connectors.mqtt import MQTTConnection, MQTTSink, MQTTSource  # noqa: E402
from connectors.mqtt.testing import Mosquitto  # noqa: E402
from driver_stats.contract import encode_event  # noqa: E402
from driver_stats.settings import Settings  # noqa: E402
from flows.driver_stats import build_flow  # noqa: E402


class _Counted(MQTTSource):
    """Stops (EOF) after `n` messages: a bench-only wrapper."""

    def __init__(self, n: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n = n
        self.got = 0

    def build_part(self, step_id, for_part, resume_state):
        part = super().build_part(step_id, for_part, resume_state)
        inner, source = part.next_batch, self

        def next_batch():
            if source.got >= source.n:
                raise StopIteration
            batch = inner()
            source.got += len(batch)
            return batch

        part.next_batch = next_batch
        return part


def queue_events(broker: Mosquitto, source: MQTTSource, messages: list[tuple[str, bytes]]) -> None:
    """Create the source's session, then publish everything while it is away."""
    source.build_part("in", "in-0", None).close()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(1000)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=100_000, help="events (default 100000)")
    parser.add_argument("--protocol", default="3.1.1", choices=["3.1.1", "5"], help="input MQTT version")
    args = parser.parse_args()
    events = synthetic_events(args.n, drivers=10_000)
    messages = [(TOPICS[type(e)], encode_event(e)) for e in events]
    topics = sorted(set(TOPICS.values()))
    settings = Settings(max_future_seconds=10**10)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(tmp) as broker:
        conn = MQTTConnection(host=broker.host, port=broker.port)

        bare = _Counted(args.n, conn, topics, client_id="bare", protocol=args.protocol, max_unacked=50_000)
        queue_events(broker, bare, messages)
        flow = Dataflow("bare_input")
        op.inspect("drop", op.filter("none", op.input("in", flow, bare), lambda _m: False))
        bare_seconds = timed(flow)

        full = _Counted(args.n, conn, topics, client_id="full", protocol=args.protocol, max_unacked=50_000)
        queue_events(broker, full, messages)
        published: list[int] = [0]
        sink = MQTTSink(conn, client_id="full", on_written=lambda batch, _s: published.__setitem__(
            0, published[0] + len(batch)))
        full_seconds = timed(build_flow(settings, full, sink))

    bare_rate, full_rate = bare.got / bare_seconds, full.got / full_seconds
    print(f"MQTT input only ({args.protocol}): {bare_rate:10,.0f} events/s ({bare.got} in {bare_seconds:.2f}s)")
    print(f"end to end, QoS 1:      {full_rate:10,.0f} events/s ({full.got} in {full_seconds:.2f}s, "
          f"{published[0]} messages published and acked)")
    print(f"end-to-end/input ratio: {full_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
