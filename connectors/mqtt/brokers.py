"""Private RabbitMQ, NATS and ejabberd MQTT brokers, the same shape as :class:`~.testing.Mosquitto`.

>>> with Nats(tmp_path) as broker:                # doctest: +SKIP
...     broker.port                               # a free 127.0.0.1 port (the MQTT listener)
...     broker.stop(); broker.start()             # same ports, same persisted sessions

Each runs from its Debian package as a process of its own (never the
machine's service, whose ports, node names and data it never touches) with
its configuration, data and logs in ``workdir``, on free ports, listening
on 127.0.0.1 only, anonymous clients allowed, and its persistence on, so a
stopped and restarted broker keeps persistent sessions, their queued QoS 1
messages and retained messages. The Erlang brokers (RabbitMQ, ejabberd)
run their own ``epmd`` on a free port and their own cookie (``HOME`` in
``workdir``).

``protocol`` is the newest MQTT version the broker speaks, ``name`` and
``version`` what the broker table in docs/scaling-and-brokers.md names.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

from .broker_process import BrokerProcess
from .testing import Mosquitto, free_port, wait_listening

__all__ = ["BROKERS", "Broker", "Ejabberd", "Nats", "RabbitMQ", "broker_missing"]


class Broker(BrokerProcess):
    """A broker process on 127.0.0.1 with its files in ``workdir``: start, stop, kill, restart."""

    name = "broker"
    version = ""
    protocol = "5"
    package = ""
    start_timeout = 30.0
    username: str | None = None
    """A user name clients must give (any password); None: anonymous clients are let in."""

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_file = self.workdir / "broker.log"
        self._proc: subprocess.Popen | None = None
        self.started_in: float | None = None
        """Seconds the last :meth:`start` took until the MQTT port listened."""

    # Subclasses: the command line and its environment.
    @property
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(self.workdir), "LANG": "C.UTF-8"}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Start (or restart) on the same ports and data; wait until the MQTT port listens."""
        if self.running:
            return self
        timeout = timeout or self.start_timeout
        began = time.monotonic()
        with open(self.workdir / "stderr.log", "ab") as err:
            self._proc = subprocess.Popen(self.command, cwd=self.workdir, env=self.environment(),
                                          stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                          start_new_session=True)
        if wait_listening(self.port, self._proc, timeout, self.host) and self._ready(began + timeout):
            self.started_in = time.monotonic() - began
            return self
        code = self._proc.poll()
        self.kill()
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout}s "
                           f"(exit code {code}): {self.log_tail()}")

    def _ready(self, deadline: float) -> bool:
        """Beyond the port: whatever the broker needs before it serves MQTT sessions."""
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the whole process group and wait: the broker saves its state on the way out."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        self._reap_group()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL to the process group: a crash."""
        if self._proc is not None:
            self._signal(signal.SIGKILL)
            self._proc.wait()
            self._reap_group()
            self._proc = None

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap_group(self) -> None:
        # Erlang leaves helpers (epmd, erl_child_setup) in the group it started: end them too, so
        # nothing of this broker outlives it (the group is ours: start_new_session above).
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log_paths(self) -> list[Path]:
        return sorted(self.workdir.rglob("*.log"))


class _Erlang(Broker):
    """An Erlang node with its own epmd (free port), cookie (``HOME``) and distribution port."""

    def __init__(self, workdir: str | os.PathLike) -> None:
        super().__init__(workdir)
        self.epmd_port, self.dist_port = free_port(), free_port()
        self.node = f"{self.name.lower()}{self.port}@localhost"
        (self.workdir / ".erlang.cookie").write_text(f"cookie{self.port}")
        (self.workdir / ".erlang.cookie").chmod(0o400)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1"}


class RabbitMQ(_Erlang):
    """RabbitMQ 3.10 with its MQTT plugin (MQTT 3.1.1): a private node, never the machine's."""

    name, version, protocol, package = "RabbitMQ", "3.10.8", "3.1.1", "rabbitmq-server"
    start_timeout = 60.0

    def __init__(self, workdir: str | os.PathLike) -> None:
        super().__init__(workdir)
        self.amqp_port = free_port()
        (self.workdir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.workdir / "rabbitmq.conf").write_text("\n".join([
            "listeners.tcp.1 = 127.0.0.1:%d" % self.amqp_port,
            "mqtt.listeners.tcp.1 = 127.0.0.1:%d" % self.port,
            "mqtt.allow_anonymous = true",
            # The flow acknowledges after the epoch's commit: the default 10 unacknowledged
            # messages per session would be all it reads per epoch.
            "mqtt.prefetch = 65000",
            "loopback_users = none",
            "log.file.level = info",
            "",
        ]))

    @property
    def command(self) -> list[str]:
        # The script itself: /usr/sbin/rabbitmq-server would switch to the rabbitmq user.
        return ["/usr/lib/rabbitmq/bin/rabbitmq-server"]

    def _reap_group(self) -> None:
        super()._reap_group()
        # RabbitMQ starts epmd as a daemon, outside the process group: stop this node's own.
        subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"], env=self.environment(),
                       capture_output=True, check=False)

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbit.pid"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
        }


