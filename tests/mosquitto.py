"""A private mosquitto broker for tests: own port, own data directory.

>>> with Mosquitto(tmp_path) as broker:          # doctest: +SKIP
...     broker.port                              # a free 127.0.0.1 port
...     broker.stop(); broker.start()            # same port, same persisted data

Persistence is on (so a stopped and restarted broker keeps its sessions and
queued messages), queues and in-flight windows are unlimited (the settings
the MQTT connector relies on, see ``connectors.mqtt``), anonymous clients are
allowed unless ``users`` is given. ``tls=TlsFiles(...)`` makes the listener
TLS-only. Never the shared broker on port 1883.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from driver_stats.tools.demo import find_mosquitto, free_port  # noqa: F401 - shared with the tests

NOT_FOUND = "mosquitto not found: install it with `apt-get install -y mosquitto`"


def password_line(username: str, password: str) -> str:
    """One line of a mosquitto 2 password file (what ``mosquitto_passwd -b`` writes).

    Format ``user:$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512, base64.
    """
    salt = secrets.token_bytes(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"{username}:$7${iterations}${b64(salt)}${b64(digest)}"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener (``ca_file`` to verify client certificates)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None
    require_certificate: bool = False


class Mosquitto:
    """A mosquitto process on 127.0.0.1:<free port> with its data in ``workdir``."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        extra_conf: str = "",
    ) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError(NOT_FOUND)
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_file = self.workdir / "mosquitto.log"
        self.conf_file = self.workdir / "mosquitto.conf"
        self._proc: subprocess.Popen | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "persistence_file mosquitto.db",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "max_queued_bytes 0",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Started as root, mosquitto would switch to user "mosquitto"
            # and lose access to the private data directory.
            f"user {getpass.getuser()}",
        ]
        if users:
            pw_file = self.workdir / "passwd"
            pw_file.write_text("".join(password_line(u, p) + "\n" for u, p in users.items()))
            pw_file.chmod(0o600)
            lines.append(f"password_file {pw_file}")
        if tls:
            lines += [f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
            if tls.ca_file:
                lines.append(f"cafile {tls.ca_file}")
            if tls.require_certificate:
                lines.append("require_certificate true")
        self.conf_file.write_text("\n".join(lines) + "\n" + extra_conf + "\n")

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start (or restart) the broker on the same port and data; wait until it listens."""
        if self.running:
            return self
        with open(self.workdir / "stderr.log", "ab") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_file)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: mosquitto saves its persistence file on the way out."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash (only what the last autosave wrote survives)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for path in (self.log_file, self.workdir / "stderr.log"):
            if path.exists():
                text += path.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Mosquitto(127.0.0.1:{self.port}, running={self.running})"
