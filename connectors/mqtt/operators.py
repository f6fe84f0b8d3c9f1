"""Operators for MQTT: :func:`input` splits its output into ``oks`` and ``errs``;
:func:`publish` feeds an :class:`~connectors.mqtt.sink.MQTTSink` its commit ticks.

```python
from bytewax.dataflow import Dataflow
from connectors.mqtt import MQTTConnection, operators as mop

flow = Dataflow("example")
inp = mop.input("in", flow, connection=MQTTConnection(), topics=["in/a"], client_id="example")
mop.output("out", inp.oks, connection=MQTTConnection(), client_id="example")
```
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from .connection import MQTTConnection, Protocol
from .epochs import EpochSchedule
from .limits import IDLE_POLL
from .link import EventHook
from .message import MQTTError, MQTTMessage
from .sink import MQTTSink
from .sink_partition import COMMIT_TICK, _CommitTick
from .source import MQTTSource

__all__ = ["MQTTSourceOut", "input", "output", "publish"]


@dataclass(frozen=True)
class MQTTSourceOut:
    """Streams of the :func:`input` operator.

    Args:
        oks: The messages.
        errs: The messages that cannot go on (too large, topic not UTF-8).
    """

    oks: Stream[MQTTMessage]
    errs: Stream[MQTTError]


@operator
def _split(
    step_id: str, up: Stream[MQTTMessage | MQTTError]
) -> MQTTSourceOut:
    branch = op.branch("branch", up, lambda x: isinstance(x, MQTTMessage))
    return MQTTSourceOut(branch.trues, branch.falses)  # type: ignore[arg-type]


@operator
def input(  # noqa: A001 - the operator mirrors bytewax.operators.input
    step_id: str,
    flow: Dataflow,
    *,
    connection: MQTTConnection,
    topics: list[str],
    client_id: str,
    partitions: int = 1,
    max_message_bytes: int | None = None,
    max_unacked: int = 50_000,
    batch_size: int = 1000,
    protocol: Protocol | None = None,
    on_event: EventHook | None = None,
) -> MQTTSourceOut:
    """Subscribe to ``topics``: ``oks`` are messages, ``errs`` oversized ones.

    A bad message never stops the flow: it comes out on ``errs``. The
    arguments are those of :class:`~connectors.mqtt.source.MQTTSource`.
    """
    source = MQTTSource(
        connection,
        topics,
        client_id=client_id,
        partitions=partitions,
        max_unacked=max_unacked,
        batch_size=batch_size,
        max_message_bytes=max_message_bytes,
        protocol=protocol,
        on_event=on_event,
    )
    return op.input("mqtt_input", flow, source).then(_split, "split")


class _CommitTicksPartition(StatefulSourcePartition[tuple[str, _CommitTick], None]):
    def __init__(self, keys: list[str], interval: timedelta, until: Callable[[], bool] | None,
                 epoch_interval: float | None) -> None:
        self._ticks = [(key, COMMIT_TICK) for key in keys]
        self._interval = interval.total_seconds()
        self._schedule = EpochSchedule(epoch_interval, poll=min(interval, IDLE_POLL).total_seconds())
        self._until = until
        self._due = 0.0

    def next_batch(self) -> list[tuple[str, _CommitTick]]:
        self._schedule.activated()
        if self._until is not None and self._until():
            raise StopIteration
        now = time.monotonic()
        if now < self._due:
            return []
        self._due = now + self._interval
        return self._ticks

    def next_awake(self) -> datetime | None:
        return self._schedule.next_awake(False)

    def snapshot(self) -> None:
        self._schedule.epoch_moved()
        # The epoch ends: tick at the first call of the next one, which comes
        # once this epoch is committed, so the sink publishes its records then.
        self._due = 0.0


class _CommitTicks(FixedPartitionedSource[tuple[str, _CommitTick], None]):
    """A tick per sink partition every ``interval`` and at the start of every epoch, from one partition.

    Bytewax calls an input's ``next_batch`` in epoch E only once epoch E-1
    is committed, so a tick's arrival at the sink proves that.

    Its epochs move with the MQTT input's (:mod:`.epochs`): it is
    fixed-partitioned (its clock starts when the recovery loads are done,
    as theirs does, not when each worker builds the dataflow) and wakes on
    the same schedule.
    """

    def __init__(self, keys: list[str], interval: timedelta, until: Callable[[], bool] | None,
                 epoch_interval: float | None = None) -> None:
        self.keys, self.interval, self.until, self.epoch_interval = keys, interval, until, epoch_interval

    def list_parts(self) -> list[str]:
        # One partition, whatever the sink's count: a recovery store's
        # partitions must all be listed again on resuming.
        return ["ticks"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _CommitTicksPartition:
        return _CommitTicksPartition(self.keys, self.interval, self.until, self.epoch_interval)


@operator
def publish(
    step_id: str,
    up: Stream[tuple[str, MQTTMessage]],
    sink: MQTTSink,
    *,
    tick_interval: timedelta = timedelta(milliseconds=100),
    until: Callable[[], bool] | None = None,
) -> None:
    """Publish ``(key, MQTTMessage)`` items once their epoch is committed (see :mod:`.sink`).

    Merges the commit ticks into ``up``; items with the same key go to the
    same partition, in order. ``until``: for a dataflow with finite input,
    a test that is true once that input is done (the ticks then stop, so
    the dataflow can end; the sink publishes what is left on closing).
    """
    ticks = op.input("commit_ticks", up.flow(), _CommitTicks(sink.tick_keys(), tick_interval, until,
                                                                sink.epoch_interval))
    op.output("mqtt_output", op.merge("with_commit_ticks", up, ticks), sink)


@operator
def output(
    step_id: str,
    up: Stream[MQTTMessage],
    *,
    connection: MQTTConnection,
    client_id: str,
    partitions: int = 1,
    timeout: float | None = None,
    on_event: EventHook | None = None,
) -> None:
    """Publish each :class:`MQTTMessage` with QoS 1, keyed by topic (so a topic keeps its order).

    The arguments are those of :class:`~connectors.mqtt.sink.MQTTSink`;
    publishing is commit-gated as :func:`publish` says.
    """
    keyed = op.key_on("key_on_topic", up, lambda m: m.topic)
    sink = MQTTSink(
        connection, client_id=client_id, partitions=partitions, timeout=timeout, on_event=on_event
    )
    publish("publish", keyed, sink)
