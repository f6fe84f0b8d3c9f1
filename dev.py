#!/usr/bin/env python3
"""Set-up and entry points for a fresh machine that has only Python 3.11.

    ./dev.py test [PYTEST ARGS]   # the test suite (what CI runs)
    ./dev.py demo                 # broker + flow + generator + live table
    ./dev.py shell                # a shell inside the project's environment

Each creates ``.venv`` on first use and reuses it; it reinstalls the project
only when ``pyproject.toml`` changed. The tests need the brokers (mosquitto,
RabbitMQ, NATS, ejabberd) and Prometheus (``prometheus`` and ``promtool``, for the alert rules and the
dashboard): where one is missing this installs it with apt-get (as root), or
stops with one line saying how.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed-from"
PARALLEL = ["-n", "3", "--dist", "loadgroup"]  # tests/conftest.py: the whole flows one at a time


def say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def ensure_environment() -> None:
    """Create .venv and install the project with its test extras, once per pyproject change."""
    if sys.version_info < (3, 11):
        sys.exit(f"dev.py: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PYTHON.exists():
        say(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    say("installing the project and its test dependencies (pinned in pyproject.toml)")
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f"{ROOT}[test]"],
        check=True,
    )
    STAMP.write_text(wanted)


# Debian package -> the binaries the tests run from it.
TEST_PACKAGES = {
    "mosquitto": ["mosquitto"],  # private brokers
    # The broker matrix (tests/flow/test_brokers.py, connectors/mqtt/brokers.py): private nodes, never the services.
    "rabbitmq-server": ["rabbitmq-server"],
    "nats-server": ["nats-server"],
    "ejabberd": ["ejabberdctl"],
    "prometheus": ["prometheus", "promtool"],  # scrapes a live flow; checks and unit-tests the alert rules
}


def _installed(binary: str) -> bool:
    return bool(shutil.which(binary)) or any(Path(d, binary).exists() for d in ("/usr/sbin", "/usr/bin"))


def ensure_test_tools() -> None:
    """Install the Debian packages the tests need with apt-get (as root), once; or say how in one line."""
    missing = [pkg for pkg, binaries in TEST_PACKAGES.items() if not all(_installed(b) for b in binaries)]
    if not missing:
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        say(f"{' and '.join(missing)} not found: installing with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env)
        return
    sys.exit(f"dev.py: {' and '.join(missing)} not found: install (Debian/Ubuntu: "
             f"sudo apt-get install -y {' '.join(missing)}), then run again")


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("help", [])
    if command == "test":
        ensure_environment()
        ensure_test_tools()
        # Keep /usr/sbin on PATH: Debian installs mosquitto there.
        env = dict(os.environ, PATH=f"{os.environ.get('PATH', '')}:/usr/sbin")
        # Three at a time: most tests wait on brokers and timers (the suite
        # uses a fifth of two cores run one by one). `-n 0` runs them one by one.
        parallel = [] if any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args) else PARALLEL
        return subprocess.run([str(PYTHON), "-m", "pytest", *parallel, *args], cwd=ROOT, env=env).returncode
    if command == "demo":
        ensure_environment()
        os.execv(str(VENV / "bin" / "driver-stats"), ["driver-stats", "demo", *args])
    if command == "shell":
        ensure_environment()
        env = dict(os.environ, VIRTUAL_ENV=str(VENV), PATH=f"{VENV / 'bin'}:{os.environ.get('PATH', '')}")
        os.execve(os.environ.get("SHELL", "/bin/sh"), [os.environ.get("SHELL", "/bin/sh")], env)
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
