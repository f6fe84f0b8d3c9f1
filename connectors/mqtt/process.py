"""Partitions in processes of their own: MQTT work off the worker's interpreter.

With ``MQTTSource(own_process=True)`` or ``MQTTSink(own_process=True)``
each partition's paho client, its network thread and the partition's own
work per message (the source: decoding, redelivery and ownership checks,
the buffer, the watermark's position; the sink: publishing, PUBACKs,
progress markers, refusals) run in a child process forked when Bytewax
builds the partition. The worker keeps a stand-in that forwards Bytewax's
calls (``next_batch``/``write_batch``, ``snapshot``, ``close``) over a pipe,
in order, and waits for each answer (``write_batch`` excepted: the child
publishes while the worker goes on, and a failure comes with the next
answer); messages cross as plain tuples. The
guarantees are the partition's own: the child runs the very same code in
the same order of calls, so a source acknowledges a message only when the
worker's ``snapshot`` says its epoch is committed, and a sink publishes a
record only when the worker's commit tick says so.

The child logs to the inherited stderr with the parent's logging set-up (it
is forked), ignores SIGINT and SIGTERM (the worker stops it through
``close``), and exits at once, as if killed, when the worker's process is
gone (it checks every 0.2 s; the pipe alone is not enough, since a sibling
forked later may hold its other end): a worker killed with -9 takes its
partitions with it, the source's unacknowledged messages stay with the
broker and the sink's committed records in the recovery store. Hooks
(``on_event``, ``on_written``, ``on_refused``) and counters reach the worker
with the next answer: within ~10 ms for a source, which polls; at the next
snapshot (each epoch) for a sink.

The worker sees its children apart from its calls too, since a child that
stops answering stops the worker's calls with it and the counters above
stop with them. Each child stamps ``time.monotonic()`` (the same clock in
every process of the host) into shared memory every
:data:`HEARTBEAT_INTERVAL` seconds from a thread of its own, and a watcher
thread in the worker copies it into the partition's stats
(``MQTTLinkStats.process_heard_at``, ``process``: e.g. ``input child
mqtt-in-0 (pid 4242)``) twice a second, so a child that is stopped
(SIGSTOP) or frozen shows as silent while the worker's calls merely wait.
The watcher also notices a child that ends without being closed (killed,
crashed) at once: it writes ``process_exit`` (``killed by SIGKILL``) and calls
``on_died`` with one line, ``output child mqtt-out-0 (pid 123) died: killed
by SIGKILL``, as does the worker's own next call to it. A program that sets
``on_died`` should end its process there (``os._exit``): Bytewax does not
stop cleanly around a partition that is gone (the error raised by the
worker's call, or in its cleanup, ends in a Rust backtrace or an abort),
and a restart from recovery loses nothing. Without ``on_died`` the worker's
next call raises ``RuntimeError``.

```python
from connectors.mqtt import MQTTConnection, MQTTSink, MQTTSource

source = MQTTSource(MQTTConnection(), ["input/a"], client_id="example", own_process=True)
sink = MQTTSink(MQTTConnection(), client_id="example", own_process=True)
```
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from datetime import datetime, timezone
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from bytewax.inputs import StatefulSourcePartition
from bytewax.outputs import StatefulSinkPartition

from .limits import IDLE_POLL
from .link import MQTTLinkStats
from .message import MQTTError, MQTTMessage

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

_Packed = Union[None, Tuple[str, bytes, tuple], Tuple[str, bytes, tuple, str]]


def pack(items: List[Any]) -> List[_Packed]:
    """MQTTMessage/MQTTError items as tuples (several times cheaper to pickle); anything else as None."""
    return [(item.topic, item.payload, item.user_properties) if type(item) is MQTTMessage
            else (item.message.topic, item.message.payload, item.message.user_properties, item.reason)
            if type(item) is MQTTError else None
            for item in items]


def unpack(packed: List[_Packed], other: Any = None, partition: int = 0) -> List[Any]:
    """:func:`pack` undone (the messages read by source partition ``partition``); None becomes ``other``."""
    return [other if item is None else MQTTMessage(*item, partition) if len(item) == 3
            else MQTTError(MQTTMessage(*item[:3], partition), item[3])
            for item in packed]


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
    calls: List[Tuple[str, tuple]] = []
    lock = threading.Lock()

    def forward(hook: str, *args: Any) -> None:  # any thread of the child
        with lock:
            calls.append((hook, args))

    def taken() -> List[Tuple[str, tuple]]:
        with lock:
            out = calls[:]
            calls.clear()
        return out

    try:
        served = build(forward)
    except BaseException as err:  # noqa: BLE001 - the worker raises it
        conn.send(("error", err, taken(), None))
        return
    conn.send(("ok", None, taken(), served.stats))
    failed: Optional[BaseException] = None  # by a call that gets no answer: told at the next one
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
            conn.send((status, value, taken(), served.stats))
        if method == "close" or status == "error":
            return


def describe_exit(code: Optional[int]) -> str:
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


class _Child:
    """The worker's end of a child process serving one object."""

    def __init__(self, build: Callable[[Forward], Any], stats: MQTTLinkStats,
                 hooks: Dict[str, Optional[Callable[..., None]]], label: str, kind: str,
                 on_died: Optional[DiedHook] = None) -> None:
        self.stats = stats
        self._hooks = hooks
        self._on_died = on_died
        self._done = False  # closed, or its end (an error, or gone) already raised
        self._closing = False
        self._gone_lock = threading.Lock()
        self._reap_lock = threading.Lock()
        self._exit: Optional[str] = None
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
    def pid(self) -> Optional[int]:
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

    def _reap(self, timeout: float) -> Optional[int]:
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

    def _send(self, call: Tuple[str, tuple, bool]) -> None:
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


