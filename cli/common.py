"""Helpers shared by the subcommands: settings, one-line errors, MQTT clients, files, JSON lines."""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import Mapping, Optional

import paho.mqtt.client as paho

from connectors.mqtt.connection import Protocol, connect
from driver_stats.settings import PREFIX, Settings, SettingsError
from flows.live import mqtt_connection

STATS_FILE = "driver_stats.jsonl"
REJECTED_FILE = "rejected.jsonl"
LATE_FILE = "late.jsonl"
INVALID_FILE = "invalid.jsonl"


class CLIError(Exception):
    """An error shown to the operator as one line; the command exits with 2."""


def interrupt(signum, frame) -> None:
    """A signal handler that stops like Ctrl-C: cleanup code runs, no traceback."""
    raise KeyboardInterrupt


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


def mqtt_client(settings: Settings, client_id: str, *, protocol: Protocol = "3.1.1") -> paho.Client:
    """A paho client configured with the settings' TLS and credentials (not connected)."""
    return mqtt_connection(settings).client(client_id, protocol=protocol)


def connect_client(client: paho.Client, settings: Settings) -> None:
    """Connect and start the network thread; :class:`MQTTConnectError` unless the CONNACK is a success."""
    connect(client, mqtt_connection(settings))


def say(message: str) -> None:
    """One status line on stderr."""
    print(f"driver-stats: {message}", file=sys.stderr, flush=True)


def rejected_record(topic: str, reason: str, detail: str, payload: bytes, *, text: bool = False) -> dict:
    """A rejected message as one JSON object: topic, reason, detail and the payload.

    The payload is base64 (``payload``), or with ``text=True`` the UTF-8
    text of a history line (``line``; ``line_base64`` when it is not UTF-8).
    """
    record = {"topic": topic, "reason": reason, "detail": detail}
    if text:
        try:
            record["line"] = payload.decode("utf-8")
            return record
        except UnicodeDecodeError:
            record["line_base64"] = base64.b64encode(payload).decode()
            return record
    record["payload"] = base64.b64encode(payload).decode()
    return record


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
