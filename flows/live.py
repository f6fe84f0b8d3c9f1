"""The live process: settings → MQTT connection, broker check, metrics, signals.

:func:`start` prepares what ``python -m bytewax.run flows.driver_stats``
runs (through :func:`flows.driver_stats.build_live_flow`): JSON logs, a
broker check that turns a wrong URL or credential into one line, the
metrics server, a quiet stop on SIGTERM, and the
:class:`~connectors.mqtt.MQTTSource` and :class:`~connectors.mqtt.MQTTSink`
whose connection events feed the metrics and the stream clock.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import Counter
from typing import Callable, NamedTuple

from connectors import mqtt
from driver_stats.core.stream_clock import StreamClock
from driver_stats.settings import Settings

from . import logs, metrics


def mqtt_connection(settings: Settings) -> mqtt.MQTTConnection:
    """The broker connection the ``DRIVER_STATS_MQTT_*`` settings describe."""
    return mqtt.MQTTConnection(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        tls=settings.mqtt_tls,
        ca_file=settings.mqtt_ca_file,
        cert_file=settings.mqtt_cert_file,
        key_file=settings.mqtt_key_file,
        username=settings.mqtt_username,
        password=settings.mqtt_password,
    )


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


def _published_counter(stats_topic: str) -> Callable[[list[mqtt.MQTTMessage], float], None]:
    """Count acknowledged messages as ``stats`` (on the stats topic) or ``rejected``."""

    def count_published(messages: list[mqtt.MQTTMessage], seconds: float) -> None:
        metrics.PUBLISH_LATENCY.observe(seconds)
        kinds = Counter("stats" if m.topic == stats_topic else "rejected" for m in messages)
        metrics.count_by(metrics.RECORDS_PUBLISHED, kinds)

    return count_published


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


class LiveIO(NamedTuple):
    """The live flow's input and output, and the clock its input drives."""

    source: mqtt.MQTTSource
    sink: mqtt.MQTTSink
    stream_clock: StreamClock


def start(settings: Settings) -> LiveIO:
    """Set up the process for the live flow and open its MQTT input and output.

    Checks the broker first, so a wrong URL or credential stops the program
    with one line instead of a traceback from inside a worker.
    """
    logs.configure(settings.log_level)
    connection = mqtt_connection(settings)
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
        on_written=_published_counter(settings.topic_driver_stats),
    )
    return LiveIO(source, sink, stream_clock)
