"""A private mosquitto and MQTT test clients, for tests, benchmarks and demos.

>>> with Mosquitto(tmp_path) as broker:          # doctest: +SKIP
...     broker.port                              # a free 127.0.0.1 port
...     broker.stop(); broker.start()            # same port, same persisted data

:class:`Mosquitto` writes a configuration with persistence on (so a stopped
and restarted broker keeps its sessions and queued messages), unlimited
queues and in-flight windows (the settings this connector relies on, see
:mod:`connectors.mqtt`), and anonymous clients unless ``users`` or a
``password_file`` is given; ``acl_file`` applies an ACL, re-read on
:meth:`Mosquitto.reload`; ``tls=TlsFiles(...)`` makes the listener
TLS-only. It listens on 127.0.0.1 only. :class:`Collector` and
:class:`Publisher` are plain paho clients (:mod:`.brokers`: other brokers).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .broker_process import BrokerProcess
from .connection import MQTTConnection, connect
from .message import MQTTMessage

NOT_FOUND = "mosquitto not found: install it with `apt-get install -y mosquitto`"


def find_mosquitto() -> str | None:
    """The mosquitto binary (Debian installs it in /usr/sbin), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


_PORTS_BASE, _PORTS_PER_RUNNER = 20_000, 1_500
"""Test ports come from below Linux's ephemeral range (32768 and up), where
no outgoing connection takes them between this choice and the broker's
bind; each parallel test runner (pytest-xdist's ``gwN``) has a slice of its own."""
_handed_out: set = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, not handed out before by this process."""
    runner = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    first = _PORTS_BASE + (int(runner) % 8 if runner.isdigit() else 0) * _PORTS_PER_RUNNER
    candidates = [port for port in range(first, first + _PORTS_PER_RUNNER) if port not in _handed_out]
    secrets.SystemRandom().shuffle(candidates)
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free test port in {first}-{first + _PORTS_PER_RUNNER - 1}")


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, host: str = "127.0.0.1") -> bool:
    """Wait until ``host:port`` accepts connections; False if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False

