"""Prometheus metrics of the flow.

All metrics live in prometheus-client's default registry, so they are served
both on ``DRIVER_STATS_METRICS_PORT`` (with the health endpoints, see
:mod:`flows.health`) and, when Bytewax's dataflow API is on
(``BYTEWAX_DATAFLOW_API_ENABLED=true``, port 3030), at its ``/metrics`` next
to Bytewax's own operator metrics.

Nothing here costs anything per event:

* counters are incremented once per batch;
* the window step marks a shard's gauges stale when a batch changed it
  (:class:`ShardGauges`, kept by :class:`flows.steps.DriverShardLogic`);
* everything else is read when Prometheus scrapes (:class:`_StateCollector`):
  the stale shards are recounted and all summed per worker, the MQTT
  clients' state (:class:`~connectors.mqtt.MQTTLinkStats`), the age of the
  recovery store.

What ``/metrics`` reveals: counts, durations and sizes, labelled with topic
names, rejection reasons, MQTT client ids and worker numbers. It never shows
the broker address, credentials, driver ids or message contents.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import threading
import time
import weakref
from collections import Counter as _Tally
from typing import Callable, Iterable, Mapping, Optional

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from driver_stats.contract import stats_interval_end
from driver_stats.core import wall_clock

log = logging.getLogger("driver_stats.metrics")

MESSAGES_RECEIVED = Counter(
    "driver_stats_messages_received_total", "Input messages received, by topic", ["topic"]
)
EVENTS_ACCEPTED = Counter(
    "driver_stats_events_accepted_total", "Events counted in an interval"
)
DUPLICATES = Counter(
    "driver_stats_duplicates_total", "Repeats of an already counted (type, journey_id): not counted"
)
REJECTED = Counter(
    "driver_stats_rejected_total",
    "Messages republished on rejected/<topic>, by reason (late events are reason=\"late\")",
    ["reason"],
)
RECORDS_EMITTED = Counter(
    "driver_stats_records_emitted_total", "Interval records produced by the window step"
)
RECORDS_PUBLISHED = Counter(
    "driver_stats_records_published_total", "Messages the broker acknowledged, by kind", ["kind"]
)
PUBLISH_REFUSED = Counter(
    "driver_stats_publish_refused_total",
    "Publishes the broker refused (MQTT 5 reason code 0x80 or more), by reason: the record waits and is "
    "retried, holding back those behind it; a refused progress marker is counted too",
    ["reason"],
)
PUBLISH_LATENCY = Histogram(
    "driver_stats_publish_latency_seconds",
    "Time from handing a record to the broker until it was acknowledged (the longest of each group reported)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECORD_DELAY = Histogram(
    "driver_stats_interval_end_to_ack_seconds",
    "Wall-clock time from an interval's end until the broker acknowledged its record "
    "(normally the allowed lateness plus a little)",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800, 3600),
)
RECONNECTS = Counter(
    "driver_stats_mqtt_reconnects_total", "MQTT connections re-established after a loss", ["client"]
)
LAST_RECORD = Gauge(
    "driver_stats_last_record_published_timestamp_seconds",
    "Unix time the broker last acknowledged a stats record (the process start until then)",
)
WINDOW_SECONDS = Gauge("driver_stats_window_seconds", "DRIVER_STATS_WINDOW_SECONDS: the interval length")
ALLOWED_LATENESS = Gauge(
    "driver_stats_allowed_lateness_seconds", "DRIVER_STATS_ALLOWED_LATENESS_SECONDS"
)

LAST_RECORD.set(wall_clock.now())


def count_by(counter: Counter, labels: _Tally) -> None:
    """Add a batch's tally (label value -> count) to a labelled counter."""
    for label, amount in labels.items():
        counter.labels(label).inc(amount)


def count_refused(_topic: str, reason: str) -> None:
    """The sink's ``on_refused`` hook: one refused publish (the reason label: ``Not authorized (0x87)``)."""
    PUBLISH_REFUSED.labels(reason).inc()


def observe_record_delays(payloads: Iterable[bytes], now: Optional[float] = None) -> int:
    """Observe "interval end -> acknowledged" for acknowledged stats records; how many were read.

    Per record (one per driver per interval), never per event. A payload that
    does not decode (a record published as JSON on the rejected topic does
    not come here) is skipped.
    """
    now = wall_clock.now() if now is None else now
    seen = 0
    for payload in payloads:
        try:
            end = stats_interval_end(payload)
        except Exception:  # noqa: BLE001 - a gauge must never stop the sink
            continue
        RECORD_DELAY.observe(max(0.0, now - end))
        seen += 1
    if seen:
        LAST_RECORD.set(now)
    return seen


