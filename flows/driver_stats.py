"""The driver-stats dataflow: three event topics in, per-driver interval stats out.

Run it live (settings from ``DRIVER_STATS_*``, see the README)::

    python -m bytewax.run flows.driver_stats                    # 1 worker
    python -m bytewax.run flows.driver_stats -w 2 -r recovery -s 5 -b 0

The pipeline, top to bottom (:func:`build_flow`):

1. ``decode_and_validate`` — bytes become a valid event or a rejection
   (:mod:`driver_stats.intake`);
2. ``key_by_driver`` — every event of a driver goes to one worker;
3. ``dedupe_and_window`` — per driver: drop repeats of (message type,
   journey_id), reject events whose interval already closed, add the rest to
   their event-time tumbling interval and emit each interval's record once
   the driver's clock passes its end (:mod:`driver_stats.windows`). Dedupe
   lives in the same per-driver state as the intervals because a dedupe key
   must live exactly as long as its interval can accept events; fusing them
   also spares one exchange between workers per event;
4. ``encode_stats`` / ``encode_rejected`` — contract bytes for
   ``output/driver_stats`` and ``rejected/<source topic>`` (with the
   ``reason`` user property), both published by one sink.

Tests build this very flow with :func:`build_flow` over Bytewax's
``TestingSource``/``TestingSink``; ``driver-stats replay`` builds it over
history files.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from connectors import mqtt
from connectors.mqtt import MQTTMessage
from driver_stats import logs, metrics
from driver_stats.contract import DriverStats, Rejection, encode_stats, to_json
from driver_stats.intake import Accepted, Intake
from driver_stats.settings import Settings, load_or_exit
from driver_stats.stream_clock import StreamClock
from driver_stats.windows import DUPLICATE, DriverWindows


class DriverWindowsLogic(StatefulBatchLogic):
    """Bytewax adapter around one driver's :class:`DriverWindows`."""

    def __init__(self, windows: DriverWindows, clock: StreamClock):
        self.windows = windows
        self.clock = clock

    @classmethod
    def builder(cls, settings: Settings, lateness: float, retention: float, clock: StreamClock):
        window = settings.window_seconds

        def build(resume_state: Optional[tuple]) -> DriverWindowsLogic:
            if resume_state is None:
                return cls(DriverWindows(window, lateness, retention_seconds=retention), clock)
            if len(resume_state) > 4:  # the stream time of the snapshot
                clock.resume_from(resume_state[4])
            windows = DriverWindows.resume(resume_state, window, lateness, clock.now(), retention)
            return cls(windows, clock)

        return build

    def _keep_or_discard(self, now: float) -> bool:
        # A driver with nothing open and every record behind the stream's
        # floor is forgotten (a deletion in the recovery store): the floor
        # alone now rejects any late event for it, as its state would have.
        return self.DISCARD if self.windows.discardable(now) else self.RETAIN

    def on_batch(self, values: list[Accepted]) -> tuple[Iterable[DriverStats | Rejection], bool]:
        now = self.clock.now()
        add = self.windows.add
        out: list[DriverStats | Rejection] = []
        duplicates = 0
        for accepted in values:
            try:
                verdict = add(accepted.event, accepted.event_time, now)
            except Exception as err:  # noqa: BLE001 - see _internal_error
                out.append(_internal_error(err, accepted))
                continue
            if verdict is None:
                continue
            if verdict is DUPLICATE:
                duplicates += 1
                continue
            out.append(
                Rejection(accepted.source_topic, accepted.payload, verdict, self._detail(verdict, accepted))
            )
        metrics.EVENTS_ACCEPTED.inc(len(values) - duplicates - len(out))
        if duplicates:
            metrics.DUPLICATES.inc(duplicates)
        if out:
            metrics.count_by(metrics.REJECTED, Counter(r.reason for r in out))
        return out + self._close(self.windows.close_due(now)), self._keep_or_discard(now)

    @staticmethod
    def _close(records: list[DriverStats]) -> list[DriverStats]:
        if records:
            metrics.RECORDS_EMITTED.inc(len(records))
        return records

    def _detail(self, reason: str, accepted: Accepted) -> str:
        if reason == "late":
            window = self.windows.window
            start = int(accepted.event_time // window) * window
            return f"interval starting {_iso(start)} already closed (window {window}s, allowed lateness {self.windows.lateness}s)"
        return f"interval total would exceed 2^32-1 ({reason})"

    def on_notify(self) -> tuple[Iterable[DriverStats], bool]:
        now = self.clock.now()
        return self._close(self.windows.close_due(now)), self._keep_or_discard(now)

    def on_eof(self) -> tuple[Iterable[DriverStats], bool]:
        # A finite input (tests, replay) is complete: close every interval.
        # The clock is kept, so the guard against late events stays.
        return self._close(self.windows.close_all()), self.RETAIN

    def notify_at(self) -> Optional[datetime]:
        at = self.windows.next_close()
        if at is None:
            at = self.windows.discard_at()
        if at is None:
            return None
        return datetime.fromtimestamp(self.clock.to_wall(at), timezone.utc)

    def snapshot(self) -> tuple:
        return self.windows.snapshot(self.clock.now())


INTERNAL_ERROR = "internal error"  # rejection reason: an exception of ours met this event
UNENCODABLE = "unencodable"  # a stats record the output format cannot carry
_log = logging.getLogger("driver_stats.flow")


def _internal_error(err: Exception, accepted: Accepted) -> Rejection:
    """A bug of ours met by one event: reject that event, never crash the flow.

    A crash would be a crash loop: the broker redelivers the unacknowledged
    message and recovery restores the same state. The window logic checks
    everything before it changes anything (a refused event leaves no trace),
    so the driver's state stays as it was before this event.
    """
    _log.error("event rejected after an internal error (topic %s)", accepted.source_topic, exc_info=err)
    detail = f"{type(err).__name__}: {str(err)[:200]}"
    return Rejection(accepted.source_topic, accepted.payload, INTERNAL_ERROR, detail)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def build_flow(
    settings: Settings,
    source: Source,
    sink: Sink,
    *,
    clock: Callable[[], float] = time.time,
    stream_clock: StreamClock | None = None,
    complete_input: bool = False,
) -> Dataflow:
    """The dataflow over any ``source`` of messages with ``.topic`` and ``.payload``.

    ``sink`` receives ``(topic, MQTTMessage)`` items: stats on
    ``settings.topic_driver_stats``, rejections on ``rejected/<source topic>``.
    ``complete_input=True`` (history replay) waits for the end of the input
    to close intervals, so no event is late however the input is ordered.
    ``clock`` is wall-clock time (for the ``future`` rule); ``stream_clock``
    drives the drivers' clocks (default: ``clock``, never paused).
    """
    stream_clock = stream_clock or StreamClock(clock)
    intake = Intake(settings, clock)
    lateness = math.inf if complete_input else settings.allowed_lateness_seconds
    retention = math.inf if complete_input else settings.state_retention_seconds
    stats_topic = settings.topic_driver_stats
    encode = to_json if settings.output_format == "json" else encode_stats
    rejected_prefix = settings.rejected_prefix

    def stats_message(stats: DriverStats) -> MQTTMessage:
        try:
            return MQTTMessage(stats_topic, encode(stats))
        except Exception as err:  # noqa: BLE001 - a record is never lost, nor a crash loop
            # Validation keeps every total within uint32, so this is a bug of
            # ours (or a snapshot written by one): the record goes, as JSON,
            # to rejected/<stats topic> instead of stopping the flow.
            _log.error("record could not be encoded: %s", stats, exc_info=err)
            detail = f"{type(err).__name__}: {str(err)[:200]}"
            return MQTTMessage(stats_topic, to_json(stats)).rejected(UNENCODABLE, detail, rejected_prefix)

    def rejected_message(rejection: Rejection) -> MQTTMessage:
        original = MQTTMessage(rejection.source_topic, rejection.payload)
        return original.rejected(rejection.reason, rejection.detail, rejected_prefix)

    flow = Dataflow("driver_stats")
    messages = op.input("messages", flow, source)
    decoded = op.flat_map_batch("decode_and_validate", messages, intake.batch)
    valid = op.branch("split_valid", decoded, lambda item: isinstance(item, Accepted))
    by_driver = op.key_on("key_by_driver", valid.trues, lambda accepted: accepted.event.driver_id)
    windowed = op.stateful_batch(
        "dedupe_and_window", by_driver, DriverWindowsLogic.builder(settings, lateness, retention, stream_clock)
    )
    closed = op.branch(
        "split_stats", op.key_rm("unkey", windowed), lambda item: isinstance(item, DriverStats)
    )
    stats_out = op.map("encode_stats", closed.trues, stats_message)
    rejected = op.merge("all_rejected", valid.falses, closed.falses)
    rejected_out = op.map("encode_rejected", rejected, rejected_message)
    outgoing = op.merge("all_out", stats_out, rejected_out)
    # Keyed by topic: the sink's partitions keep each topic's order.
    op.output("publish", op.key_on("key_by_topic", outgoing, lambda m: m.topic), sink)
    return flow


def _count_reconnects(event: str, client_id: str, _detail: str) -> None:
    if event == "reconnected":
        metrics.RECONNECTS.labels(client_id).inc()


def _input_events(stream_clock: StreamClock) -> Callable[[str, str, str], None]:
    """Pause the stream clock while an input partition is disconnected."""

    def on_event(event: str, client_id: str, detail: str) -> None:
        _count_reconnects(event, client_id, detail)
        if event == "disconnected":
            stream_clock.input_down(client_id)
        elif event in ("connected", "reconnected"):
            stream_clock.input_up(client_id)

    return on_event


def _count_published(messages: list[mqtt.MQTTMessage], seconds: float) -> None:
    metrics.PUBLISH_LATENCY.observe(seconds)
    kinds = Counter("stats" if not m.user_properties else "rejected" for m in messages)
    metrics.count_by(metrics.RECORDS_PUBLISHED, kinds)


def _stop_quietly_on_signals() -> None:
    """SIGTERM (how Kubernetes stops pods) and Ctrl-C stop the flow cleanly.

    Both take Bytewax's interrupt path: workers stop between steps, every
    write already acknowledged by the broker, and input not yet covered by a
    committed snapshot stays unacknowledged, so the broker redelivers it on
    restart. Bytewax reports that path as an error; we log one line and
    exit 0 instead of a traceback.
    """
    log = logging.getLogger("driver_stats")

    def on_sigterm(signum, frame):
        log.info("stopping on SIGTERM")
        raise KeyboardInterrupt

    def on_uncaught(kind, error, trace):
        interrupted = issubclass(kind, KeyboardInterrupt) or isinstance(error.__cause__, KeyboardInterrupt)
        if interrupted or "signal received" in str(error):
            log.info("stopped")
            logging.shutdown()
            os._exit(0)
        default_excepthook(kind, error, trace)

    default_excepthook = sys.excepthook
    signal.signal(signal.SIGTERM, on_sigterm)
    sys.excepthook = on_uncaught


def build_live_flow(settings: Settings) -> Dataflow:
    """The production flow: MQTT in, MQTT out, configured by ``settings``.

    Checks the broker first, so a wrong URL or credential stops the program
    with one line instead of a traceback from inside a worker.
    """
    logs.configure(settings.log_level)
    connection = settings.mqtt_connection()
    try:
        mqtt.check_connection(connection, settings.client_id)
    except mqtt.MQTTConnectError as err:
        raise SystemExit(f"driver-stats: {err} (DRIVER_STATS_MQTT_URL={settings.mqtt_url})") from None
    metrics.serve(settings.metrics_port)
    _stop_quietly_on_signals()
    stream_clock = StreamClock()
    source = mqtt.MQTTSource(
        connection,
        settings.input_topics,
        client_id=settings.client_id,
        partitions=settings.partitions_per_topic,
        max_pending=settings.max_pending_messages,
        on_event=_input_events(stream_clock),
    )
    sink = mqtt.MQTTSink(
        connection,
        client_id=settings.client_id,
        on_event=_count_reconnects,
        on_written=_count_published,
    )
    return build_flow(settings, source, sink, stream_clock=stream_clock)


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.driver_stats` looks up `flow`; build it on
    # that first look-up so importing build_flow needs no settings or broker.
    if name == "flow":
        return build_live_flow(load_or_exit())
    raise AttributeError(name)
