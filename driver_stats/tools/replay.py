"""``driver-stats replay DIR``: rebuild the stats of a history with the same dataflow.

Reads ``DIR/driver_rated.jsonl``, ``DIR/driver_tipped.jsonl`` and
``DIR/journey_finished.jsonl`` (one event per line, proto3 JSON mapping;
missing files count as empty), runs :func:`flows.driver_stats.build_flow`
over them with ``complete_input=True`` (the input is complete, so no event is
late whatever its order), and writes ``DIR/driver_stats.jsonl`` (one
``DriverStats`` per line, sorted by interval start then driver) and
``DIR/rejected.jsonl`` (every line the flow rejected, with topic, reason and
detail). Both files are replaced atomically.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path

from bytewax.testing import run_main

from connectors.files import CollectSink, FileSource, Progress
from driver_stats.contract import decode_stats, to_json
from driver_stats.settings import Settings
from driver_stats.core.windows import close_order

from .common import HISTORY_FILES, REJECTED_FILE, STATS_FILE, CLIError, load_settings, say, write_atomically

HELP = "rebuild per-driver stats from history files with the flow's own dataflow"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "replay",
        help=HELP,
        description=HELP + ". " + " ".join(__doc__.split("\n\n")[1].split()),
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
    # Imported here: the flow module pulls in the MQTT connector.
    from flows.driver_stats import build_flow

    files = [
        (directory / name, topic)
        for (name, _), topic in zip(HISTORY_FILES, settings.input_topics)
        if (directory / name).is_file()
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




def rejected_line(message, prefix: str) -> bytes:
    source_topic = message.topic[len(prefix):] if message.topic.startswith(prefix) else message.topic
    record = {
        "topic": source_topic,
        "reason": message.user_property("reason") or "",
        "detail": message.user_property("detail") or "",
    }
    try:
        record["line"] = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        record["line_base64"] = base64.b64encode(message.payload).decode()
    return json.dumps(record, ensure_ascii=False).encode()


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not directory.is_dir():
        raise CLIError(f"{directory} is not a directory")
    if args.workers < 1:
        raise CLIError(f"--workers {args.workers}: give 1 or more")
    settings = load_settings({"window_seconds": args.window})
    missing = [name for name, _ in HISTORY_FILES if not (directory / name).is_file()]
    if len(missing) == len(HISTORY_FILES):
        say(f"no history files in {directory} (expected {', '.join(n for n, _ in HISTORY_FILES)}): writing empty output")
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
