"""Operators for MQTT: :func:`input` splits its output into ``oks`` and ``errs``.

```python
from bytewax.dataflow import Dataflow
from connectors.mqtt import MQTTConnection, operators as mop

flow = Dataflow("example")
inp = mop.input("in", flow, connection=MQTTConnection(), topics=["in/a"], client_id="example")
mop.output("out", inp.oks, connection=MQTTConnection(), client_id="example")
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator

from .connection import MQTTConnection, Protocol
from .link import EventHook
from .message import MQTTError, MQTTMessage
from .sink import MQTTSink
from .source import MQTTSource

__all__ = ["MQTTSourceOut", "input", "output"]


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
    step_id: str, up: Stream[Union[MQTTMessage, MQTTError]]
) -> MQTTSourceOut:
    branch = op.branch("branch", up, lambda x: isinstance(x, MQTTMessage))
    return MQTTSourceOut(branch.trues, branch.falses)  # type: ignore[arg-type]


@operator
def input(  # noqa: A001
    step_id: str,
    flow: Dataflow,
    *,
    connection: MQTTConnection,
    topics: List[str],
    client_id: str,
    partitions: int = 1,
    max_message_bytes: Optional[int] = None,
    max_unacked: int = 50_000,
    batch_size: int = 1000,
    protocol: Optional[Protocol] = None,
    on_event: Optional[EventHook] = None,
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


@operator
def output(
    step_id: str,
    up: Stream[MQTTMessage],
    *,
    connection: MQTTConnection,
    client_id: str,
    partitions: int = 1,
    timeout: Optional[float] = None,
    on_event: Optional[EventHook] = None,
) -> None:
    """Publish each :class:`MQTTMessage` with QoS 1, keyed by topic (so a topic keeps its order).

    The arguments are those of :class:`~connectors.mqtt.sink.MQTTSink`.
    """
    keyed = op.key_on("key_on_topic", up, lambda m: m.topic)
    sink = MQTTSink(
        connection, client_id=client_id, partitions=partitions, timeout=timeout, on_event=on_event
    )
    return op.output("mqtt_output", keyed, sink)