def password_line(username: str, password: str) -> str:
    """One line of a mosquitto 2 password file (what ``mosquitto_passwd -b`` writes).

    Format ``user:$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512, base64.
    """
    salt = secrets.token_bytes(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener (``ca_file`` to verify client certificates)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None
    require_certificate: bool = False


class Mosquitto(BrokerProcess):
    """A mosquitto process on 127.0.0.1:<free port> with its data in ``workdir``.

    Args:
        workdir: Its configuration, data and logs (``mosquitto.log``).
        port: The port (default: a free one).
        users: User name -> password; anonymous clients are refused when given.
        password_file: A mosquitto password file to use (``mosquitto_passwd``'s);
            anonymous clients are refused when given.
        acl_file: A mosquitto ACL file (``acl_file``), re-read on :meth:`reload`.
        tls: Make the listener TLS-only.
        extra_conf: Lines appended to the configuration.
        autosave_interval: Seconds between saves of the persistence file.
        default_limits: Keep mosquitto's default queue and in-flight limits
            (20 in flight, 1000 queued) instead of lifting them.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        password_file: str | os.PathLike | None = None,
        acl_file: str | os.PathLike | None = None,
        tls: TlsFiles | None = None,
        extra_conf: str = "",
        autosave_interval: int = 1,
        default_limits: bool = False,
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
            f"allow_anonymous {'false' if users or password_file else 'true'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {autosave_interval}",
            *(() if default_limits else ("max_queued_messages 0", "max_inflight_messages 0", "max_queued_bytes 0")),
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
        elif password_file:
            lines.append(f"password_file {password_file}")
        if acl_file:
            lines.append(f"acl_file {acl_file}")
        if tls:
            lines += [f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
            if tls.ca_file:
                lines.append(f"cafile {tls.ca_file}")
            if tls.require_certificate:
                lines.append("require_certificate true")
        self.conf_file.write_text("\n".join(lines) + "\n" + extra_conf + "\n")

    @property
    def command(self) -> list[str]:
        """The command line that runs this broker (for a supervisor of its own)."""
        return [self.binary, "-c", str(self.conf_file)]

    # -- lifecycle ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (for CPU figures in benchmarks)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start (or restart) the broker on the same port and data; wait until it listens."""
        if self.running:
            return self
        with open(self.workdir / "stderr.log", "ab") as err:
            self._proc = subprocess.Popen(
                self.command,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        if wait_listening(self.port, self._proc, timeout, self.host):
            return self
        if self._proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: mosquitto saves its persistence file on the way out."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password and ACL files (what an operator does after editing them)."""
        if self.running:
            self._proc.send_signal(signal.SIGHUP)

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

    def log_paths(self) -> list[Path]:
        return [self.log_file, self.workdir / "stderr.log"]


# -- clients ------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads; Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    """Poll ``predicate`` until it is true; its value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def login(broker, username: str | None, password: str | None) -> tuple[str | None, str | None]:
    """The user name and password to give: these, or the name a broker requires (:mod:`.brokers`)."""
    required = getattr(broker, "username", None)
    return (username, password) if username is not None or not required else (required, "x")


class Collector:
    """Subscribes (MQTT 5, QoS 1, persistent) and records what arrives."""

    def __init__(self, broker: Mosquitto, *topics: str, client_id: str = "collector",
                 username: str | None = None, password: str | None = None) -> None:
        self.messages: list[MQTTMessage] = []
        self.arrived_at: list[float] = []  # time.time() at which each of messages arrived
        self.lock = threading.Lock()
        v5 = getattr(broker, "protocol", "5") == "5"  # the newest the broker speaks (.brokers)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5 if v5 else paho.MQTTv311, clean_session=None if v5 else False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.username_pw_set(*login(broker, username, password))
        self.client.on_message = self._on_message
        ready = threading.Event()

        def on_connect(client, userdata, flags, reason, props):
            if not flags.session_present:
                client.subscribe([(t, 1) for t in topics])
            ready.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: ready.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, **(dict(clean_start=False, properties=props) if v5 else {}))
        self.client.loop_start()
        wait_for(ready.is_set, 5, "collector connected")
        time.sleep(0.1)  # SUBACK

    def _on_message(self, client, userdata, msg) -> None:
        props = tuple(getattr(msg.properties, "UserProperty", ()) or ())
        with self.lock:
            self.messages.append(MQTTMessage(msg.topic, msg.payload, props))
            self.arrived_at.append(time.time())

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """A QoS 1 publisher (MQTT 3.1.1)."""

    def __init__(self, broker: Mosquitto, client_id: str = "publisher",
                 username: str | None = None, password: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.username_pw_set(*login(broker, username, password))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payloads, wait: bool = True) -> None:
        """Publish with QoS 1; ``wait``: until every PUBACK is back.

        Waits every 10,000 messages regardless: paho keys its outgoing
        messages by packet id, so more than 65,535 unacknowledged would
        overwrite one another and be lost before reaching the broker.
        """
        infos = []
        for n, payload in enumerate(payloads, 1):
            infos.append(self.client.publish(topic, payload, qos=1))
            if n % 10_000 == 0:
                wait_for(infos[-1].is_published, 30, "PUBACK")
        if wait:
            for info in infos:
                wait_for(info.is_published, 10, "PUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def create_sessions(source) -> None:
    """Open and close every partition of an :class:`~connectors.mqtt.MQTTSource` once.

    Its persistent sessions then exist with their subscriptions, so what is
    published from now on waits for the dataflow (a backlog), as after an outage.
    """
    for part in source.list_parts():
        source.build_part("in", part, None).close()
    source.close()


def has_session(connection: MQTTConnection, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id`` (to check that none is left behind).

    Connects as ``client_id`` with MQTT 5, clean start off and no session
    expiry, so the check itself leaves no session. Never check the client id
    of a running partition: the broker would disconnect it.
    """
    client = connection.client(client_id, protocol="5")
    present: list[bool] = []
    client.on_connect = lambda _c, _u, flags, *_: present.append(bool(flags.session_present))
    connect(client, connection, label=client_id, clean_start=False)
    client.disconnect()
    client.loop_stop()
    return present[0]
