"""``driver-stats tail``: print what flows on topics, decoded, or a live per-driver table."""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import sys
import time
from typing import Optional, TextIO

from connectors.mqtt.connection import Protocol, connect_preferring_v5
from driver_stats.contract import DecodeError, EventDecoder, decode_stats, to_json
from driver_stats.settings import Settings

from .common import CLIError, add_url_option, connect_client, load_settings, mqtt_client, rejected_record, say

HELP = "print messages of topics as JSON lines (decoded), or a live per-driver table"

DESCRIPTION = """\
Subscribes (MQTT v5, QoS 1, so user properties arrive) and prints one JSON line
per message: {"topic": ..., <decoded fields>}. The output topic and the input
topics are decoded (protobuf or JSON payloads) into the proto3 JSON mapping;
messages on rejected/... show "reason" and "detail" from their user properties
and the original payload in base64; anything undecodable shows "error" and
the payload in base64. Topic filters may use MQTT wildcards (+ and #).

With --table, a live view instead: one row per driver with its latest
interval, the most recently active drivers first, redrawn in place.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tail", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "topics",
        nargs="*",
        metavar="TOPIC",
        help="topic filters to subscribe to (default: the output topic and rejected/#, "
        "from DRIVER_STATS_TOPIC_DRIVER_STATS and DRIVER_STATS_REJECTED_PREFIX)",
    )
    add_url_option(parser)
    parser.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="exit after SECONDS; with --count, exit code 1 if fewer than N messages arrived",
    )
    parser.add_argument(
        "--table", action="store_true", help="show a live per-driver table of the latest intervals"
    )
    parser.add_argument(
        "--top", type=int, default=20, metavar="N", help="rows of the table: the N most recently active drivers (default 20)"
    )
    parser.add_argument("--client-id", metavar="ID", help="MQTT client id (default driver-stats-tail-<pid>)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no status lines on stderr")
    return parser


class Describer:
    """Turns a received message into the dict printed as one JSON line."""

    def __init__(self, settings: Settings):
        self.stats_topic = settings.topic_driver_stats
        self.rejected_prefix = settings.rejected_prefix
        self.decoders = {topic: EventDecoder(t) for topic, t in settings.input_topic_types().items()}

    def __call__(self, topic: str, payload: bytes, properties: tuple = ()) -> dict:
        record: dict = {"topic": topic}
        try:
            if topic == self.stats_topic:
                record.update(json.loads(to_json(decode_stats(payload))))
                return record
            decoder = self.decoders.get(topic)
            if decoder is not None:
                record.update(json.loads(to_json(decoder.decode(payload))))
                return record
        except DecodeError as err:
            record["error"] = str(err)
        if topic.startswith(self.rejected_prefix):
            props = dict(properties)
            rejected = rejected_record(topic, props.get("reason", ""), props.get("detail", ""), payload)
            return {**record, **rejected}
        if properties:
            record["userProperties"] = [list(p) for p in properties]
        record["payload"] = base64.b64encode(payload).decode()
        return record


class LiveTable:
    """Latest interval of each driver, most recently active first."""

    def __init__(self, top: int = 20, stream: TextIO | None = None):
        self.top = top
        self.stream = stream or sys.stdout
        self.rows: dict[str, dict] = {}
        self.records = 0
        self.rejected: dict[str, int] = {}
        self.messages = 0
        self._seq = 0
        self._drawn = 0.0

    def add(self, record: dict) -> None:
        self.messages += 1
        if "driverId" in record and "intervalStart" in record:
            self.records += 1
            self._seq += 1
            current = self.rows.get(record["driverId"])
            if current is None or record["intervalStart"] >= current["intervalStart"]:
                record = dict(record, _records=(current or {}).get("_records", 0) + 1, _seq=self._seq)
                self.rows[record["driverId"]] = record
            else:
                current["_records"] += 1
        elif "reason" in record:
            self.rejected[record["reason"]] = self.rejected.get(record["reason"], 0) + 1

    def render(self) -> str:
        header = (f"{'driver':<14} {'interval (UTC)':<19} {'drop-offs':>9} {'drv-canc':>8} "
                  f"{'km':>8} {'price EUR':>10} {'tips EUR':>9} {'rating':>6} {'records':>7}")
        lines = [
            f"driver-stats — {len(self.rows)} drivers, {self.records} records, "
            f"{sum(self.rejected.values())} rejected, {self.messages} messages  ({time.strftime('%H:%M:%S')})",
            "",
            header,
            "-" * len(header),
        ]
        rows = sorted(self.rows.values(), key=lambda r: (-r["_seq"], r["driverId"]))[: self.top]
        for r in rows:
            start, end = r["intervalStart"], r["intervalEnd"]
            interval = f"{start[11:19]}-{end[11:19]}"
            lines.append(
                f"{r['driverId'][:14]:<14} {interval:<19} {r.get('totalDropOffs', 0):>9} "
                f"{r.get('totalDriverCancels', 0):>8} {r.get('totalDistance', 0) / 1000:>8.1f} "
                f"{r.get('totalPrice', 0) / 100:>10.2f} {r.get('totalTips', 0) / 100:>9.2f} "
                f"{r.get('avgRating', 0.0):>6.2f} {r['_records']:>7}"
            )
        if not rows:
            lines.append("(waiting for the first intervals to close...)")
        if self.rejected:
            lines += ["", "rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))]
        return "\n".join(lines)

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.5:
            return
        self._drawn = now
        self.stream.write("\x1b[H\x1b[2J" + self.render() + "\n")
        self.stream.flush()


class Tail:
    """A subscriber feeding ``queue`` with ``("subscribed", failed topics)`` and
    ``("message", (topic, payload, user properties))``; MQTT 5, or 3.1.1 where
    the broker lacks 5 (:attr:`v5`)."""

    def __init__(self, settings: Settings, topics: list[str], client_id: str):
        self.queue: queue.Queue = queue.Queue()
        self.topics = topics
        self.settings = settings
        self.client_id = client_id
        self.v5 = True
        self.client = None

    def _open(self, protocol: Protocol):
        client = mqtt_client(self.settings, self.client_id, protocol=protocol)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        connect_client(client, self.settings)
        return client

    def start(self) -> None:
        # An MQTT 3.1.1-only broker (amqtt): no user properties, so the
        # reason of rejected messages cannot be shown.
        self.client, protocol = connect_preferring_v5(self._open)
        self.v5 = protocol == "5"

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [t for t, rc in zip(self.topics, reason_codes) if rc.is_failure]
        self.queue.put(("subscribed", failed))

    def _on_message(self, client, userdata, msg) -> None:
        props = ()
        if msg.properties is not None:
            props = tuple(tuple(p) for p in (getattr(msg.properties, "UserProperty", None) or ()))
        self.queue.put(("message", (msg.topic, bytes(msg.payload), props)))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(args: argparse.Namespace) -> int:
    settings = load_settings({"mqtt_url": args.url})
    topics = args.topics or [settings.topic_driver_stats, settings.rejected_prefix + "#"]
    if args.count is not None and args.count < 1:
        raise CLIError(f"--count {args.count}: give 1 or more")
    return follow(
        settings,
        topics,
        count=args.count,
        timeout=args.timeout,
        table=LiveTable(args.top) if args.table else None,
        client_id=args.client_id or f"driver-stats-tail-{os.getpid()}",
        quiet=args.quiet,
    )


def follow(
    settings: Settings,
    topics: list[str],
    *,
    count: Optional[int] = None,
    timeout: Optional[float] = None,
    table: Optional[LiveTable] = None,
    client_id: str,
    quiet: bool = False,
    out: Optional[TextIO] = None,
    should_stop=lambda: False,
) -> int:
    """Print (or tabulate) messages of ``topics`` until ``count``/``timeout``/Ctrl-C/``should_stop()``."""
    out = out or sys.stdout
    describe = Describer(settings)
    tail = Tail(settings, topics, client_id)
    tail.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    if table is not None:
        out.write("\x1b[?25l")
        table.draw(force=True)
    try:
        while (count is None or seen < count) and not should_stop():
            item = _receive(tail, deadline)
            if item is None:
                break
            kind, value = item
            if kind == "idle":
                if table is not None:
                    table.draw()
            elif kind == "subscribed":
                _subscribed(value, tail, settings, quiet)
            else:
                seen += 1
                _show(describe(*value), table, out)
    finally:
        if table is not None:
            table.draw(force=True)
            out.write("\x1b[?25h")
            out.flush()
        tail.stop()
    if count is not None and seen < count:
        if not quiet:
            say(f"tail: {seen} of {count} messages before the timeout")
        return 1
    return 0


def _receive(tail: Tail, deadline: Optional[float]) -> Optional[tuple[str, object]]:
    """The subscriber's next item; ``("idle", None)`` after a quarter second without one; None past ``deadline``."""
    wait = 0.25
    if deadline is not None:
        wait = min(wait, deadline - time.monotonic())
        if wait <= 0:
            return None
    try:
        return tail.queue.get(timeout=wait)
    except queue.Empty:
        return ("idle", None)


def _subscribed(failed: list[str], tail: Tail, settings: Settings, quiet: bool) -> None:
    if failed:
        raise CLIError(f"the broker refused the subscription to {', '.join(failed)}")
    if not quiet:
        say(f"tail: subscribed to {' '.join(tail.topics)} on {settings.mqtt_host}:{settings.mqtt_port}")
    if not tail.v5:
        say("tail: the broker speaks MQTT 3.1.1 only: rejected messages arrive without their reason")


def _show(record: dict, table: Optional[LiveTable], out: TextIO) -> None:
    if table is not None:
        table.add(record)
        table.draw()
    else:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
