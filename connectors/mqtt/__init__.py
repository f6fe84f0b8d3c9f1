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
and counters), :mod:`.source` (:class:`MQTTSource`), :mod:`.process` (partitions
in processes of their own), :mod:`.batch_client` (paho's client reading
whole socket buffers, MQTT 5 PUBLISH decoded by the ``mqtt5`` codec), :mod:`.partitions`
(who reads which shard; changing the count), :mod:`.watermarks` (how far
each partition has read), :mod:`.sink`
(:class:`MQTTSink`), :mod:`.operators` (``input``/``output``) and
:mod:`.testing` (a private mosquitto and test clients). A broker that cannot
be reached when a partition starts (refused, unknown host, TLS failure, bad
credentials, no CONNACK) raises :class:`MQTTConnectError`, one line with
host:port and the reason, never the password.

## Partitions and order

:class:`MQTTSource` has ``partitions`` partitions, keys ``"in-<i>"``. Every
worker lists them and Bytewax assigns each to one worker. A partition is one
paho client with a stable client id (:meth:`MQTTSource.client_id_for`, e.g.
``driver-stats-in-0``; the count is not part of it), a persistent session
(MQTT 3.1.1 ``clean_session=False``; with ``protocol="5"``: clean start off
and a session expiry interval) and **plain** QoS 1 subscriptions to the
topics it owns. With ``shards=S`` each topic ``t`` is also read as ``S``
shard topics ``t/<s>``; partition ``i`` of ``N`` owns the shards with
``s % N == i`` (:mod:`.partitions`), and partition 0 owns the plain topics.
So the broker delivers each message once, to its owner, and producers choose
the shard: one key per shard (driver-stats: the driver) keeps a key's
messages in one session, in publish order. One session for all of a
partition's topics matters: the broker queues a disconnected client's
messages in one queue in publish order, so after an outage or a restart the
backlog comes back interleaved across topics as it was published, not one
topic's whole backlog before the next.

Order: within a partition, messages come in publish order (across its
topics); there is **no order across partitions**. Identical payloads on the
same topic always go to the same partition.

Why not shared subscriptions (``$share/<group>/<topic>``, used in an earlier
version): mosquitto 2.0 does not restore them from its persistence file
(measured with 2.0.11: the session is reported present, the shared
subscription is gone, so everything published after a broker restart and
before the flow resubscribes is lost; with the flow down, all of it), and
MQTT 5.0 does not pin it down either: which member gets a message is up to
the server, and for a member that went away it only says the server MAY
wait for it to reconnect (section 4.8.2). EMQX's documentation advises clean
sessions for shared subscribers, and its Message Queue page (EMQX 6.0) says
shared subscriptions keep nothing while no member is online; VerneMQ's
describes only how messages are spread over the members present. Plain
subscriptions in persistent sessions are what every broker persists. (The
version before this one had every partition read every message and keep
those whose payload hash named it: safe, but each process read the whole
stream, so adding processes added CPU and no speed.)

**Changing the count** (any N to any M, across a restart) loses nothing and
leaves no session behind. Each partition publishes a retained marker
``connectors-mqtt/partitions/<client_id>/in-<i>`` (``{"partitions": M,
"shards": S}``, plus ``"draining_from": [N]`` while in transition) after its
SUBACK, and every session subscribes to ``connectors-mqtt/partitions/<client_id>/+``
too, so markers arrive in each session's stream; before connecting, a
partition reads the retained markers with a short clean-session client
(:func:`.source.read_markers`). A partition whose own marker names another
count subscribes to, and takes, the shards it owned under the old count *or*
the new one until its stream has carried a marker with ``partitions == M``
from every partition ``k < M``: that marker was published after ``k``
subscribed, and the broker delivers a session's messages in publish order,
so every message after it is in ``k``'s queue too. (MQTT promises that order
per topic only; mosquitto keeps one queue per session, so it holds across
topics there. A fixed count does not depend on it.) Then it unsubscribes the
shards it no longer owns. A session ``j >= M`` left by a larger count is
listed as an extra partition ``in-<j>`` (from its marker) that takes what
``j`` owned under the old count until the same holds in ``j``'s stream,
waits until all it took is committed, then marks its marker ``retired``,
deletes the session (clean-session connect) and ends (EOF, so Bytewax drops
its recovery state). Retired markers stay (tiny), so ``in-<j>`` keeps being
listed and a recovery store that still holds its key resumes. A message
taken under both counts is a duplicate, absorbed by the dataflow's dedupe. A
session left by an earlier layout (a marker without ``shards``, or none:
shared subscriptions) takes everything in its queue until the change is
over; its marker says so (``"draining_from": [0]``) across a crash. Nothing
on a marker topic can crash a partition or make it take less (an unreadable
marker counts as none). ACLs must let the flow's user publish and subscribe
``connectors-mqtt/#``.

## Watermarks

With a ``newest_position`` function (the newest place in the stream, in
Unix seconds, of a batch of messages: driver-stats gives the event time),
each partition publishes its *watermark* on the retained ``connectors-mqtt/watermarks/<client_id>/in-<i>``:
the newest position it has emitted, once the epoch that emitted it is
complete (the acknowledgements' gate, below), so everything the partition
emitted before is processed by the whole dataflow. :meth:`MQTTSource.watermarks`
gives each listed partition's; their lowest is the dataflow's low watermark:
no message still to come from any partition lies behind what it read
before. A partition that is caught up and
idle (its own probe through its session comes back fast, twice, with no data
in between) moves its watermark with the wall clock. Details and the rules:
:mod:`.watermarks`. Each input message carries the index of the partition
that read it (``MQTTMessage.partition``), so a stateful step can also count
how far it has itself processed each partition, an epoch before the
watermark says so.

The input prefers MQTT 5 (3.1.1 where the broker lacks it): its Receive
Maximum bounds what the broker sends unacknowledged. 3.1.1 is cheaper:
through a 1-worker flow, QoS 1, 100-byte payloads, this connector received
about 43k msg/s with 3.1.1 and 22k msg/s with 5 on a 2-core machine;
``bench/end_to_end.py`` measures both on its "MQTT input only" lines.

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
the broker accepts them; a resumed partition skips those its retained
progress marker (``<progress_prefix>/<client_id>-out-<i>``) says the broker
holds, trusting it only within its own records (another run's marker, a
number it never reached or anything that is not a marker is ignored with a
warning). So a record is published once, also across crashes, except for a
group being written at the instant of a kill (see :mod:`.sink`). Publishing
is pipelined: the worker waits only when ``max_inflight`` records are
unacknowledged. Latency: about one epoch plus the commit. Without recovery
there is no commit to wait for: ``MQTTSink(commit_gated=False)`` publishes
each item as it arrives.

A publish the broker refuses (MQTT 5 reason code 0x80 or more, e.g. not
authorized by its ACL) is never dropped: the record stays in the snapshot
and is retried alone, after 1 s doubling to 60 s, while the records behind
it wait; the partition's stats (``refused_reason``) and ``on_refused`` report
it, and only accepted records reach ``on_written``.

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
* An ACL that lets the flow's user read and write ``connectors-mqtt/#`` (the
  progress and partition markers) and lets **no other client write there**:
  a marker forged with the flow's own run and record numbers is
  indistinguishable from its own.
* mosquitto 2.0.11 with ``max_queued_messages 0`` closes the connection
  after each refused publish (after the PUBACK); the sink reconnects and goes
  on, but an accepted record whose PUBACK was lost with the connection is
  published again (QoS 1).
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
