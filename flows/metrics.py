"""Prometheus metrics of the flow, and where they are served.

All metrics live in prometheus-client's default registry, so they are served
both on ``DRIVER_STATS_METRICS_PORT`` (:func:`serve`) and, when Bytewax's
dataflow API is on (``BYTEWAX_DATAFLOW_API_ENABLED=true``, port 3030), at its
``/metrics`` next to Bytewax's own operator metrics.

Counters are incremented once per batch, not per event, to keep the hot path
cheap.
"""

from __future__ import annotations

import logging
from collections import Counter as _Tally

from prometheus_client import Counter, Histogram, start_http_server

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
PUBLISH_LATENCY = Histogram(
    "driver_stats_publish_latency_seconds",
    "Time from handing a batch to the broker until every message in it was acknowledged",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONNECTS = Counter(
    "driver_stats_mqtt_reconnects_total", "MQTT connections re-established after a loss", ["client"]
)


def count_by(counter: Counter, labels: _Tally) -> None:
    """Add a batch's tally (label value -> count) to a labelled counter."""
    for label, amount in labels.items():
        counter.labels(label).inc(amount)


def serve(port: int) -> None:
    """Serve /metrics on ``port`` (0: off). A busy port is a warning, not a crash."""
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as err:
        log.warning("metrics not served: port %d: %s", port, err.strerror or err)
        return
    log.info("metrics served on :%d/metrics", port)