class Nats(Broker):
    """NATS 2.9 with JetStream and its MQTT listener (MQTT 3.1.1)."""

    name, version, protocol, package = "NATS", "2.9.10", "3.1.1", "nats-server"

    def __init__(self, workdir: str | os.PathLike) -> None:
        super().__init__(workdir)
        self.client_port = free_port()
        (self.workdir / "nats.conf").write_text("\n".join([
            f'server_name: "nats{self.port}"',
            f"host: 127.0.0.1\nport: {self.client_port}",
            f'jetstream {{ store_dir: "{self.workdir / "jetstream"}" }}',
            # The flow acknowledges after the epoch's commit: let it hold as many as it may
            # (up to 10,000 per subscription: a "#" filter is two JetStream consumers, and 65,000
            # made its SUBACK fail). A message delivered and not acknowledged before a broker
            # restart comes again only after ack_wait (default 30 s): 10 s keeps the tests short.
            f"mqtt {{ host: 127.0.0.1, port: {self.port}, max_ack_pending: 10000, ack_wait: \"10s\" }}",
            f'log_file: "{self.log_file}"',
            "",
        ]))

    @property
    def command(self) -> list[str]:
        return [shutil.which("nats-server") or "/usr/sbin/nats-server", "-c", str(self.workdir / "nats.conf")]


class Ejabberd(_Erlang):
    """ejabberd 23.01 with ``mod_mqtt`` (MQTT 5), its own config, spool and logs."""

    name, version, protocol, package = "ejabberd", "23.01", "5", "ejabberd"
    username = "anyone"  # mod_mqtt refuses a CONNECT without one; its anonymous backend takes any
    start_timeout = 60.0

    def __init__(self, workdir: str | os.PathLike) -> None:
        super().__init__(workdir)
        for sub in ("spool", "log"):
            (self.workdir / sub).mkdir(exist_ok=True)
        (self.workdir / "ejabberd.yml").write_text("\n".join([
            "hosts: [localhost]",
            # Anonymous MQTT clients, as the other brokers here allow.
            "auth_method: [anonymous]",
            "anonymous_protocol: login_anon",
            "allow_multiple_connections: true",
            "loglevel: info",
            "log_rotate_count: 0",
            "listen:",
            "  - port: %d" % self.port,
            "    ip: 127.0.0.1",
            "    module: mod_mqtt",
            "    backlog: 1000",
            "acl:",
            "  local: {user_regexp: \"\"}",
            "access_rules:",
            "  mqtt_all: {allow: all}",
            "modules:",
            "  mod_mqtt:",
            "    access_subscribe: {\"#\": mqtt_all}",
            "    access_publish: {\"#\": mqtt_all}",
            "    max_queue: unlimited",
            # A session outlives its connection a day (seconds; the default is 5 minutes).
            "    session_expiry: 86400",
            "    queue_type: file",
            "",
        ]))

    @property
    def command(self) -> list[str]:
        # erl itself, as ejabberdctl would run it: ejabberdctl run by root switches to the
        # ejabberd user (with its home, so the machine's cookie). No epmd: a fixed
        # distribution port.
        return ["/usr/bin/erl", "-sname", self.node, "+K", "true", "+P", "250000",
                "-start_epmd", "false", "-erl_epmd_port", str(self.dist_port),
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                "-mnesia", "dir", f'"{self.workdir / "spool"}"', "-s", "ejabberd", "-noinput"]

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "ERL_LIBS": "/usr/lib/x86_64-linux-gnu",
                "EJABBERD_CONFIG_PATH": str(self.workdir / "ejabberd.yml"),
                "EJABBERD_LOG_PATH": str(self.workdir / "log" / "ejabberd.log"),
                "EJABBERD_PID_PATH": str(self.workdir / "ejabberd.pid")}


BROKERS: dict[str, type] = {"mosquitto": Mosquitto, "rabbitmq": RabbitMQ, "nats": Nats, "ejabberd": Ejabberd}
"""The brokers the tests run on, by the name their test ids carry."""

_BINARIES = {"rabbitmq": "/usr/lib/rabbitmq/bin/rabbitmq-server", "nats": "/usr/sbin/nats-server",
             "ejabberd": "/usr/sbin/ejabberdctl"}


def broker_missing(name: str) -> str | None:
    """One line saying how to install broker ``name``, or None when it is installed."""
    binary = _BINARIES.get(name)
    if binary is None or os.access(binary, os.X_OK):
        return None
    return f"{name} not found: install it with `apt-get install -y {BROKERS[name].package}`"
