"""A child process serving one object for the worker: calls over a pipe, in order, and its heartbeat.

The worker's :class:`Child` forks a process that builds the object
(``build(forward)``) and answers the worker's calls on it, in order; a call
may be sent without waiting for its answer (its error comes with the next
answer). ``forward(hook, *args)`` in the child queues a call of the
worker's ``hook``, made when the next answer arrives. The object's
``stats`` come back with every answer.

The child ignores SIGINT and SIGTERM (the worker stops it through
``close``) and exits at once, as if killed, when the worker's process is
gone (it checks every :data:`HEARTBEAT_INTERVAL`; the pipe alone is not
enough, since a sibling forked later may hold its other end). It stamps
``time.monotonic()`` (the same clock in every process of the host) into
shared memory as often, and a watcher thread in the worker copies it into
the stats (``process_heard_at``) every :data:`WATCH_INTERVAL`, so a child
that is stopped or frozen shows as silent. The watcher also notices a
child that ends without being closed at once: it writes ``process_exit``
(``killed by SIGKILL``) and calls ``on_died`` with one line, as does the
worker's own next call to it. A program that sets ``on_died`` should end
its process there (``os._exit``): Bytewax does not stop cleanly around a
partition that is gone. Without ``on_died`` the worker's next call raises
``RuntimeError``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from .link import MQTTLinkStats

log = logging.getLogger("connectors.mqtt")

HEARTBEAT_INTERVAL = 0.2
"""Seconds between a child's heartbeats (its watch of the worker's process runs as often)."""

WATCH_INTERVAL = 0.5
"""Seconds between the worker's looks at a child's heartbeat (its exit is seen at once)."""

DiedHook = Callable[[str], None]
"""``on_died(line)``: a partition's child process ended without being closed; ``line`` names it and how
(``output child mqtt-out-0 (pid 123) died: killed by SIGKILL``). Called once per child, from the worker's
watcher thread or from the worker's call that found it gone, whichever comes first."""

Forward = Callable[..., None]
"""``forward(hook, *args)``: in the child, call the worker's ``hook`` with ``args`` (at the next answer)."""


def _beat_while(parent: int, heartbeat: Any) -> None:
    """The child's heartbeat, until the worker's process is gone."""
    while os.getppid() == parent:
        heartbeat.value = time.monotonic()
        time.sleep(HEARTBEAT_INTERVAL)
    os._exit(0)  # as if killed: nothing more is acknowledged or published


def _serve(conn: Connection, build: Callable[[Forward], Any], parent: int, heartbeat: Any) -> None:
    """The child: build the served object, then answer the worker's calls until closed or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_beat_while, args=(parent, heartbeat), name="heartbeat", daemon=True).start()
    calls: list[tuple[str, tuple]] = []
    lock = threading.Lock()

    def forward(hook: str, *args: Any) -> None:  # any thread of the child
        with lock:
            calls.append((hook, args))

    def forwarded() -> list[tuple[str, tuple]]:
        with lock:
            out = calls[:]
            calls.clear()
        return out

    try:
        served = build(forward)
    except BaseException as err:  # noqa: BLE001 - the worker raises it
        conn.send(("error", err, forwarded(), None))
        return
    conn.send(("ok", None, forwarded(), served.stats))
    failed: BaseException | None = None  # by a call that gets no answer: told at the next one
    while True:
        try:
            method, args, answer = conn.recv()
        except (EOFError, OSError):  # the worker is gone: so are we
            served.close()
            return
        status, value = "ok", None
        try:
            if failed is not None:
                raise failed
            value = getattr(served, method)(*args)
        except StopIteration:
            status = "stop"
        except BaseException as err:  # noqa: BLE001 - the worker raises it
            if not answer:
                failed = err
                continue
            status, value = "error", err
        if answer:
            conn.send((status, value, forwarded(), served.stats))
        if method == "close" or status == "error":
            return


def describe_exit(code: int | None) -> str:
    """A process's exit as words: ``killed by SIGKILL``, ``exited with code 1``."""
    if code is None:
        return "exited (status unknown)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


# Worker-side fields of the stats: the child's answers carry its own copy of them, stale.
_WORKER_SIDE = ("process", "process_heard_at", "process_exit")


