"""The live process: settings → MQTT connection, broker check, metrics, health, signals.

:func:`start` prepares what ``python -m bytewax.run flows.driver_stats``
runs (through :func:`flows.driver_stats.build_live_flow`): JSON logs, a
broker check that turns a wrong URL or credential into one line, the
metrics and health server (:mod:`flows.health`), a quiet stop on SIGTERM
and Ctrl-C, an exit with :data:`CHILD_DIED_EXIT_CODE` when an MQTT
partition's child process dies, and the :class:`~connectors.mqtt.MQTTSource`
(reading the shard topics, each partition in a process of its own, with the
event time as its partitions' watermark, which with what the window step
processed of each partition makes the stream clock) and
:class:`~connectors.mqtt.MQTTSink`, whose connection events and stats feed
the metrics and the health checks.

The flow is not told Bytewax's command line, but two of its options matter:
the recovery directory (``-r`` or ``BYTEWAX_RECOVERY_DIRECTORY``: the
snapshot age is read from its files, and without one the sink publishes
each record at once, there being no commit to wait for) and the snapshot
interval (``-s`` or ``BYTEWAX_SNAPSHOT_INTERVAL``, a gauge).
:func:`bytewax_run_options` reads them the way ``bytewax.run`` does, from
``sys.argv`` and the environment, and only when the process was started as
``python -m bytewax.run``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from collections import Counter
from typing import Callable, NamedTuple, Optional

from connectors import mqtt
from driver_stats.contract import INPUT_SHARDS
from driver_stats.contract.topics import reasons_prefix
from driver_stats.core import wall_clock
from driver_stats.core.intake import Intake
from driver_stats.core.stream_clock import StreamClock
from driver_stats.settings import Settings

from . import health, logs, metrics


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
    elif event == "connected":
        metrics.RECONNECTS.labels(client_id)  # the series starts at 0, so increase() sees the first one


def _published_counter(stats_topic: str) -> Callable[[list[mqtt.MQTTMessage], float], None]:
    """Count acknowledged messages as ``stats`` (on the stats topic) or ``rejected``."""

    def count_published(messages: list[mqtt.MQTTMessage], seconds: float) -> None:
        metrics.PUBLISH_LATENCY.observe(seconds)
        records = [m.payload for m in messages if m.topic == stats_topic]
        metrics.count_by(metrics.RECORDS_PUBLISHED, Counter(stats=len(records), rejected=len(messages) - len(records)))
        metrics.observe_record_delays(records)

    return count_published


def _mute_native_stderr() -> None:
    """Drop what native code writes to file descriptor 2 from now on; keep Python's stderr and the logs.

    Bytewax's single-worker run loop turns the interrupt into a Rust panic,
    and Rust's panic hook prints ``thread '<unnamed>' panicked at
    src/run.rs:...`` (plus a backtrace under ``RUST_BACKTRACE``) and an empty
    line straight to fd 2; no Python hook can stop it. So on a stop signal
    fd 2 goes to /dev/null, while ``sys.stderr`` and the log handlers move
    to a duplicate of the real stderr.
    """
    if getattr(_mute_native_stderr, "done", False):
        return
    _mute_native_stderr.done = True
    try:
        sys.stderr.flush()
        real = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.__stderr__):
                handler.setStream(real)
        sys.stderr = real
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass  # no fd 2 to begin with: nothing to mute


def _stop_quietly_on_signals() -> None:
    """SIGTERM (how Kubernetes stops pods) and Ctrl-C (SIGINT) stop the flow cleanly.

    Both take Bytewax's interrupt path: workers stop between steps, every
    write already acknowledged by the broker, and input not yet covered by a
    committed snapshot stays unacknowledged, so the broker redelivers it on
    restart. Bytewax reports that path as an error (and a Rust panic
    message); stderr gets exactly two log lines instead, ``stopping on
    SIGTERM`` (or ``SIGINT``) and ``stopped``, and the exit code is 0.
    """
    log = logging.getLogger("driver_stats")

    def on_signal(signum, frame):
        log.info("stopping on %s", signal.Signals(signum).name)
        _mute_native_stderr()
        raise KeyboardInterrupt

    def on_uncaught(kind, error, trace):
        if is_interrupt(error):
            log.info("stopped")
            logging.shutdown()
            os._exit(0)
        default_excepthook(kind, error, trace)

    default_excepthook = sys.excepthook
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.excepthook = on_uncaught


CHILD_DIED_EXIT_CODE = 3
"""Exit code of a flow process one of whose MQTT partitions' child processes died (killed, crashed)."""

