"""A source partition in a process of its own: MQTT reading off the worker's interpreter.

With ``MQTTSource(own_process=True)`` each partition's paho client, its
network thread and everything :class:`~.source.MQTTSource` does per message
(decoding the packet, redelivery and ownership checks, the buffer, the
watermark's position) run in a child process forked when Bytewax builds the
partition. The worker keeps a :class:`PartitionProcess` that forwards
Bytewax's calls (``next_batch``, ``snapshot``, ``close``) over a pipe and
gets each batch back as plain tuples, so a message costs the worker one
unpickling instead of about 40 µs of paho under the worker's GIL. The
guarantees are the partition's own: the child runs the very same code, in
the same order of calls, and acknowledges a message only when the worker's
``snapshot`` says its epoch is committed.

The child logs to the inherited stderr with the parent's logging set-up
(it is forked), ignores SIGINT and SIGTERM (the worker stops it through
:meth:`PartitionProcess.close`), and exits at once, like a kill -9, when
the worker's process is gone (it checks every 0.2 s; the pipe alone is not
enough, since a sibling reader forked later may hold its other end): a
worker killed with -9 takes its readers with it, and their unacknowledged
messages stay with the broker. Connection events and counters reach the worker with
the next reply (within ~10 ms while it polls).

```python
from connectors.mqtt import MQTTConnection, MQTTSource

source = MQTTSource(MQTTConnection(), ["input/a"], client_id="example", own_process=True)
```
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from typing import Any, Callable, List, Optional, Tuple, Union

from bytewax.inputs import StatefulSourcePartition

from .link import MQTTLinkStats
from .message import MQTTError, MQTTMessage

_IDLE_POLL = timedelta(milliseconds=10)

# Requests from the worker; a reply is (status, value, events, stats).
_NEXT_BATCH, _SNAPSHOT, _CLOSE = "next_batch", "snapshot", "close"

_Packed = Union[Tuple[str, bytes, tuple], Tuple[str, bytes, tuple, str]]


def _pack(items: List[Union[MQTTMessage, MQTTError]]) -> List[_Packed]:
    # Tuples pickle several times faster than dataclass instances.
    return [(item.topic, item.payload, item.user_properties) if type(item) is MQTTMessage
            else (item.message.topic, item.message.payload, item.message.user_properties, item.reason)
            for item in items]


def _unpack(packed: List[_Packed]) -> List[Union[MQTTMessage, MQTTError]]:
    return [MQTTMessage(*item) if len(item) == 3 else MQTTError(MQTTMessage(*item[:3]), item[3])
            for item in packed]


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)  # as if killed: nothing more is acknowledged, the broker keeps the rest


def _serve(conn: Connection, build: Callable[[Callable[..., None]], Any], parent: int) -> None:
    """The child: build the partition, then answer the worker's calls until closed or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), name="orphan-watch", daemon=True).start()
    events: List[Tuple[str, str, str]] = []
    lock = threading.Lock()

    def on_event(*event: str) -> None:  # paho's thread; handed over with the next reply
        with lock:
            events.append(event)

    def taken_events() -> List[Tuple[str, str, str]]:
        with lock:
            taken = events[:]
            events.clear()
        return taken

    try:
        part = build(on_event)
    except BaseException as err:  # noqa: BLE001 - the worker raises it
        conn.send(("error", err, taken_events(), None))
        return
    conn.send(("ok", None, taken_events(), part.stats))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the worker is gone: so are we, acknowledging nothing more
            part.close()
            return
        status, value = "ok", None
        try:
            if request == _NEXT_BATCH:
                value = (_pack(part.next_batch()), part.has_buffered())
            elif request == _SNAPSHOT:
                part.snapshot()
            elif request == _CLOSE:
                part.close()
        except StopIteration:
            status = "stop"
        except BaseException as err:  # noqa: BLE001 - the worker raises it
            status, value = "error", err
        conn.send((status, value, taken_events(), part.stats))
        if request == _CLOSE or status == "error":
            return


class PartitionProcess(StatefulSourcePartition[Union[MQTTMessage, MQTTError], None]):
    """The worker's side of a partition that runs in a child process.

    Args:
        build: ``build(on_event)`` makes the real partition (in the child);
            it must have ``next_batch``, ``has_buffered``, ``snapshot``,
            ``close`` and ``stats``.
        stats: Where the worker sees the child's counters (updated on each reply).
        on_event: The connection-event hook, called in the worker.
        label: Names the child process.
    """

    def __init__(self, build: Callable[[Callable[..., None]], Any], stats: MQTTLinkStats,
                 on_event: Optional[Callable[[str, str, str], None]], label: str) -> None:
        self.stats = stats
        self._on_event = on_event
        self._more = False
        self._done = False
        # Fork: the child inherits the logging set-up and the source's
        # settings (functions included) as they are, with nothing to pickle.
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child_end, build, os.getpid()), name=label, daemon=True)
        self._process.start()
        child_end.close()
        self._call(None)  # the child's "built" (or its error)

    def _call(self, request: Optional[str]) -> Any:
        if request is not None:
            self._conn.send(request)
        try:
            status, value, events, stats = self._conn.recv()
        except (EOFError, OSError) as err:
            raise RuntimeError(f"MQTT reader process {self._process.name} exited "
                               f"(exit code {self._process.exitcode})") from err
        if stats is not None:
            self.stats.__dict__.update(stats.__dict__)
        if self._on_event is not None:
            for event in events:
                self._on_event(*event)
        if status == "error":
            self._done = True
            self._process.join(5)
            raise value
        if status == "stop":
            raise StopIteration
        return value

    def next_batch(self) -> List[Union[MQTTMessage, MQTTError]]:
        packed, self._more = self._call(_NEXT_BATCH)
        return _unpack(packed)

    def next_awake(self) -> Optional[datetime]:
        return None if self._more else datetime.now(timezone.utc) + _IDLE_POLL

    def snapshot(self) -> None:
        self._call(_SNAPSHOT)
        return None

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._call(_CLOSE)
        except (RuntimeError, StopIteration):
            pass
        self._conn.close()
        self._process.join(10)