class Child:
    """The worker's end of a child process serving one object."""

    def __init__(self, build: Callable[[Forward], Any], stats: MQTTLinkStats,
                 hooks: dict[str, Callable[..., None] | None], label: str, kind: str,
                 on_died: DiedHook | None = None) -> None:
        self.stats = stats
        self._hooks = hooks
        self._on_died = on_died
        self._done = False  # closed, or its end (an error, or gone) already raised
        self._closing = False
        self._gone_lock = threading.Lock()
        self._reap_lock = threading.Lock()
        self._exit: str | None = None
        # Fork: the child inherits the logging set-up and the partition's
        # settings (functions included) as they are, with nothing to pickle.
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe()
        # Shared memory (no lock: one writer, one 8-byte double).
        self._heartbeat = ctx.Value("d", time.monotonic(), lock=False)
        self._process = ctx.Process(target=_serve, args=(child_end, build, os.getpid(), self._heartbeat),
                                    name=label, daemon=True)
        self._process.start()
        child_end.close()
        self.what = f"{kind} child {label} (pid {self._process.pid})"
        stats.process, stats.process_heard_at, stats.process_exit = self.what, self._heartbeat.value, ""
        log.info("%s started", self.what, extra={"child": label, "pid": self._process.pid})
        threading.Thread(target=self._watch, name=f"watch-{label}", daemon=True).start()
        self._answer()  # built (or its error)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _watch(self) -> None:
        """The worker's watcher: copy the child's heartbeat; notice its end, whatever the worker is doing."""
        while not self._closing:
            ended = wait([self._process.sentinel], WATCH_INTERVAL)
            if self._closing:
                return
            self.stats.process_heard_at = self._heartbeat.value
            if ended:
                self._gone(watcher=True)
                return

    def _reap(self, timeout: float) -> int | None:
        """The child's exit code, waiting up to ``timeout`` seconds for its end (None: it runs on).

        One thread at a time: of two threads in ``waitpid`` at once one gets
        the status and the other nothing (ECHILD), and would call a killed
        child's exit unknown.
        """
        with self._reap_lock:
            self._process.join(timeout)
            for _ in range(100):
                # Reaped meanwhile by multiprocessing's own clean-up of its
                # children (at the next Process.start): the code lands on the same object.
                if self._process.exitcode is not None or not wait([self._process.sentinel], 0):
                    break
                time.sleep(0.01)
            return self._process.exitcode

    def _gone(self, watcher: bool = False) -> str:
        """The child ended without being closed: record how (once), tell ``on_died``; the words.

        For the watcher, exit code 0 is no death: the child ends so itself
        after answering an error, which the worker raises.
        """
        with self._gone_lock:
            if self._exit is None:
                code = self._reap(2)
                if watcher and code == 0:
                    return ""
                self._exit = describe_exit(code)
                self.stats.process_exit = self._exit
                if self._on_died is not None and not self._closing:
                    self._on_died(f"{self.what} died: {self._exit}")
        return self._exit

    def _lost(self) -> RuntimeError:
        """What a call that found the child gone raises (once ``on_died``, if any, let it)."""
        self._done = True
        return RuntimeError(f"MQTT partition process {self.what} ended: {self._gone()}")

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` in the child and wait for its answer."""
        self._send((method, args, True))
        return self._answer()

    def send(self, method: str, *args: Any) -> None:
        """Call ``method`` in the child without waiting: its error, if any, comes with the next answer.

        The pipe keeps the calls in order; when the child is behind, the
        pipe fills and this waits (backpressure).
        """
        self._send((method, args, False))

    def _send(self, call: tuple[str, tuple, bool]) -> None:
        try:
            self._conn.send(call)
        except OSError as err:  # the child is gone (a broken pipe)
            raise self._lost() from err

    def _answer(self) -> Any:
        try:
            status, value, calls, stats = self._conn.recv()
        except (EOFError, OSError) as err:
            raise self._lost() from err
        if stats is not None:
            for field in _WORKER_SIDE:
                stats.__dict__.pop(field, None)
            self.stats.__dict__.update(stats.__dict__)
        for hook, args in calls:
            fn = self._hooks.get(hook)
            if fn is not None:
                fn(*args)
        if status == "error":
            self._done = True
            self._reap(5)
            self.stats.process = ""  # it ends itself after answering an error: nothing more to hear
            raise value
        if status == "stop":
            raise StopIteration
        return value

    def close(self) -> Any:
        if self._done:
            return None
        self._done = self._closing = True  # its end from now on is ours, not a death
        try:
            return self.call("close")
        except (RuntimeError, StopIteration):
            return None
        finally:
            self._conn.close()
            self._reap(10)
            self.stats.process = ""  # no child to hear from any more
