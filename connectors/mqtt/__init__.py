"""MQTT input and output for Bytewax 0.21, on paho-mqtt 2.

Reads QoS 1 messages from MQTT topics into a dataflow and publishes
:class:`MQTTMessage` items back with QoS 1, acknowledging each input message
only once the dataflow can no longer lose it.

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

Modules: :mod:`.message` (the items), :mod:`.connection` (where to connect,
errors, connecting), :mod:`.link` (a client kept connected, its log lines
and counters), :mod:`.source` (:class:`MQTTSource`), :mod:`.sink`
(:class:`MQTTSink`), :mod:`.operators` (``input``/``output``) and
:mod:`.testing` (a private mosquitto and test clients). A broker that cannot
be reached when a partition starts (refused, unknown host, TLS failure, bad
credentials, no CONNACK) raises :class:`MQTTConnectError`, one line with
host:port and the reason, never the password.

## Partitions and order

:class:`MQTTSource` has ``partitions`` partitions, keys ``"in-<i>"``; each
subscribes to every topic, so every topic has ``partitions`` partitions.
Every worker lists them all and Bytewax assigns each to one worker. A
partition is one paho client with a stable client id
(:meth:`MQTTSource.client_id_for`, e.g. ``driver-stats-in-0``), a persistent
session (MQTT 3.1.1 ``clean_session=False``; with ``protocol="5"``: clean
start off and a session expiry interval) and QoS 1 subscriptions to all the
topics. One session for all topics matters: the broker queues a
disconnected client's messages in one queue in publish order, so after an
outage or a restart the backlog comes back interleaved across topics as it
was published, not one topic's whole backlog before the next (which would
make the later topics' events look late).

* ``partitions=1`` (default): plain subscriptions. Messages arrive in
  publish order; everything published while the flow is down is queued in
  its session, across broker restarts too.
* ``partitions>1``: shared subscriptions ``$share/<client_id>/<topic>``.
  Mosquitto hands each message to one member, round-robin, and queues the
  share of an offline member in its session: adding partitions (and
  workers) spreads the load, and a flow that was down gets what was
  published meanwhile. The trade-offs, measured with mosquitto 2.0.11:
  (1) no order across partitions; (2) a **restarted broker does not
  restore shared subscriptions** from its persistence file (it still
  reports the session present): messages already queued survive, but
  messages published after the broker restart and before the member
  reconnects are LOST (nobody is subscribed). The partition subscribes
  again on every connection to keep that window short, but a broker
  restart while the flow is down loses everything published until the flow
  is back; (3) when ``partitions`` is lowered, the sessions of the removed
  partitions stay members of the group and keep receiving their share until
  the broker expires them (``persistent_client_expiration`` for 3.1.1, the
  session expiry interval for 5): remove them, or run once more with the
  old value until drained. Switching between 1 and more replaces partition
  0's subscriptions (plain <-> shared).

MQTT 3.1.1 is the default for input: through a 1-worker flow, QoS 1,
100-byte payloads, this connector received about 43k msg/s with 3.1.1 and
22k msg/s with 5 on a 2-core machine; ``bench/end_to_end.py --protocol
3.1.1`` (or ``5``) measures it again on its "MQTT input only" line. Use
``protocol="5"`` only to receive user properties.

## When a message is acknowledged

Messages are received with paho's ``manual_ack`` and PUBACKed (in the order
received, as MQTT 3.1.1 requires) only when Bytewax proves the dataflow has
finished with them. Bytewax's input operator calls ``snapshot()`` on each
partition at the end of every epoch and calls ``next_batch()``/``snapshot()``
for the following epoch only once its probe has passed the previous one. So
every message emitted before a ``snapshot()`` is acknowledged at the next
call of that partition.

* **With recovery** (``-r DIR -s N -b 0``) the probe follows the recovery
  committer: an epoch is passed once every worker has durably written the
  snapshots of that epoch. A message is acknowledged only once its effect
  (state, and the outputs it caused, held in :class:`MQTTSink`'s snapshot)
  is in the recovery store: **at-least-once input**. A crash redelivers every
  message of the uncommitted epochs (duplicates, never losses). Restoring an
  *older* copy of the recovery directory loses what was acked since.
* **Without recovery** the probe follows the outputs. State held in memory
  (e.g. an open window) is lost on a crash although its messages were
  acknowledged: **at-most-once for aggregated state**.

## When a message is published

:func:`operators.publish` (and :func:`operators.output`) publish an item
only once the snapshot of its epoch is committed (the same gate in the other
direction): the sink partition learns it from a commit tick that a small
input of its own emits, because Bytewax polls an input in epoch E only once
E-1 is committed. Published records stay in the partition's snapshot until
PUBACKed; a resumed partition skips those its retained progress marker
(``<progress_prefix>/<client_id>-out-<i>``) says the broker holds. So a
record is published once, also across crashes, except for a group being
written at the instant of a kill (see :mod:`.sink`). Publishing is
pipelined: the worker waits only when ``max_inflight`` records are
unacknowledged. Latency: about one epoch plus the commit.

## Broker settings this relies on (mosquitto 2)

* ``persistence true`` (and a ``persistence_location``): sessions and queued
  messages survive a broker restart.
* ``max_queued_messages 0`` (or more than can pile up while the flow is
  down): the default 1000 DROPS further messages for an offline or slow
  persistent client. ``max_queued_bytes 0`` likewise.
* ``max_inflight_messages 0`` (or at least the messages of one epoch): acks
  wait for the epoch to commit, so with the default 20 a 3.1.1 client gets
  20 messages per epoch (2 msg/s with 10 s epochs). MQTT 5 clients are
  limited by their receive maximum (65535) instead.
* ``persistent_client_expiration``: unset (never) or longer than any outage
  of the flow; expired sessions lose their queue.
* ``message_size_limit`` may cap payloads on the broker side; the
  connector's ``max_message_bytes`` turns larger ones into errors.
"""

from .connection import MQTTConnectError, MQTTConnection, MQTTPublishError, Protocol
from .link import EventHook, MQTTLinkStats, check_connection
from .message import MQTTError, MQTTMessage
from .operators import MQTTSourceOut
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
]
