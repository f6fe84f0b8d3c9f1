"""MQTT input and output for Bytewax 0.21, on paho-mqtt 2.

:class:`MQTTSource` reads QoS 1 messages and acknowledges each only once
the dataflow can no longer lose it (the epoch it was emitted in is
committed); :class:`MQTTSink` publishes :class:`MQTTMessage` items with
QoS 1 once the epoch that produced them is committed, each once, also
across crashes. A broker that cannot be reached raises
:class:`MQTTConnectError`, one line with host:port and the reason.

```python
from bytewax import operators as op
from bytewax.dataflow import Dataflow

from connectors.mqtt import MQTTConnection, MQTTMessage, operators as mop

conn = MQTTConnection(host="127.0.0.1", port=1883)
flow = Dataflow("echo")
inp = mop.input("in", flow, connection=conn, topics=["input/a"],
                client_id="echo", max_message_bytes=65536)
out = op.map("upper", inp.oks, lambda m: MQTTMessage("output/a", m.payload.upper()))
rejected = op.map("too-large", inp.errs, lambda e: e.message.rejected("too large", e.reason))
mop.output("out", op.merge("all", out, rejected), connection=conn, client_id="echo")
# python -m bytewax.run this_module:flow
# with recovery: python -m bytewax.recovery DB 1
#                python -m bytewax.run this_module:flow -r DB -s 10 -b 0
```

The parts, each with one job:

- :mod:`.message` the items; :mod:`.connection` where and how to connect;
  :mod:`.link` a client kept connected, its log lines and counters;
  :mod:`.batch_client` paho's client reading whole socket buffers.
- :mod:`.names` every client id and coordination topic; :mod:`.limits`
  the shared limits; :mod:`.retained` reading coordination topics.
- Input: :mod:`.source` (:class:`MQTTSource`), :mod:`.source_partition`,
  :mod:`.partitions` (who reads which shard), :mod:`.ownership` (a
  partition under a change of count), :mod:`.intake` (messages to the
  dataflow, PUBACKs after the commit), :mod:`.watermarks`.
- Output: :mod:`.sink` (:class:`MQTTSink`), :mod:`.sink_partition`,
  :mod:`.outbox` (unacknowledged records), :mod:`.progress` (the progress
  marker), :mod:`.refusals`.
- :mod:`.order`: whether the broker keeps a session's order across
  topics, which the idle probes and the partition markers need.
- :mod:`.process` and :mod:`.child`: partitions in processes of their own;
  :mod:`.operators` (``input``, ``output``, ``publish``); :mod:`.testing`
  (a private mosquitto and test clients), :mod:`.brokers` (private RabbitMQ,
  NATS and ejabberd brokers), :mod:`.broker_process` (what they share).

The guarantees and the broker settings they need: docs/delivery.md;
partitions, changing their count and brokers: docs/scaling-and-brokers.md;
watermarks: docs/event-time.md.
"""

from .connection import MQTTConnectError, MQTTConnection, MQTTPublishError, Protocol
from .link import EventHook, MQTTLinkStats, check_connection
from .message import MQTTError, MQTTMessage
from .operators import MQTTSourceOut
from .order import check_session_order, count_change
from .sink import COMMIT_TICK, MQTTSink
from .source import MQTTSource

__all__ = [
    "COMMIT_TICK",
    "EventHook",
    "MQTTConnectError",
    "MQTTConnection",
    "MQTTError",
    "MQTTLinkStats",
    "MQTTMessage",
    "MQTTPublishError",
    "MQTTSink",
    "MQTTSource",
    "MQTTSourceOut",
    "Protocol",
    "check_connection",
    "check_session_order",
    "count_change",
]