# --------------------------------------------------------------------------
# State read on scrape


class ShardGauges:
    """What one shard of the window step reports: recounted on scrape when its owner marked it stale.

    ``drivers``: drivers tracked; ``open_intervals``: their open intervals;
    ``oldest_end``: the end (Unix seconds) of the oldest open interval, or
    ``inf`` when none is open; ``now``: the stream clock the shard runs on;
    ``count()``: those three numbers counted from the shard, safe to call
    from the scrape thread. The shard's worker only ever sets ``stale``.
    """

    __slots__ = ("drivers", "open_intervals", "oldest_end", "stale", "now", "count", "__weakref__")

    def __init__(self, now: Callable[[], float], count: Callable[[], tuple[int, int, float]]):
        self.drivers = 0
        self.open_intervals = 0
        self.oldest_end = math.inf
        self.stale = True
        self.now = now
        self.count = count

    def refresh(self) -> None:
        if not self.stale:
            return
        self.stale = False  # before counting: a batch meanwhile marks it again
        try:
            self.drivers, self.open_intervals, self.oldest_end = self.count()
        except (RuntimeError, ValueError):  # changed while counted: next scrape
            self.stale = True


class _Workers:
    """The shards of this process grouped by worker thread (weakly: a finished flow lets go)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._labels: dict[int, str] = {}  # thread ident -> "0", "1", ... in order of first use
        self._shards: dict[int, tuple[str, weakref.ref]] = {}

    def register(self, gauges: ShardGauges) -> None:
        ident = threading.get_ident()
        with self._lock:
            label = self._labels.setdefault(ident, str(len(self._labels)))
        key = id(gauges)
        shards = self._shards
        shards[key] = (label, weakref.ref(gauges, lambda _ref: shards.pop(key, None)))

    def by_worker(self) -> dict[str, list[ShardGauges]]:
        grouped: dict[str, list[ShardGauges]] = {}
        for label, ref in list(self._shards.values()):
            gauges = ref()
            if gauges is not None:
                grouped.setdefault(label, []).append(gauges)
        return grouped


_workers = _Workers()


def shard_gauges(now: Callable[[], float], count: Callable[[], tuple[int, int, float]]) -> ShardGauges:
    """A :class:`ShardGauges` for a shard of the calling worker thread, counted on scrape."""
    gauges = ShardGauges(now, count)
    _workers.register(gauges)
    return gauges


class _Watched:
    """What the live process points the collector at (nothing in tests and replay)."""

    source_stats: Mapping[str, object] = {}
    sink_stats: Mapping[str, object] = {}
    recovery_dir: Optional[str] = None
    snapshot_interval: Optional[float] = None
    readiness: Optional[Callable[[], tuple[bool, str]]] = None


_watched = _Watched()


def watch(
    *,
    source_stats: Mapping[str, object],
    sink_stats: Mapping[str, object],
    recovery_dir: Optional[str] = None,
    snapshot_interval: Optional[float] = None,
    readiness: Optional[Callable[[], tuple[bool, str]]] = None,
) -> None:
    """Read these on every scrape: the MQTT clients' stats (client id ->
    :class:`~connectors.mqtt.MQTTLinkStats`), the recovery directory and
    snapshot interval (None without recovery), the readiness verdict
    (:mod:`flows.health`)."""
    _watched.source_stats = source_stats
    _watched.sink_stats = sink_stats
    _watched.recovery_dir = recovery_dir
    _watched.snapshot_interval = snapshot_interval
    _watched.readiness = readiness


def recovery_store_age(directory: str, now: Optional[float] = None) -> Optional[float]:
    """Seconds since this process's recovery partitions were last written, or None without any.

    Bytewax writes a partition (its SQLite file and write-ahead log) once per
    epoch, when it stores the epoch's snapshots and commits it; while nothing
    commits (a stalled dataflow) nothing is written. The ``commits`` table
    itself cannot say when: its ``created_at`` keeps the first commit's time.
    """
    newest = None
    for path in glob.glob(os.path.join(glob.escape(directory), "part-*.sqlite3*")):
        if path.endswith("-shm"):
            continue  # readers touch the shared-memory index too
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        newest = mtime if newest is None else max(newest, mtime)
    if newest is None:
        return None
    return max(0.0, (wall_clock.now() if now is None else now) - newest)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


_FAMILIES = {
    "lag": ("driver_stats_event_time_lag_seconds",
            "Stream clock minus the end of the oldest open interval of this worker's drivers "
            "(0 while none has ended): at most the allowed lateness when keeping up", ("worker",)),
    "open": ("driver_stats_open_intervals", "Open intervals of this worker's drivers", ("worker",)),
    "drivers": ("driver_stats_tracked_drivers", "Drivers whose state this worker keeps", ("worker",)),
    "connected": ("driver_stats_mqtt_connected", "1 while the MQTT client is connected", ("client",)),
    "buffered": ("driver_stats_input_buffered_messages",
                 "Received by an input partition, not yet taken by the dataflow", ("client",)),
    "unacked": ("driver_stats_input_unacked_messages",
                "Held by an input partition and not yet acknowledged to the broker "
                "(acknowledged once their snapshot is committed)", ("client",)),
    "poll_age": ("driver_stats_input_poll_age_seconds",
                 "Seconds since the dataflow last polled the input partition", ("client",)),
    "inflight_cap": ("driver_stats_broker_inflight_cap",
                     "Messages the broker may send an input client before waiting for its acknowledgements "
                     "(MQTT 5 Receive Maximum); absent when unknown", ("client",)),
    "pending": ("driver_stats_output_pending_messages",
                "Handed to an output client and not yet acknowledged by the broker, or held back by a "
                "refused one", ("client",)),
    "snapshot_age": ("driver_stats_snapshot_age_seconds",
                     "Seconds since this process last wrote its recovery partitions (once per committed "
                     "epoch); absent without recovery", ()),
    "snapshot_interval": ("driver_stats_snapshot_interval_seconds",
                          "Bytewax's snapshot (epoch) interval, -s; absent without recovery", ()),
    "ready": ("driver_stats_ready", "1 when /readyz answers ready", ()),
}


class _StateCollector:
    """The gauges computed when Prometheus scrapes (see the module docstring)."""

    def describe(self):
        return [_gauge(*spec) for spec in _FAMILIES.values()]

    def collect(self):
        families = {key: _gauge(*spec) for key, spec in _FAMILIES.items()}
        try:
            self._shards(families)
            self._links(families)
            if _watched.recovery_dir is not None:
                age = recovery_store_age(_watched.recovery_dir)
                if age is not None:
                    families["snapshot_age"].add_metric([], age)
            if _watched.snapshot_interval is not None:
                families["snapshot_interval"].add_metric([], _watched.snapshot_interval)
            if _watched.readiness is not None:
                families["ready"].add_metric([], 1.0 if _watched.readiness()[0] else 0.0)
        except Exception:  # noqa: BLE001 - a scrape must answer whatever happens
            log.exception("collecting gauges failed")
        return list(families.values())

    @staticmethod
    def _shards(families: dict) -> None:
        for worker, shards in sorted(_workers.by_worker().items()):
            for shard in shards:
                shard.refresh()
            oldest = min((s.oldest_end for s in shards), default=math.inf)
            lag = max(0.0, shards[0].now() - oldest) if oldest != math.inf else 0.0
            families["lag"].add_metric([worker], lag)
            families["open"].add_metric([worker], sum(s.open_intervals for s in shards))
            families["drivers"].add_metric([worker], sum(s.drivers for s in shards))

    @staticmethod
    def _links(families: dict) -> None:
        now = time.monotonic()
        for client, stats in list(_watched.source_stats.items()):
            families["connected"].add_metric([client], 1.0 if stats.connected else 0.0)
            families["buffered"].add_metric([client], stats.buffered)
            families["unacked"].add_metric([client], stats.unacked)
            if stats.last_call:
                families["poll_age"].add_metric([client], max(0.0, now - stats.last_call))
        for client, stats in sorted(list(_watched.source_stats.items()), key=lambda item: item[0]):
            if stats.inflight_cap:
                families["inflight_cap"].add_metric([client], stats.inflight_cap)
        for client, stats in list(_watched.sink_stats.items()):
            families["connected"].add_metric([client], 1.0 if stats.connected else 0.0)
            families["pending"].add_metric([client], stats.pending)


REGISTRY.register(_StateCollector())
