"""Partitions in processes of their own: MQTT work off the worker's interpreter.

With ``MQTTSource(own_process=True)`` or ``MQTTSink(own_process=True)``
each partition's paho client, its network thread and its own work per
message run in a child process (:mod:`.child`) forked when Bytewax builds
the partition. The worker keeps a stand-in that forwards Bytewax's calls
(``next_batch``/``write_batch``, ``snapshot``, ``close``) over a pipe, in
order, and waits for each answer (``write_batch`` excepted: the child
publishes while the worker goes on). The child runs the very same code in
the same order of calls, so the guarantees are the partition's own.
Messages cross as plain tuples (:func:`pack`). The source's or sink's hooks
reach the worker with the next answer (:func:`hand_off`): within
:data:`.limits.IDLE_POLL` for a source, which polls; at the next snapshot
for a sink.

```python
from connectors.mqtt import MQTTConnection, MQTTSink, MQTTSource

source = MQTTSource(MQTTConnection(), ["input/a"], client_id="example", own_process=True)
sink = MQTTSink(MQTTConnection(), client_id="example", own_process=True)
```
"""

from __future__ import annotations

import copy
import functools
import pickle
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from bytewax.inputs import StatefulSourcePartition
from bytewax.outputs import StatefulSinkPartition

from .child import Child, DiedHook, Forward
from .epochs import EpochSchedule
from .link import MQTTLinkStats
from .message import MQTTError, MQTTMessage

__all__ = ["DiedHook", "Forward", "SinkPartitionProcess", "SourcePartitionProcess", "hand_off", "pack", "unpack"]

_Packed = None | tuple[str, bytes, tuple] | tuple[str, bytes, tuple, str]
T = TypeVar("T")
P = TypeVar("P")

Codec = tuple[Callable[..., tuple], Callable[..., tuple]]
"""How a hook's arguments cross the pipe: ``(encode, decode)``, each from arguments to arguments."""


def pack(items: list[Any]) -> list[_Packed]:
    """MQTTMessage/MQTTError items as tuples (several times cheaper to pickle); anything else as None."""
    return [(item.topic, item.payload, item.user_properties) if type(item) is MQTTMessage
            else (item.message.topic, item.message.payload, item.message.user_properties, item.reason)
            if type(item) is MQTTError else None
            for item in items]


def unpack(packed: list[_Packed], other: Any = None, partition: int = 0) -> list[Any]:
    """:func:`pack` undone (the messages read by source partition ``partition``); None becomes ``other``."""
    return [other if item is None else MQTTMessage(*item, partition) if len(item) == 3
            else MQTTError(MQTTMessage(*item[:3], partition), item[3])
            for item in packed]



WRITTEN: Codec = (lambda messages, seconds: (pack(messages), seconds),
                  lambda packed, seconds: (unpack(packed), seconds))
"""The codec of ``on_written(messages, seconds)``: the messages cross packed."""


def hand_off(owner: T, hooks: Mapping[str, Codec | None], make: Callable[[T], P]
             ) -> tuple[Callable[[Forward], P], dict[str, Callable[..., None]]]:
    """A partition of ``owner`` (a source or sink) built in a child process, its hooks run by the worker.

    Args:
        owner: Has the hooks as attributes named in ``hooks`` (None: not set).
        hooks: Each hook's codec, or None where its arguments cross as they are.
        make: ``make(owner)`` builds the partition.

    Returns:
        ``build(forward)``, which builds the partition in the child from a
        copy of ``owner`` whose hooks forward their calls, and the worker's
        hooks by name, decoding what crosses.
    """

    def build(forward: Forward) -> P:
        local = copy.copy(owner)
        for name, codec in hooks.items():
            if getattr(owner, name) is not None:
                setattr(local, name, functools.partial(_forward, forward, name, codec))
        return make(local)

    worker: dict[str, Callable[..., None]] = {}
    for name, codec in hooks.items():
        hook = getattr(owner, name)
        if hook is not None:
            worker[name] = hook if codec is None else functools.partial(_decoded, hook, codec)
    return build, worker


