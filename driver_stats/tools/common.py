"""Helpers shared by the subcommands: settings, one-line errors, MQTT clients, history files."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import threading
from pathlib import Path
from typing import Mapping, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from driver_stats.contract import DriverRated, DriverTipped, JourneyFinished
from driver_stats.settings import PREFIX, Settings, SettingsError

#: History file of each event type, in the order of ``Settings.input_topics``.
HISTORY_FILES: tuple[tuple[str, type], ...] = (
    ("driver_rated.jsonl", DriverRated),
    ("driver_tipped.jsonl", DriverTipped),
    ("journey_finished.jsonl", JourneyFinished),
)
STATS_FILE = "driver_stats.jsonl"
REJECTED_FILE = "rejected.jsonl"
LATE_FILE = "late.jsonl"
INVALID_FILE = "invalid.jsonl"


class CLIError(Exception):
    """An error shown to the operator as one line; the command exits with 2."""


def add_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        metavar="URL",
        help="broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
        "(default: $DRIVER_STATS_MQTT_URL, else mqtt://localhost:1883); "
        "credentials and TLS files come from the DRIVER_STATS_MQTT_* variables",
    )


def load_settings(
    overrides: Optional[Mapping[str, object]] = None, environ: Optional[Mapping[str, str]] = None
) -> Settings:
    """Settings from ``DRIVER_STATS_*`` with ``overrides`` (field name -> value, None = keep)."""
    env = dict(os.environ if environ is None else environ)
    for name, value in (overrides or {}).items():
        if value is not None:
            env[PREFIX + name.upper()] = str(value)
    try:
        return Settings.from_env(env)
    except SettingsError as err:
        raise CLIError(str(err)) from None


def topic_types(settings: Settings) -> dict[str, type]:
    """Input topic -> event type."""
    return {topic: event_type for topic, (_, event_type) in zip(settings.input_topics, HISTORY_FILES)}


def mqtt_client(settings: Settings, client_id: str, *, v5: bool = False) -> paho.Client:
    """A paho client configured with the settings' TLS and credentials (not connected)."""
    if v5:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=paho.MQTTv311
        )
    from flows.live import mqtt_connection

    mqtt_connection(settings).apply(client)
    return client


def connect(client: paho.Client, settings: Settings, timeout: float = 10.0) -> None:
    """Connect and start the network thread; raise CLIError unless the CONNACK is a success."""
    done = threading.Event()
    outcome: list[str] = []
    previous = client.on_connect

    def on_connect(c, userdata, flags, reason, properties):
        if reason.is_failure:
            outcome.append(str(reason))
        done.set()
        if previous is not None and not reason.is_failure:
            previous(c, userdata, flags, reason, properties)

    client.on_connect = on_connect
    where = f"{settings.mqtt_host}:{settings.mqtt_port}"
    try:
        client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
    except ssl.SSLError as err:
        raise CLIError(f"cannot connect to MQTT broker {where}: TLS failure: {err.reason or err}") from None
    except OSError as err:
        raise CLIError(f"cannot connect to MQTT broker {where}: {err.strerror or err}") from None
    client.loop_start()
    if not done.wait(timeout):
        client.loop_stop()
        raise CLIError(f"cannot connect to MQTT broker {where}: no CONNACK within {timeout:g}s")
    if outcome:
        client.loop_stop()
        raise CLIError(f"MQTT broker {where} refused the connection: {outcome[0]}")


def say(message: str) -> None:
    """One status line on stderr."""
    print(f"driver-stats: {message}", file=sys.stderr, flush=True)


def write_atomically(path: Path, lines: list[bytes]) -> None:
    """Write ``lines`` (each without newline) to ``path`` via a temp file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        for line in lines:
            f.write(line)
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
