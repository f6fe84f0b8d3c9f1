"""Ingest throughput of one process with 1, 2 and 4 MQTT input partitions.

    .venv/bin/python bench/ingest.py [N] [--protocol 3.1.1|5]

Starts a private mosquitto (connectors/mqtt/testing.py) and creates the
sessions of three sources (1, 2 and 4 partitions: each partition has its own
persistent session subscribed to its shard topics), then publishes N
contract events (protobuf, QoS 1; the synthetic mix of bench/dataflow.py) on
their drivers' shard topics ONCE, while they are all away: each source's
sessions queue all N between them, each message in one session. Then, in
turn, a 1-worker flow (all partitions in this one process) of each source
alone (input -> drop) runs until its partitions have taken N messages
between them. Times run from flow start, connecting included. One line per
count, then the ratio of the 4-partition rate to the 1-partition rate (the
partitions' network threads share one interpreter, so more partitions in one
process do not read faster; more processes do: ``bench/end_to_end.py --scale``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bytewax import operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.testing import run_main  # noqa: E402

from bench.dataflow import TOPICS, synthetic_events  # noqa: E402
from bench.end_to_end import Counted, publish_all  # noqa: E402
from connectors.mqtt import MQTTConnection  # noqa: E402
from connectors.mqtt.testing import Mosquitto, create_sessions  # noqa: E402
from driver_stats.contract import INPUT_SHARDS, encode_event, sharded_topic  # noqa: E402

COUNTS = (1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=100_000, help="events (default 100000)")
    parser.add_argument("--protocol", default="5", choices=["3.1.1", "5"],
                        help="input MQTT version (default 5, what the flow uses with mosquitto)")
    args = parser.parse_args()
    events = synthetic_events(args.n, drivers=10_000)
    messages = [(sharded_topic(TOPICS[type(e)], e.driver_id), encode_event(e)) for e in events]
    topics = sorted(set(TOPICS.values()))
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(tmp) as broker:
        conn = MQTTConnection(host=broker.host, port=broker.port)
        sources = {p: Counted(args.n, conn, topics, client_id=f"ingest{p}", partitions=p, shards=INPUT_SHARDS,
                               protocol=args.protocol, max_unacked=50_000) for p in COUNTS}
        for source in sources.values():  # create every session, then publish once
            create_sessions(source)
        publish_all(broker, messages)
        rates = {}
        for p, source in sources.items():
            flow = Dataflow(f"ingest_{p}")
            op.inspect("drop", op.filter("none", op.input("in", flow, source), lambda _m: False))
            start = time.perf_counter()
            run_main(flow, epoch_interval=timedelta(seconds=1))
            seconds = time.perf_counter() - start
            rates[p] = source.got / seconds
            print(f"{p} partition{'s' if p > 1 else ' '} in 1 process ({args.protocol}): "
                  f"{rates[p]:10,.0f} events/s ({source.got} in {seconds:.2f}s, "
                  f"the broker delivered each once)", flush=True)
    print(f"4-partition/1-partition ratio: {rates[4] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