def _forward(forward: Forward, name: str, codec: Codec | None, *args: Any) -> None:
    forward(name, *(args if codec is None else codec[0](*args)))


def _decoded(hook: Callable[..., None], codec: Codec, *args: Any) -> None:
    hook(*codec[1](*args))


class _ServedSource:
    """The child's side of a source partition."""

    def __init__(self, part) -> None:
        self.part = part
        self.stats = part.stats

    def next_batch(self) -> tuple[list[_Packed], bool]:
        return pack(self.part.next_batch()), self.part.has_buffered()

    def snapshot(self) -> None:
        return self.part.snapshot()

    def close(self) -> None:
        self.part.close()


class SourcePartitionProcess(StatefulSourcePartition[MQTTMessage | MQTTError, None]):
    """The worker's stand-in for a source partition that runs in a child process.

    Args:
        build: ``build(forward)`` makes the real partition, in the child
            (with ``next_batch``, ``has_buffered``, ``snapshot``, ``close``
            and ``stats``), as :func:`hand_off` gives it.
        stats: Where the worker sees the child's counters.
        hooks: The worker's hooks by name, as :func:`hand_off` gives them.
        label: Names the child process.
        index: The partition's index, which its messages carry.
        on_died: Told when the child ends without being closed (:data:`DiedHook`).
    """

    def __init__(self, build: Callable[[Forward], Any], stats: MQTTLinkStats,
                 hooks: dict[str, Callable[..., None]], label: str, index: int = 0,
                 on_died: DiedHook | None = None, epoch_interval: float | None = None) -> None:
        self._child = Child(lambda forward: _ServedSource(build(forward)), stats, hooks, label, "input", on_died)
        self.stats = stats
        self._index = index
        self._more = False
        self._schedule = EpochSchedule(epoch_interval)

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._child.pid

    def next_batch(self) -> list[MQTTMessage | MQTTError]:
        self._schedule.activated()
        packed, self._more = self._child.call("next_batch")
        items = unpack(packed, partition=self._index)
        self._schedule.took(len(items))
        return items

    def next_awake(self) -> datetime | None:
        return self._schedule.next_awake(self._more)

    def snapshot(self) -> None:
        self._schedule.epoch_moved()
        self._child.call("snapshot")

    def close(self) -> None:
        self._child.close()


class _ServedSink:
    """The child's side of a sink partition."""

    def __init__(self, part, tick: Any) -> None:
        self.part = part
        self.stats = part.stats
        self._tick = tick

    def write_batch(self, packed: list[_Packed]) -> None:
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
            (with ``write_batch``, ``snapshot``, ``close`` and ``stats``),
            as :func:`hand_off` gives it.
        tick: The one item that is not an :class:`MQTTMessage` (the
            commit tick): it crosses as None.
        stats: Where the worker sees the child's counters.
        hooks: The worker's hooks by name, as :func:`hand_off` gives them.
        label: Names the child process.
        on_died: Told when the child ends without being closed (:data:`DiedHook`).
    """

    def __init__(self, build: Callable[[Forward], Any], tick: Any, stats: MQTTLinkStats,
                 hooks: dict[str, Callable[..., None]], label: str,
                 on_died: DiedHook | None = None) -> None:
        self._child = Child(lambda forward: _ServedSink(build(forward), tick), stats, hooks, label,
                             "output", on_died)
        self.stats = stats

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._child.pid

    def write_batch(self, items: list[Any]) -> None:
        # Not waited for: the child publishes while the worker goes on; the
        # snapshot (answered) comes after it in the pipe, so it holds it.
        self._child.send("write_batch", pack(items))

    def snapshot(self) -> bytes:
        """The child partition's state, pickled (its ``build`` gets it back as such)."""
        return self._child.call("snapshot")

    def close(self) -> None:
        self._child.close()
