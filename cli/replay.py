"""``driver-stats replay DIR``: rebuild the stats of a history with the same dataflow.

Runs :func:`flows.driver_stats.build_flow` over the history files with
``complete_input=True``; what it reads and writes is :data:`DESCRIPTION`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bytewax.testing import run_main

from connectors.files import CollectSink, FileSource, Progress
from connectors.mqtt import MQTTMessage
from driver_stats.contract import INPUTS, decode_stats, to_json
from driver_stats.core.windows import close_order
from driver_stats.settings import Settings
from flows.driver_stats import build_flow

from .common import REJECTED_FILE, STATS_FILE, CLIError, load_settings, rejected_record, say, write_atomically

HELP = "rebuild per-driver stats from history files with the flow's own dataflow"

DESCRIPTION = """\
Rebuilds per-driver stats from history files with the flow's own dataflow.
Reads DIR/driver_rated.jsonl, DIR/driver_tipped.jsonl and
DIR/journey_finished.jsonl (one event per line, proto3 JSON mapping; missing
files count as empty), runs the flow's dataflow over them with the input
taken as complete (so no event is late whatever its order), and writes
DIR/driver_stats.jsonl (one DriverStats per line, sorted by interval start
then driver) and DIR/rejected.jsonl (every line the flow rejected, with
topic, reason and detail). Both files are replaced atomically.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "replay",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dir",
        metavar="DIR",
        type=Path,
        help="history directory: reads driver_rated.jsonl, driver_tipped.jsonl, journey_finished.jsonl; "
        "writes driver_stats.jsonl and rejected.jsonl",
    )
    parser.add_argument(
        "--window",
        type=int,
        metavar="SECONDS",
        help="interval length (default: $DRIVER_STATS_WINDOW_SECONDS, else 600)",
    )
    parser.add_argument(
        "--workers", "-w", type=int, default=1, metavar="N", help="Bytewax worker threads (default 1)"
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress lines on stderr (errors are still shown)"
    )
    return parser


def replay(
    directory: Path, settings: Settings, *, workers: int = 1, progress: Progress | None = None
) -> tuple[list, list]:
    """Run the dataflow over ``directory``; return (stats records, rejected messages)."""
    files = [
        (directory / row.history_file, topic)
        for row, topic in zip(INPUTS, settings.input_topics)
        if (directory / row.history_file).is_file()
    ]
    out: list = []
    if files:
        source = FileSource(files, on_read=progress)
        flow = build_flow(settings, source, CollectSink(out), complete_input=True)
        try:
            if workers == 1:
                run_main(flow)
            else:
                from bytewax.run import cli_main

                cli_main(flow, workers_per_process=workers)
        except Exception as err:  # noqa: BLE001 - one line for the operator
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise CLIError(f"the dataflow failed: {type(cause).__name__}: {cause}") from err
    stats_topic = settings.topic_driver_stats
    stats = close_order(decode_stats(m.payload) for m in out if m.topic == stats_topic)
    rejected = [m for m in out if m.topic != stats_topic]
    return stats, rejected



def rejected_line(message: MQTTMessage, prefix: str) -> bytes:
    """One line of ``rejected.jsonl``: the source topic, reason, detail and the history line."""
    source_topic = message.topic[len(prefix):] if message.topic.startswith(prefix) else message.topic
    reason, detail = message.user_property("reason") or "", message.user_property("detail") or ""
    record = rejected_record(source_topic, reason, detail, message.payload, text=True)
    return json.dumps(record, ensure_ascii=False).encode()


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not directory.is_dir():
        raise CLIError(f"{directory} is not a directory")
    if args.workers < 1:
        raise CLIError(f"--workers {args.workers}: give 1 or more")
    settings = load_settings({"window_seconds": args.window})
    names = [row.history_file for row in INPUTS]
    if not any((directory / name).is_file() for name in names):
        say(f"no history files in {directory} (expected {', '.join(names)}): writing empty output")
    progress = None if args.quiet else Progress("replay")
    started = time.monotonic()
    stats, rejected = replay(directory, settings, workers=args.workers, progress=progress)
    write_atomically(directory / STATS_FILE, [to_json(s) for s in stats])
    lines = sorted(rejected_line(m, settings.rejected_prefix) for m in rejected)
    write_atomically(directory / REJECTED_FILE, lines)
    if not args.quiet:
        elapsed = time.monotonic() - started
        read = progress.count if progress else 0
        say(
            f"replay: {read} events read in {elapsed:.1f}s; wrote {len(stats)} records to "
            f"{directory / STATS_FILE}, {len(rejected)} rejected lines to {directory / REJECTED_FILE}"
        )
    return 0


__all__ = ["add_parser", "run", "replay"]