_dying = threading.Lock()


def _exit_on_child_death(line: str) -> None:
    """An MQTT partition's child process died: one log line, then exit with :data:`CHILD_DIED_EXIT_CODE`.

    The partition cannot come back in this process, and Bytewax does not
    stop cleanly around a partition that is gone (the worker aborts, or
    exits 1, with a Rust backtrace). So the process ends here, from whichever thread found
    the child gone (the worker's call or the watcher), as a kill would end
    it: with recovery, the restarted flow resumes from the last committed
    epoch and loses nothing (a record can repeat only if an output child
    dies while writing its group: README, Known limitations). As on a stop
    signal, native code's writes to file descriptor 2 are muted first. A
    second child dying meanwhile waits here for the exit.
    """
    _dying.acquire()  # never released: the first death speaks for all
    log = logging.getLogger("driver_stats")
    log.error("%s; exiting with code %d", line, CHILD_DIED_EXIT_CODE)
    _mute_native_stderr()
    logging.shutdown()
    os._exit(CHILD_DIED_EXIT_CODE)


def is_interrupt(error: BaseException) -> bool:
    """Whether ``error`` is our signal's interrupt, however deep Bytewax wrapped it.

    The KeyboardInterrupt raised in whatever Python code the worker was
    running comes back as the cause of one or more ``BytewaxRuntimeError``
    (two, from inside ``flat_map_batch``); a worker interrupted in Rust
    says "signal received".
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt) or "signal received" in str(error):
            return True
        seen.add(id(error))
        error = error.__cause__
    return False


def bytewax_run_options(argv: Optional[list[str]] = None, environ=None) -> tuple[Optional[str], Optional[float]]:
    """(recovery directory, snapshot interval in seconds) of ``python -m bytewax.run``, else (None, None).

    Read as ``bytewax.run`` reads them: ``-r``/``--recovery-directory`` and
    ``-s``/``--snapshot-interval``, defaulting to ``BYTEWAX_RECOVERY_DIRECTORY``
    and ``BYTEWAX_SNAPSHOT_INTERVAL``. ``argv`` (for tests) stands for
    ``sys.argv[1:]`` of a process started as ``python -m bytewax.run``.
    """
    environ = os.environ if environ is None else environ
    if argv is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None or spec.name != "bytewax.run":
            return None, None
        argv = sys.argv[1:]
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-r", "--recovery-directory", default=environ.get("BYTEWAX_RECOVERY_DIRECTORY"))
    parser.add_argument("-s", "--snapshot-interval", default=environ.get("BYTEWAX_SNAPSHOT_INTERVAL"))
    try:
        options, _ = parser.parse_known_args(argv)
    except SystemExit:
        return None, None
    try:
        interval = float(options.snapshot_interval) if options.snapshot_interval is not None else None
    except ValueError:
        interval = None
    return options.recovery_directory or None, interval


def mqtt_source(settings: Settings, *, source_type: Callable[..., mqtt.MQTTSource] = mqtt.MQTTSource,
                **options) -> mqtt.MQTTSource:
    """The live flow's input as the settings configure it (``options``: more MQTTSource arguments).

    ``source_type`` builds it (a subclass, for a benchmark that counts).
    """
    return source_type(
        mqtt_connection(settings),
        settings.input_topics,
        client_id=settings.client_id,
        partitions=settings.partitions_per_topic,
        # Producers may publish a driver's events on <topic>/<its shard>: each
        # partition then reads its shards only (the plain topics: partition 0).
        shards=INPUT_SHARDS,
        max_unacked=settings.max_unacked_messages,
        # The event time: each partition's watermark, which moves the stream clock (with what was processed).
        newest_position=Intake(settings).newest_event_time,
        # newest_event_time ignores events further ahead (they are rejected as future).
        position_max_ahead=settings.max_future_seconds + 60,
        wall_clock=wall_clock.now,  # the calendar: is a watermark ahead of today (forged)
        # Probes prove a partition idle only where the broker keeps a session's order across topics.
        probe_interval=1.0 if settings.broker_order == "session" else None,
        # Reading MQTT (paho's packet decoding, per-message checks, the
        # position) in a process per partition leaves the worker's GIL to the flow.
        own_process=True,
        **options,
    )


def mqtt_sink(settings: Settings, **options) -> mqtt.MQTTSink:
    """The live flow's output as the settings configure it (``options``: more MQTTSink arguments)."""
    return mqtt.MQTTSink(
        mqtt_connection(settings),
        client_id=settings.client_id,
        partitions=settings.partitions_per_topic,
        timeout=settings.publish_timeout_seconds or None,
        # MQTT 3.1.1 has no user properties: a rejection's reason and detail go in an envelope.
        envelopes=(settings.rejected_prefix, reasons_prefix(settings.rejected_prefix)),
        # Publishing (paho's packets, PUBACKs, progress markers) in a
        # process per partition leaves the worker's GIL to the flow.
        own_process=True,
        **options,
    )


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
    wall_clock.shift_by_file(settings.wall_clock_shift_file)  # before the child processes fork
    connection = mqtt_connection(settings)
    try:
        mqtt.check_connection(connection, settings.client_id)
    except mqtt.MQTTConnectError as err:
        raise SystemExit(f"driver-stats: {err} (DRIVER_STATS_MQTT_URL={settings.mqtt_url})") from None
    _check_broker_order(settings, connection)
    _stop_quietly_on_signals()
    # A dead partition process ends this one (see _exit_on_child_death).
    epoch_interval = bytewax_run_options()[1] or 10.0  # bytewax.run's epoch interval: -s, else 10 s
    source = mqtt_source(settings, on_event=_count_reconnects, on_died=_exit_on_child_death,
                         epoch_interval=epoch_interval)
    stream_clock = StreamClock.of_input(source.watermarks)
    sink = mqtt_sink(
        settings,
        on_event=_count_reconnects,
        on_written=_published_counter(settings.topic_driver_stats),
        on_refused=metrics.count_refused,
        on_died=_exit_on_child_death,
        epoch_interval=epoch_interval,
        # Without recovery no commit ever comes to wait for: publish at once.
        commit_gated=bytewax_run_options()[0] is not None,
    )
    _observe(settings, source, sink)
    _collect_garbage_less_often()
    return LiveIO(source, sink, stream_clock)


