"""``driver-stats demo``: broker + flow + generator + live table, in one command.

Every child runs in its own process group; on exit (normal, Ctrl-C, SIGTERM,
or an error) each group gets SIGTERM, then SIGKILL after a timeout, so no
process is left behind. The temporary directory (broker config and data,
recovery store, logs) is removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from connectors.mqtt.testing import Mosquitto, find_mosquitto, free_port, wait_listening
from driver_stats.settings import PREFIX

from .common import CLIError, interrupt, load_settings
from .tail import LiveTable, follow

HELP = "start a broker, the flow, the generator and the live table in one command"

DESCRIPTION = """\
Starts, in a temporary directory:
  1. a broker on a free 127.0.0.1 port: mosquitto if installed (persistence on,
     unlimited queues and in-flight windows), else the embedded amqtt broker;
  2. the flow: python -m bytewax.run flows.driver_stats with recovery
     (-r DIR -s 2 -b 0), DRIVER_STATS_WINDOW_SECONDS=--window and
     DRIVER_STATS_ALLOWED_LATENESS_SECONDS=--lateness;
  3. the generator (driver-stats generate) at --rate for --drivers drivers,
     with a few duplicates, late, invalid and out-of-order messages;
  4. the live table of output/driver_stats and rejected/# (driver-stats tail
     --table), or JSON lines with --no-table.
Ctrl-C or SIGTERM stops everything; no process is left behind.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto",
                        help="which broker to start (default auto: mosquitto if found, else amqtt)")
    parser.add_argument("--rate", type=float, default=20.0, metavar="N", help="generator messages per second (default 20)")
    parser.add_argument("--drivers", type=int, default=8, metavar="N", help="number of drivers (default 8)")
    parser.add_argument("--window", type=int, default=10, metavar="SECONDS", help="interval length (default 10)")
    parser.add_argument("--lateness", type=int, default=2, metavar="SECONDS", help="allowed lateness (default 2)")
    parser.add_argument("--clean", action="store_true",
                        help="generate only valid, on-time messages (default: about 2%% duplicates, "
                        "1%% late, 1%% invalid, 5%% out of order)")
    parser.add_argument("--no-table", action="store_true", dest="no_table",
                        help="print the output and rejected messages as JSON lines instead of the table")
    parser.add_argument("--top", type=int, default=20, metavar="N", help="rows of the table (default 20)")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS (default: run until Ctrl-C)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, broker data) at exit")
    return parser


