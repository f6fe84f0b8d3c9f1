"""``driver-stats``: the operator's command line.

Subcommands (``driver-stats SUBCOMMAND --help`` explains each option):

* ``generate`` — publish realistic input traffic (with knobs for duplicates,
  late, invalid and out-of-order events) and optionally its truth files;
* ``tail`` — print the messages of topics as JSON lines, or a live table;
* ``replay`` — rebuild stats from history files with the flow's dataflow;
* ``demo`` — a broker, the flow, the generator and the live table at once.

One module per subcommand, each with ``add_parser(subparsers)`` (its
options, with help) and ``run(args) -> int``; :mod:`.common` holds what they
share. The traffic itself is :mod:`driver_stats.traffic` (plain Python,
usable without a broker). This package sits on top of :mod:`flows`: it may
import the flow and everything below it, and nothing imports it.

Broker and topic settings come from the ``DRIVER_STATS_*`` variables, as for
the flow. Errors are one line on stderr and exit code 2; Ctrl-C stops
cleanly (exit code 130).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

from connectors.mqtt import MQTTConnectError

from . import demo, generate, replay, tail
from .common import CLIError, interrupt

SUBCOMMANDS = (generate, tail, replay, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driver-stats",
        description="Operator tools for the driver-stats stream processor. Broker, topics, interval "
        "length and lateness come from the DRIVER_STATS_* environment variables (as for the flow).",
        epilog="Run 'driver-stats SUBCOMMAND --help' for the options of a subcommand.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers).set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM stops like Ctrl-C: cleanup code runs, no traceback.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return args.run(args)
    except (CLIError, MQTTConnectError) as err:
        print(f"driver-stats {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"driver-stats {args.command}: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `driver-stats tail | head`: the reader left.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
