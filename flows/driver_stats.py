"""The driver-stats dataflow: three event topics in, per-driver interval stats out.

Run it live (settings from ``DRIVER_STATS_*``, see the README)::

    python -m bytewax.run flows.driver_stats                    # 1 worker
    python -m bytewax.run flows.driver_stats -w 2 -r recovery -s 5 -b 0

The pipeline, top to bottom (:func:`build_flow`):

1. ``decode_and_validate`` — bytes become a valid event or a rejection
   (:mod:`driver_stats.core.intake`);
2. ``key_by_driver_shard`` — every event of a driver goes to one worker,
   keyed by the driver's shard (:mod:`driver_stats.core.shards`) so that
   the number of state keys stays bounded;
3. ``dedupe_and_window`` — per driver: drop repeats of (message type,
   journey_id), reject events whose interval already closed, add the rest to
   their event-time tumbling interval and emit each interval's record once
   the driver's clock passes its end (:mod:`driver_stats.core.windows`, run
   by :class:`flows.steps.DriverShardLogic`). Dedupe lives in the same
   per-driver state as the intervals because its keys follow the intervals'
   lifetimes; fusing them also spares one exchange between workers per event;
4. ``encode_stats`` / ``encode_rejected`` — contract bytes for
   ``output/driver_stats`` (keyed by driver) and ``rejected/<source
   topic>`` (with the ``reason`` user property), both published by one
   sink; with MQTT, each record once its epoch's snapshot is committed.

The steps' Bytewax side and metrics are in :mod:`flows.steps`; the live
process (MQTT, broker check, signals, metrics server) in :mod:`flows.live`,
which :func:`build_live_flow` puts at both ends of :func:`build_flow`.
Tests build this very flow with :func:`build_flow` over Bytewax's
``TestingSource``/``TestingSink``; ``driver-stats replay`` builds it over
history files.
"""

from __future__ import annotations

import math
from typing import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors.mqtt import MQTTSink
from connectors.mqtt import operators as mop
from driver_stats.core import wall_clock
from driver_stats.contract import DriverStats
from driver_stats.core.intake import Accepted, Intake
from driver_stats.core.shards import shard_of
from driver_stats.core.stream_clock import StreamClock
from driver_stats.settings import Settings, load_or_exit
from flows import live
from flows.steps import DriverShardLogic, decode_batch, rejected_encoder, stats_encoder


def build_flow(
    settings: Settings,
    source: Source,
    sink: Sink,
    *,
    clock: Callable[[], float] | None = None,
    stream_clock: StreamClock | None = None,
    complete_input: bool = False,
    input_done: Callable[[], bool] | None = None,
) -> Dataflow:
    """The dataflow over any ``source`` of messages with ``.topic`` and ``.payload``.

    ``sink`` receives ``(key, MQTTMessage)`` items: stats (keyed by driver) on
    ``settings.topic_driver_stats``, rejections on ``rejected/<source topic>``.
    ``complete_input=True`` (history replay) waits for the end of the input
    to close intervals, so no event is late however the input is ordered.
    ``clock`` is the wall clock, for the calendar only (the ``future``
    rule; default :func:`driver_stats.core.wall_clock.now`); ``stream_clock`` is the
    stream's event time, which closes the intervals of quiet drivers
    (default: the product's rule over an input without watermarks, i.e.
    what the window step processed, :mod:`driver_stats.core.stream_clock`).
    An :class:`~connectors.mqtt.MQTTSink` publishes commit-gated
    (:func:`connectors.mqtt.operators.publish`); with a finite input over
    MQTT (benchmarks), ``input_done`` says when it is exhausted.
    """
    if stream_clock is None:
        stream_clock = StreamClock.of_input()
    clock = clock or wall_clock.now
    lateness = math.inf if complete_input else settings.allowed_lateness_seconds
    retention = math.inf if complete_input else settings.state_retention_seconds

    flow = Dataflow("driver_stats")
    messages = op.input("messages", flow, source)
    decoded = op.flat_map_batch("decode_and_validate", messages, decode_batch(Intake(settings, clock)))
    valid = op.branch("split_valid", decoded, lambda item: isinstance(item, Accepted))
    # Keyed by the driver's shard: every event of a driver goes to one worker,
    # and the state keys stay bounded however many drivers come and go.
    by_shard = op.key_on("key_by_driver_shard", valid.trues, lambda accepted: shard_of(accepted.event.driver_id))
    windowed = op.stateful_batch(
        "dedupe_and_window", by_shard, DriverShardLogic.builder(settings, lateness, retention, stream_clock)
    )
    closed = op.branch(
        "split_stats", op.key_rm("unkey", windowed), lambda item: isinstance(item, DriverStats)
    )
    # Keyed by driver: the sink's partitions keep each driver's records in order.
    stats_by_driver = op.key_on("key_stats_by_driver", closed.trues, lambda stats: stats.driver_id)
    stats_out = op.map_value("encode_stats", stats_by_driver, stats_encoder(settings))
    rejected = op.merge("all_rejected", valid.falses, closed.falses)
    rejected_out = op.key_on("key_rejected_by_topic", op.map("encode_rejected", rejected, rejected_encoder(settings)),
                             lambda message: message.topic)
    outgoing = op.merge("all_out", stats_out, rejected_out)
    if isinstance(sink, MQTTSink):
        # Each record goes out once the snapshot of its epoch is committed.
        mop.publish("publish", outgoing, sink, until=input_done)
    else:
        op.output("publish", outgoing, sink)
    return flow


def build_live_flow(settings: Settings) -> Dataflow:
    """The production flow: MQTT in, MQTT out, configured by ``settings`` (:mod:`flows.live`)."""
    io = live.start(settings)
    return build_flow(settings, io.source, io.sink, stream_clock=io.stream_clock)


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.driver_stats` looks up `flow`; build it on
    # that first look-up so importing build_flow needs no settings or broker.
    if name == "flow":
        return build_live_flow(load_or_exit())
    raise AttributeError(name)
