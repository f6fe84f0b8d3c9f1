"""``driver-stats generate``: publish realistic input traffic, optionally with its truth.

The traffic itself is :class:`~driver_stats.traffic.Traffic` (plain,
deterministic Python); this module only paces it on the wall clock and
publishes it with QoS 1 (MQTT 3.1.1), then writes the truth files.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Optional

from driver_stats.contract import INPUTS, to_json
from driver_stats.settings import Settings
from driver_stats.traffic import COUNTED_KINDS, Generated, Kind, Traffic

from .common import (
    INVALID_FILE,
    LATE_FILE,
    CLIError,
    add_url_option,
    connect_client,
    load_settings,
    mqtt_client,
    say,
)

HELP = "publish realistic input traffic (journeys, ratings, tips) to the input topics"

DESCRIPTION = """\
Publishes journeys (JourneyFinished: mostly DROP_OFF with distance and price,
some cancels), and the ratings and tips riders give after some drop-offs, for
--drivers drivers at --rate messages per second, QoS 1. Event times are the
wall-clock time of publishing unless --start gives a historical start (then
they advance from it at the same pace). Runs until --count messages or
--duration seconds, or Ctrl-C.

The knobs are fractions of all messages: --duplicates repeats recent
messages byte for byte (counted once by the flow), --late sends events older
than window + allowed lateness for drivers that already have newer events
(the flow rejects them as late), --invalid sends undecodable or invalid
messages, --out-of-order sends valid events delayed within half the allowed
lateness (still counted). Window and lateness come from
DRIVER_STATS_WINDOW_SECONDS and DRIVER_STATS_ALLOWED_LATENESS_SECONDS, as for
the flow.

--truth DIR writes every counted message (valid, out-of-order, duplicates) as
history files (driver_rated.jsonl, driver_tipped.jsonl,
journey_finished.jsonl, proto3 JSON mapping): 'driver-stats replay DIR' then
computes the stats the flow must publish. Late and invalid messages go to
DIR/late.jsonl and DIR/invalid.jsonl (topic, base64 payload, why).

Each event goes to its driver's shard topic, <topic>/<shard> with shard =
CRC-32 of the driver id's UTF-8 bytes modulo 64, as a producer should publish
for the flow to scale out (each input partition then reads only its shards);
messages without a driver id go to the plain topic. --plain-topics publishes
everything on the plain topics instead (one input partition reads those).
"""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1")
    return value


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    return parse


def parse_time(text: str) -> float:
    """Unix seconds from ``text``: a number, or an RFC 3339 / ISO 8601 time (UTC if no offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give an RFC 3339 time (2024-01-01T12:00:00Z) or Unix seconds"
        ) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_url_option(parser)
    parser.add_argument("--rate", type=_positive(float), default=20.0, metavar="N",
                        help="messages per second (default 20)")
    parser.add_argument("--drivers", type=_positive(int), default=10, metavar="N",
                        help="number of drivers, driver-001 ... (default 10)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="random seed: the same seed and --start give the same messages "
                        "(default: a random seed, shown on stderr)")
    parser.add_argument("--count", type=_positive(int), metavar="N", help="stop after N messages")
    parser.add_argument("--duration", type=_positive(float), metavar="SECONDS",
                        help="stop after SECONDS of publishing")
    parser.add_argument("--start", type=_time, metavar="TIME",
                        help="event time of the first message, RFC 3339 or Unix seconds "
                        "(default: now, i.e. event times are the wall clock)")
    parser.add_argument("--duplicates", type=_fraction, default=0.0, metavar="F",
                        help="fraction of messages that repeat a recent message (default 0)")
    parser.add_argument("--late", type=_fraction, default=0.0, metavar="F",
                        help="fraction of late events the flow must reject (default 0)")
    parser.add_argument("--invalid", type=_fraction, default=0.0, metavar="F",
                        help="fraction of undecodable or invalid messages (default 0)")
    parser.add_argument("--out-of-order", type=_fraction, default=0.0, metavar="F", dest="out_of_order",
                        help="fraction of events delayed within the allowed lateness (default 0)")
    parser.add_argument("--truth", type=Path, metavar="DIR",
                        help="write the published messages to DIR as history files (counted ones) "
                        "and late.jsonl / invalid.jsonl (rejected ones); DIR is created")
    parser.add_argument("--format", choices=("protobuf", "json"), default="protobuf",
                        help="payload format on the wire (default protobuf, the contract's)")
    parser.add_argument("--client-id", metavar="ID",
                        help="MQTT client id (default driver-stats-generate-<pid>)")
    parser.add_argument("--plain-topics", action="store_true", dest="plain_topics",
                        help="publish on the plain input topics, not on <topic>/<driver's shard>")
    parser.add_argument("--quiet", "-q", action="store_true", help="no status lines on stderr")
    return parser


