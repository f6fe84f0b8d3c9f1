"""Throughput of connectors.mqtt input through a Bytewax flow (QoS 1).

    .venv/bin/python bench/mqtt_throughput.py [N] [--protocol 3.1.1|5]

Starts a private mosquitto (tests/mosquitto.py), creates the input's
persistent session, queues N 100-byte QoS 1 messages while the flow is
down, then runs a 1-worker flow (input -> count) in-process until it has
received N messages and prints messages/s (time from flow start, so
connecting is included). The broker already holds all messages, so this
measures the connector and paho, not the publisher.
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

from connectors.mqtt import MQTTConnection, MQTTSource  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=100_000)
    parser.add_argument("--protocol", default="3.1.1", choices=["3.1.1", "5"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(tmp) as broker:
        conn = MQTTConnection(host=broker.host, port=broker.port)
        source = _Counted(args.n, conn, ["bench"], client_id="bench",
                          protocol=args.protocol, max_pending=50_000)
        # Create the session and subscription, then go away.
        source.build_part("in", "bench#0", None).close()
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.max_inflight_messages_set(1000)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        while not pub.is_connected():
            time.sleep(0.01)
        for start in range(0, args.n, 20_000):  # paho's mids wrap at 65535
            infos = [pub.publish("bench", b"x" * 100, qos=1)
                     for _ in range(min(20_000, args.n - start))]
            infos[-1].wait_for_publish(120)
        pub.disconnect()
        pub.loop_stop()

        flow = Dataflow("bench")
        inp = op.input("in", flow, source)
        op.inspect("sink", op.filter("none", inp, lambda _m: False))
        start = time.perf_counter()
        run_main(flow, epoch_interval=timedelta(seconds=1))
        took = time.perf_counter() - start
        print(f"protocol {args.protocol}: {source.got} messages in {took:.2f}s = "
              f"{source.got / took:,.0f} msg/s")


if __name__ == "__main__":
    main()