class _ServedSource:
    """The child's side of a source partition."""

    def __init__(self, part) -> None:
        self.part = part
        self.stats = part.stats

    def next_batch(self) -> Tuple[List[_Packed], bool]:
        return pack(self.part.next_batch()), self.part.has_buffered()

    def snapshot(self) -> None:
        return self.part.snapshot()

    def close(self) -> None:
        self.part.close()


class SourcePartitionProcess(StatefulSourcePartition[Union[MQTTMessage, MQTTError], None]):
    """The worker's stand-in for a source partition that runs in a child process.

    Args:
        build: ``build(forward)`` makes the real partition, in the child
            (with ``next_batch``, ``has_buffered``, ``snapshot``, ``close``
            and ``stats``), calling ``forward("event", ...)`` for ``on_event``.
        stats: Where the worker sees the child's counters.
        on_event: The worker's connection-event hook.
        label: Names the child process.
        index: The partition's index, which its messages carry.
        on_died: Told when the child ends without being closed (:data:`DiedHook`).
    """

    def __init__(self, build: Callable[[Forward], Any], stats: MQTTLinkStats,
                 on_event: Optional[Callable[..., None]], label: str, index: int = 0,
                 on_died: Optional[DiedHook] = None) -> None:
        self._child = _Child(lambda forward: _ServedSource(build(forward)), stats, {"event": on_event}, label,
                             "input", on_died)
        self.stats = stats
        self._index = index
        self._more = False

    @property
    def pid(self) -> Optional[int]:
        """The child's process id."""
        return self._child.pid

    def next_batch(self) -> List[Union[MQTTMessage, MQTTError]]:
        packed, self._more = self._child.call("next_batch")
        return unpack(packed, partition=self._index)

    def next_awake(self) -> Optional[datetime]:
        return None if self._more else datetime.now(timezone.utc) + IDLE_POLL

    def snapshot(self) -> None:
        self._child.call("snapshot")
        return None

    def close(self) -> None:
        self._child.close()


class _ServedSink:
    """The child's side of a sink partition."""

    def __init__(self, part, tick: Any) -> None:
        self.part = part
        self.stats = part.stats
        self._tick = tick

    def write_batch(self, packed: List[_Packed]) -> None:
        self.part.write_batch(unpack(packed, self._tick))

    def snapshot(self) -> bytes:
        # Pickled once, here: the worker hands the bytes to Bytewax as they
        # are (unpickling thousands of records only for Bytewax to pickle
        # them again cost the worker more than the records' encoding).
        return pickle.dumps(self.part.snapshot(), pickle.HIGHEST_PROTOCOL)

    def close(self) -> None:
        self.part.close()


class SinkPartitionProcess(StatefulSinkPartition[Any, bytes]):
    """The worker's stand-in for a sink partition that runs in a child process.

    Args:
        build: ``build(forward)`` makes the real partition, in the child
            (with ``write_batch``, ``snapshot``, ``close`` and ``stats``).
        tick: The one item that is not an :class:`MQTTMessage` (the
            commit tick): it crosses as None.
        stats: Where the worker sees the child's counters.
        hooks: The worker's functions the child's ``forward(name, ...)``
            calls; ``"written"`` gets packed messages (unpacked here).
        label: Names the child process.
        on_died: Told when the child ends without being closed (:data:`DiedHook`).
    """

    def __init__(self, build: Callable[[Forward], Any], tick: Any, stats: MQTTLinkStats,
                 hooks: Dict[str, Optional[Callable[..., None]]], label: str,
                 on_died: Optional[DiedHook] = None) -> None:
        written = hooks.get("written")
        hooks = {**hooks, "written": None if written is None else
                 lambda packed, seconds: written(unpack(packed), seconds)}
        self._child = _Child(lambda forward: _ServedSink(build(forward), tick), stats, hooks, label,
                             "output", on_died)
        self.stats = stats

    @property
    def pid(self) -> Optional[int]:
        """The child's process id."""
        return self._child.pid

    def write_batch(self, items: List[Any]) -> None:
        # Not waited for: the child publishes while the worker goes on; the
        # snapshot (answered) comes after it in the pipe, so it holds it.
        self._child.send("write_batch", pack(items))

    def snapshot(self) -> bytes:
        """The child partition's state, pickled (its ``build`` gets it back as such)."""
        return self._child.call("snapshot")

    def close(self) -> None:
        self._child.close()