def _check_broker_order(settings: Settings, connection: mqtt.MQTTConnection) -> None:
    """Stop at start, in one line, where the broker cannot give what DRIVER_STATS_BROKER_ORDER relies on."""
    where = f"MQTT broker {connection.address}"
    if settings.broker_order == "session":
        why = mqtt.check_session_order(connection, settings.client_id)
        if why:
            raise SystemExit(f"driver-stats: {where}: {why}; the idle advance and changes of the partition count "
                             "need a session's order across topics: set DRIVER_STATS_BROKER_ORDER=topic to run "
                             "without them (accepted: session, topic)")
        return
    change = mqtt.count_change(connection, settings.client_id, settings.partitions_per_topic)
    if change:
        raise SystemExit(f"driver-stats: {where}: {change}; with DRIVER_STATS_BROKER_ORDER=topic the count cannot "
                         "change (it needs a session's order across topics): start with the recorded "
                         "DRIVER_STATS_PARTITIONS_PER_TOPIC")


GC_THRESHOLDS = (50_000, 20, 10)
"""Python's cyclic garbage collector runs after this many net new objects (10, 20: its older generations)."""


def _collect_garbage_less_often() -> None:
    """Start the collector's count afresh and run it after :data:`GC_THRESHOLDS` objects, not 700.

    The flow's state is millions of small objects (intervals, dedupe keys)
    that stay, and its items are freed by reference counting, not by the
    collector: at Python's default (a collection every 700 net new objects)
    the worker spends several per cent of its CPU in collections that find
    nothing (docs/performance.md). What is imported and set up by now is
    frozen (``gc.freeze``): never scanned again.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _observe(settings: Settings, source: mqtt.MQTTSource, sink: mqtt.MQTTSink) -> None:
    """Point the gauges and the health checks at the input and output, and serve them."""
    recovery_dir, snapshot_interval = bytewax_run_options()
    checks = health.Health(source.stats, sink.stats, child_silent_after=settings.child_silent_seconds)
    metrics.WINDOW_SECONDS.set(settings.window_seconds)
    metrics.ALLOWED_LATENESS.set(settings.allowed_lateness_seconds)
    metrics.watch(
        source_stats=source.stats,
        sink_stats=sink.stats,
        recovery_dir=recovery_dir,
        snapshot_interval=snapshot_interval if recovery_dir else None,
        readiness=checks.readiness,
    )
    health.serve(settings.metrics_address, settings.metrics_port, checks)
