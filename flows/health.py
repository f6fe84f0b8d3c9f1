"""Health of the live process: ``/livez`` and ``/readyz`` next to ``/metrics``.

Both read the MQTT clients' state (:class:`~connectors.mqtt.MQTTLinkStats`
of this process's input and output partitions) when asked; each answer is
HTTP 200 or 503 with one line of JSON, ``{"live": true, "reason": "..."}``.

``/livez`` is false only when the process cannot recover by itself:

* one of its MQTT partitions' child processes is gone (killed, crashed):
  nothing brings a partition's process back but a restart. The live flow
  exits at once when that happens (``flows.live``, exit code 3), so this is
  the backstop for the moment in between;
* a child process has been silent (no heartbeat, see
  :mod:`connectors.mqtt.process`) for :data:`WEDGED_AFTER` seconds: it is
  stopped or frozen, and the dataflow with it;
* the process is *wedged*: the dataflow has polled none of this process's
  input partitions for :data:`WEDGED_AFTER` seconds although it is not
  waiting for the broker.

Bytewax polls an idle input partition about every 10 ms, and, with
recovery, at least once per epoch; it stops polling every input of the
cluster as soon as any worker cannot finish an epoch (a step that never
returns, a deadlock), so a stall anywhere shows on every process that has
an input partition. Waiting for the broker (a client disconnected, or
records handed to it and not yet acknowledged) is not a wedge: a restart
would not help. Before the dataflow first polls its input (cluster forming,
recovery loading) the process is live.

``/readyz`` is false while the process cannot do its job:

* no input partition opened yet on this process, or one not yet polled:
  the flow is starting or restoring from recovery (Bytewax loads the state
  before it polls any input);
* an input or output partition's child process has sent no heartbeat for
  ``child_silent_after`` seconds (``DRIVER_STATS_CHILD_SILENT_SECONDS``,
  default 10), or is gone: the worker's calls into it wait, and the whole
  dataflow with them, while the figures it last reported look fine. This
  comes first, since every other figure of that partition is stale;
* the broker refuses what an output client publishes (an MQTT 5 reason
  code such as not authorized): the refused record and those behind it
  wait, retried, until the broker accepts them (see :mod:`connectors.mqtt.sink`);
  this comes before the connection, since mosquitto also drops the
  connection after a refusal;
* an input or output client is disconnected from the broker;
* the output holds records the broker has not acknowledged for
  :data:`STUCK_PUBLISH_AFTER` seconds.

A process that holds no input partition at all (more workers than
``DRIVER_STATS_PARTITIONS_PER_TOPIC``) never becomes ready; that setting
must be at least the total number of workers (see the README's Scaling).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Callable, Mapping, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

log = logging.getLogger("driver_stats.health")

WEDGED_AFTER = 180.0
"""Seconds without an input poll after which a process that is not waiting
for the broker is wedged: far beyond any pause of a healthy dataflow (an
epoch, a batch, a snapshot take well under a second to a few seconds)."""

STUCK_PUBLISH_AFTER = 10.0
"""Seconds records may wait for the broker's acknowledgement before the
process reports not ready (a healthy broker takes milliseconds)."""

CHILD_SILENT_AFTER = 10.0
"""Seconds without a heartbeat from a partition's child process (it sends
five a second) before the process reports not ready; the default of
``DRIVER_STATS_CHILD_SILENT_SECONDS``."""


class Health:
    """Liveness and readiness from the input's and output's client stats (client id -> stats)."""

    def __init__(
        self,
        source_stats: Mapping[str, object],
        sink_stats: Mapping[str, object],
        *,
        wedged_after: float = WEDGED_AFTER,
        stuck_publish_after: float = STUCK_PUBLISH_AFTER,
        child_silent_after: float = CHILD_SILENT_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source_stats = source_stats
        self.sink_stats = sink_stats
        self.wedged_after = wedged_after
        self.stuck_publish_after = stuck_publish_after
        self.child_silent_after = child_silent_after
        self.clock = clock

    def _children(self) -> list:
        """The stats of the partitions served by a child process (not closed)."""
        return [stats for stats_by_client in (self.source_stats, self.sink_stats)
                for stats in list(stats_by_client.values()) if stats.process]

    def _dead_child(self) -> Optional[str]:
        for stats in self._children():
            if stats.process_exit:
                return f"{stats.process} died: {stats.process_exit}"
        return None

    def _silent_child(self, now: float, after: float) -> Optional[str]:
        for stats in self._children():
            silent = now - stats.process_heard_at
            if silent > after:
                return f"{stats.process} silent for {silent:.0f}s"
        return None

    def _refused(self, now: float) -> Optional[str]:
        for client, stats in list(self.sink_stats.items()):
            if getattr(stats, "refused_reason", ""):
                waited = max(0.0, now - stats.refused_since) if stats.refused_since else 0.0
                return f"output {client}: {stats.refused_reason} for {waited:.0f}s, {stats.pending} messages waiting"
        return None

    def _waiting_for_broker(self, now: float) -> Optional[str]:
        refused = self._refused(now)
        if refused is not None:
            return refused
        for kind, stats_by_client in (("input", self.source_stats), ("output", self.sink_stats)):
            for client, stats in list(stats_by_client.items()):
                if not stats.connected:
                    return f"{kind} {client} disconnected from the broker"
        for client, stats in list(self.sink_stats.items()):
            if stats.pending > 0 and stats.oldest_pending_since:
                waited = max(0.0, now - stats.oldest_pending_since)
                return f"output {client}: {stats.pending} messages waiting for acknowledgement for {waited:.0f}s"
        return None

    def liveness(self) -> tuple[bool, str]:
        now = self.clock()
        dead = self._dead_child()
        if dead is not None:
            return False, dead
        silent = self._silent_child(now, self.wedged_after)
        if silent is not None:
            return False, f"wedged: {silent} (bound {self.wedged_after:.0f}s)"
        polls = [stats.last_call for stats in list(self.source_stats.values()) if stats.last_call]
        if not polls:
            return True, "starting: the dataflow has not polled an input partition of this process yet"
        waiting = self._waiting_for_broker(now)
        if waiting is not None:
            return True, f"waiting for the broker: {waiting}"
        age = max(0.0, now - max(polls))
        if age > self.wedged_after:
            return False, (f"wedged: the dataflow has not polled its input for {age:.0f}s "
                           f"(bound {self.wedged_after:.0f}s) while connected to the broker")
        return True, f"ok: input polled {age:.1f}s ago"

    def readiness(self) -> tuple[bool, str]:
        now = self.clock()
        sources = list(self.source_stats.items())
        if not sources:
            return False, "starting: no input partition opened on this process yet"
        trouble = self._dead_child() or self._silent_child(now, self.child_silent_after)
        if trouble is not None:
            return False, trouble
        for client, stats in sources:
            if not stats.last_call:
                return False, f"restoring: input {client} not polled yet (state loading from recovery)"
        refused = self._refused(now)
        if refused is not None:
            return False, refused
        for kind, stats_by_client in (("input", sources), ("output", list(self.sink_stats.items()))):
            for client, stats in stats_by_client:
                if not stats.connected:
                    return False, f"{kind} {client} disconnected from the broker"
        for client, stats in list(self.sink_stats.items()):
            waited = now - stats.oldest_pending_since
            if stats.pending > 0 and stats.oldest_pending_since and waited > self.stuck_publish_after:
                return False, f"output {client}: {stats.pending} messages unacknowledged for {waited:.0f}s"
        age = max(0.0, now - max(stats.last_call for _, stats in sources))
        return True, f"ok: {len(sources)} input partition(s) connected, polled {age:.1f}s ago"


# --------------------------------------------------------------------------
# The HTTP server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # one stderr line per probe would drown the JSON logs


def _answer(start_response, status: str, body: bytes, content_type: str) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def app(health: Optional[Health]):
    """The WSGI app: ``/metrics`` (also ``/``), ``/livez``, ``/readyz``."""
    metrics_app = make_wsgi_app()

    def check(path: str) -> tuple[str, bool, str]:
        key = "live" if path == "/livez" else "ready"
        if health is None:
            return key, True, "ok: no health checks in this process"
        try:
            ok, reason = health.liveness() if key == "live" else health.readiness()
        except Exception as err:  # noqa: BLE001 - a probe must answer
            log.exception("health check failed")
            # A bug here must not restart the pod; it does make it unready.
            ok, reason = key == "live", f"health check failed: {type(err).__name__}"
        return key, ok, reason

    def wsgi(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path in ("/livez", "/readyz"):
            key, ok, reason = check(path)
            body = json.dumps({key: ok, "reason": reason}).encode() + b"\n"
            return _answer(start_response, "200 OK" if ok else "503 Service Unavailable", body,
                           "application/json")
        if path in ("/metrics", "/"):
            return metrics_app(environ, start_response)
        return _answer(start_response, "404 Not Found", b"not found: /metrics, /livez, /readyz\n", "text/plain")

    return wsgi


def serve(address: str, port: int, health: Optional[Health]) -> Optional[WSGIServer]:
    """Serve /metrics, /livez and /readyz on ``address:port`` (port 0: off).

    A busy port or an address this host does not have is a warning, not a crash.
    """
    if not port:
        return None
    server_class = _Server6 if ":" in address else _Server
    try:
        server = make_server(address, port, app(health), server_class=server_class, handler_class=_QuietHandler)
    except OSError as err:
        log.warning("metrics not served: %s port %d: %s", address, port, err.strerror or err)
        return None
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    shown = f"[{address}]" if ":" in address else address
    log.info("metrics on %s:%d/metrics, health on /livez and /readyz", shown, port)
    return server