class TruthWriter:
    """The truth files of one run in ``directory`` (truncated at start)."""

    def __init__(self, directory: Path, topics: tuple[str, ...]):
        """``topics`` are the input topics, in the order of ``INPUTS``."""
        directory.mkdir(parents=True, exist_ok=True)
        self._by_topic: dict[str, IO[bytes]] = {
            topic: open(directory / row.history_file, "wb") for row, topic in zip(INPUTS, topics)
        }
        self._late = open(directory / LATE_FILE, "wb")
        self._invalid = open(directory / INVALID_FILE, "wb")

    def write(self, g: Generated, published_on: str) -> None:
        """Record ``g``, published on ``published_on`` (its topic or its shard topic)."""
        if g.kind in COUNTED_KINDS:
            self._by_topic[g.topic].write(to_json(g.event) + b"\n")
            return
        record = {"topic": published_on, "payload": base64.b64encode(g.payload).decode(), "why": g.why}
        if g.event is not None:
            record["event"] = json.loads(to_json(g.event))
        (self._late if g.kind == Kind.LATE else self._invalid).write(json.dumps(record).encode() + b"\n")

    def close(self) -> None:
        for f in (*self._by_topic.values(), self._late, self._invalid):
            f.close()


def run(args: argparse.Namespace) -> int:
    settings = load_settings({"mqtt_url": args.url})
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    traffic = _traffic(args, settings, seed)
    client = mqtt_client(settings, args.client_id or f"driver-stats-generate-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connect_client(client, settings)
    truth = TruthWriter(args.truth, settings.input_topics) if args.truth else None
    if not args.quiet:
        stop = f"{args.count} messages" if args.count else (f"{args.duration:g}s" if args.duration else "Ctrl-C")
        say(f"generate: seed {seed}, {args.drivers} drivers, {args.rate:g} msg/s to {settings.mqtt_url} "
            f"until {stop}")
    counts: Counter[str] = Counter()
    unacked: list = []
    interrupted = False
    try:
        _publish(client, traffic, args, truth, counts, unacked)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if truth is not None:
            truth.close()
        waiting = _wait_acked(unacked, 2.0 if interrupted else 30.0)
        client.disconnect()
        client.loop_stop()
    if not args.quiet:
        total = sum(counts.values())
        kinds = ", ".join(f"{counts[k]} {k}" for k in sorted(counts))
        say(f"generate: published {total} messages ({kinds or 'none'})"
            + (f"; truth in {args.truth}" if args.truth else ""))
    if interrupted:
        raise KeyboardInterrupt
    if waiting:
        raise CLIError(f"{waiting} messages were not acknowledged by {settings.mqtt_host}:{settings.mqtt_port}")
    return 0


def _traffic(args: argparse.Namespace, settings: Settings, seed: int) -> Traffic:
    try:
        return Traffic(
            seed,
            args.drivers,
            start=args.start,
            rate=args.rate,
            window=settings.window_seconds,
            lateness=settings.allowed_lateness_seconds,
            duplicates=args.duplicates,
            late=args.late,
            invalid=args.invalid,
            out_of_order=args.out_of_order,
            topics=settings.input_topics,
            payload_format=args.format,
        )
    except ValueError as err:
        raise CLIError(str(err)) from None


def _publish(client, traffic: Traffic, args: argparse.Namespace, truth: Optional[TruthWriter],
             counts: Counter, unacked: list) -> None:
    """Publish ``traffic`` on the wall clock until --count or --duration; ``counts`` and ``unacked`` grow as it goes."""
    wall0 = time.monotonic()
    for g in traffic.events(args.count):
        due = wall0 + (g.at - traffic.start)
        if args.duration is not None and due - wall0 >= args.duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        topic = g.topic if args.plain_topics else g.shard_topic
        info = client.publish(topic, g.payload, qos=1)
        if info.rc != 0:
            raise CLIError(f"cannot publish to {topic!r}: error {info.rc}")
        unacked.append(info)
        if len(unacked) > 5000:
            unacked[:] = [i for i in unacked if not i.is_published()]
        counts[g.kind] += 1
        if truth is not None:
            truth.write(g, topic)


def _wait_acked(infos, timeout: float) -> int:
    """Wait until the broker acknowledged ``infos``; return how many were not."""
    deadline = time.monotonic() + timeout
    for info in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            info.wait_for_publish(left)
        except (RuntimeError, ValueError):
            break
    return sum(1 for info in infos if not info.is_published())


__all__ = ["add_parser", "run", "TruthWriter"]
