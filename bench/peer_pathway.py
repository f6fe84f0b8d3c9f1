"""The driver-stats job written for Pathway, for bench/peer.py (run by `.venv-peer/bin/python`).

    .venv-peer/bin/python bench/peer_pathway.py MQTT_URL CLIENT_ID OUTPUT_TOPIC \
        [--window 600] [--lateness 30] [--commit-ms 1000]

Input: one MQTT session (paho-mqtt, QoS 1) subscribed to ``input/#``, every
shard topic of the three inputs, handed to Pathway by ``pw.io.python.read``
with each message's input name: every message in publish order, as
driver-stats' one input partition reads them. A Python UDF parses the
contract's protobuf (the project's generated ``events_pb2.py``), repeats
are dropped by (message type, journey_id), and the totals are summed per
driver over tumbling event-time windows aligned to the Unix epoch with
``exactly_once_behavior(shift=lateness)``: a window is emitted once, when
the newest event time Pathway has seen passes its end + the lateness, and
takes no event after that. The records go to OUTPUT_TOPIC as JSON
(``pw.io.mqtt.write``, QoS 1), one per driver and interval: ``driver_id``,
``interval_start`` (Unix seconds), the totals, ``rating_sum`` and
``ratings`` (the reader divides: ``avg_rating`` is their mean as a protobuf
float, 0 without ratings, as CONTRACT.md says).

Why not Pathway's own ``pw.io.mqtt.read`` (tried): its table holds only the
payload, not the topic, and a rating and a tip have the same protobuf
layout, so one reader for all inputs cannot tell them apart; with one
reader per input, Pathway's event-time clock is the newest event time of
all three, and the three sessions drift apart by thousands of messages
under load (up to ~45 minutes of bench/peer.py's event time, 4 hours
replayed in seconds). With 30 s Pathway then dropped ~4,000 of 33,361
records' events and got ~10,000 more wrong; with 2 hours it still missed
records in some runs; and even a lateness longer than the replay fails,
since the last event (the flush) reaches its reader before the other
readers have caught up, closes every window, and their events are dropped.

What it does not do that driver-stats does: validate events (the benchmark
sends only valid ones), publish rejections, forget old dedupe keys, or keep
state across a restart (no Pathway persistence: each message is
acknowledged to the broker as soon as it is read).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import paho.mqtt.client as paho
import pathway as pw
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """A generated protobuf module of the contract, without importing the driver_stats package (msgspec)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "driver_stats" / "contract" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


events_pb2 = _load("events_pb2")
DROP_OFF, DRIVER_CANCEL = 0, 2

# One row per event: driver, journey, event time (µs), drop-offs, driver cancels,
# distance, price, tip, rating sum, ratings.
Row = tuple[str, str, int, int, int, int, int, int, int, int]
COLUMNS = ("driver_id", "journey_id", "t", "drop_offs", "driver_cancels", "distance", "price", "tips",
           "rating_sum", "ratings")


def _micros(ts) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000  # driver-stats truncates to µs too


def rated(data: bytes) -> Row:
    m = events_pb2.DriverRated.FromString(data)
    return (m.driver_id, m.journey_id, _micros(m.rated_at), 0, 0, 0, 0, 0, m.rating, 1)


def tipped(data: bytes) -> Row:
    m = events_pb2.DriverTipped.FromString(data)
    return (m.driver_id, m.journey_id, _micros(m.tipped_at), 0, 0, 0, 0, m.amount, 0, 0)


def finished(data: bytes) -> Row:
    m = events_pb2.JourneyFinished.FromString(data)
    # Distance and price sum over every journey that ended (CONTRACT.md), whatever its reason.
    return (m.driver_id, m.journey_id, _micros(m.ended_at), int(m.finish_reason == DROP_OFF),
            int(m.finish_reason == DRIVER_CANCEL), m.distance, m.price, 0, 0, 0)


PARSERS = {"driver_rated": rated, "driver_tipped": tipped, "journey_finished": finished}


def parse(kind: str, data: bytes) -> Row:
    return PARSERS[kind](data)


class _Message(pw.Schema):
    kind: str  # the input's name: driver_rated, driver_tipped, journey_finished
    data: bytes


class _Subscription(pw.io.python.ConnectorSubject):
    """One paho session on input/#: every input's messages in publish order."""

    def __init__(self, url: str, client_id: str):
        super().__init__()
        host, port = url.removeprefix("mqtt://").split(":")
        self.host, self.port, self.client_id = host, int(port), client_id

    def run(self) -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        client.on_connect = lambda c, _userdata, _flags, _reason, _props: c.subscribe("input/#", qos=1)
        client.on_message = lambda _c, _userdata, m: self.next(kind=m.topic.split("/")[1], data=m.payload)
        client.connect(self.host, self.port)
        client.loop_forever()


def read_events(url: str, client_id: str, commit_ms: int) -> pw.Table:
    """One row per message: its input's name and the columns of its Row."""
    raw = pw.io.python.read(_Subscription(url, client_id), schema=_Message, autocommit_duration_ms=commit_ms,
                            name="input")
    parsed = raw.select(pw.this.kind, row=pw.udf(parse, deterministic=True)(pw.this.kind, pw.this.data))
    return parsed.select(pw.this.kind, **{c: pw.this.row[i] for i, c in enumerate(COLUMNS)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="mqtt://host:port")
    parser.add_argument("client_id", help="prefix of the MQTT client ids")
    parser.add_argument("output_topic")
    parser.add_argument("--window", type=int, default=600, help="interval seconds (default 600)")
    parser.add_argument("--lateness", type=int, default=30, help="allowed lateness seconds (default 30)")
    parser.add_argument("--commit-ms", type=int, default=1000, help="the input's autocommit_duration_ms")
    args = parser.parse_args()

    events = read_events(args.url, f"{args.client_id}-in", args.commit_ms)
    # At-least-once delivery: an event is (message type, journey_id); repeats are byte-identical here.
    unique = events.groupby(pw.this.kind, pw.this.journey_id).reduce(
        *(pw.reducers.any(events[c]) for c in COLUMNS if c != "journey_id"))
    micros = 1_000_000
    stats = unique.windowby(
        pw.this.t,
        window=pw.temporal.tumbling(duration=args.window * micros, origin=0),
        instance=pw.this.driver_id,
        behavior=pw.temporal.exactly_once_behavior(shift=args.lateness * micros),
    ).reduce(
        driver_id=pw.this._pw_instance,
        interval_start=pw.this._pw_window_start // micros,
        **{c: pw.reducers.sum(pw.this[c]) for c in COLUMNS[3:]},
    )
    pw.io.mqtt.write(stats, f"{args.url}/?client_id={args.client_id}-out", args.output_topic, qos=1,
                     format="json")
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


if __name__ == "__main__":
    main()