class Children:
    """Child processes, each the leader of its own process group."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, argv: list[str], log: Path, env: Optional[dict] = None, cwd=None) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True,
            )
        self.procs.append((name, proc, log))
        return proc

    def check(self) -> None:
        """Raise CLIError if a child exited."""
        for name, proc, log in self.procs:
            code = proc.poll()
            if code is not None:
                raise CLIError(f"the {name} exited with code {code}: {last_line(log)} (log: {log})")

    def stop_all(self, timeout: float = 5.0) -> None:
        """SIGTERM every group (newest first), wait, then SIGKILL what is left."""
        procs, self.procs = self.procs[::-1], []
        for _, proc, _ in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc, _ in procs:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc, _ in procs:
            # Also reaps grandchildren that outlived their leader.
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    # The root cause of a chained Python traceback is its first exception line.
    causes = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit): ", line)]
    return (causes[:1] or lines[-1:] or ["(empty log)"])[0].strip()[:400]


def run(args: argparse.Namespace) -> int:
    for name in ("rate", "drivers", "window"):
        if getattr(args, name) <= 0:
            raise CLIError(f"--{name} must be > 0")
    if args.lateness < 0:
        raise CLIError("--lateness must be >= 0")
    load_settings()  # a bad DRIVER_STATS_* value stops here, with its one line
    broker = args.broker
    mosquitto = find_mosquitto()
    if broker == "auto":
        broker = "mosquitto" if mosquitto else "amqtt"
    if broker == "mosquitto" and not mosquitto:
        raise CLIError("mosquitto not found: install it (apt-get install -y mosquitto) or use --broker amqtt")

    workdir = Path(tempfile.mkdtemp(prefix="driver-stats-demo-"))
    children = Children()

    def cleanup() -> None:
        children.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(cleanup)
    previous_hup = signal.signal(signal.SIGHUP, interrupt)
    # Ctrl-C stops the demo however it was started: a SIGINT that the parent
    # ignored or blocked (a background job, a test runner) is inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        return _run(args, broker, workdir, children)
    except KeyboardInterrupt:
        return 0
    finally:
        # Ctrl-C during cleanup must not leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cleanup()
        atexit.unregister(cleanup)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, previous_hup)


def _run(args, broker: str, workdir: Path, children: Children) -> int:
    port = _start_broker(children, broker, workdir)
    client_id = f"demo-{os.getpid()}"
    env = _flow_environment(args, port, client_id)
    if broker == "amqtt":  # it keeps no offline session's queue, so fails the order check at start
        env[PREFIX + "BROKER_ORDER"] = "topic"
    settings = load_settings(environ=env)
    recovery = _start_flow(children, workdir, env, client_id)

    generate = [sys.executable, "-m", "cli", "generate", "--rate", str(args.rate),
                "--drivers", str(args.drivers), "--client-id", f"{client_id}-generate"]
    if not args.clean:
        generate += ["--duplicates", "0.02", "--late", "0.01", "--invalid", "0.01", "--out-of-order", "0.05"]
    children.start("generator", generate, workdir / "generate.log", env=env, cwd=workdir)

    print(
        f"driver-stats demo: {broker} on 127.0.0.1:{port}, the flow (window {args.window}s, lateness "
        f"{args.lateness}s, recovery in {recovery}), the generator ({args.rate:g} msg/s, {args.drivers} drivers); "
        f"logs in {workdir}; stop with Ctrl-C",
        file=sys.stderr, flush=True,
    )

    def should_stop() -> bool:
        children.check()
        return False

    follow(
        settings,
        [settings.topic_driver_stats, settings.rejected_prefix + "#"],
        timeout=args.duration,
        table=None if args.no_table else LiveTable(args.top),
        client_id=f"{client_id}-tail",
        quiet=True,
        should_stop=should_stop,
    )
    return 0


def _start_broker(children: Children, broker: str, workdir: Path) -> int:
    """Start the broker on a free port; return the port once it listens."""
    port = free_port()
    if broker == "mosquitto":
        command = Mosquitto(workdir, port=port, autosave_interval=5).command
    else:
        command = [sys.executable, "-m", "cli.amqtt_broker", str(port)]
    proc = children.start(f"broker ({broker})", command, workdir / "broker.log")
    if not wait_listening(port, proc, 15.0):
        children.check()
        raise CLIError(f"the {broker} broker did not listen on 127.0.0.1:{port} within 15s")
    return port


def _flow_environment(args, port: int, client_id: str) -> dict[str, str]:
    """The children's environment: the demo broker, --window and --lateness; the operator's topic names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({k: v for k, v in os.environ.items() if k.startswith(PREFIX + "TOPIC_") or k == PREFIX + "REJECTED_PREFIX"})
    env.update({
        PREFIX + "MQTT_URL": f"mqtt://127.0.0.1:{port}",
        PREFIX + "WINDOW_SECONDS": str(args.window),
        PREFIX + "ALLOWED_LATENESS_SECONDS": str(args.lateness),
        PREFIX + "CLIENT_ID": client_id,
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _start_flow(children: Children, workdir: Path, env: dict[str, str], client_id: str) -> Path:
    """Start the flow with a fresh recovery store; return the store once the flow subscribed."""
    recovery = workdir / "recovery"
    recovery.mkdir()
    init = subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], env=env,
                          capture_output=True, text=True, cwd=workdir)
    if init.returncode != 0:
        lines = (init.stderr or init.stdout).strip().splitlines() or ["(no output)"]
        raise CLIError(f"cannot initialise the recovery store {recovery}: {lines[-1]}")
    children.start("flow", [sys.executable, "-m", "bytewax.run", "flows.driver_stats",
                            "-r", str(recovery), "-s", "2", "-b", "0"], workdir / "flow.log", env=env, cwd=workdir)
    _wait_flow_ready(children, workdir, client_id)
    return recovery


def flow_subscribed(log_text: str, client_id: str) -> bool:
    """Whether a log (the broker's or the flow's) shows the flow's input client connected."""
    return f"{client_id}-in" in log_text or any(
        "mqtt input" in line and "connected" in line for line in log_text.splitlines()
    )


def _wait_flow_ready(children: Children, workdir: Path, client_id: str, timeout: float = 20.0) -> None:
    """Wait until the flow's input client connected (its subscriptions follow the CONNACK)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children.check()
        text = ""
        for name in ("mosquitto.log", "flow.log"):
            try:
                text += (workdir / name).read_text(errors="replace")
            except OSError:
                pass
        if flow_subscribed(text, client_id):
            time.sleep(1.0)  # let the SUBACKs come back
            return
        time.sleep(0.2)
