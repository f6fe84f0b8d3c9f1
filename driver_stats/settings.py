"""Settings: the ``DRIVER_STATS_*`` environment variables, validated once at start.

Every setting is one field of :class:`Settings`; its environment variable is
``DRIVER_STATS_`` + the field name in upper case. A wrong value stops the
program before it connects to anything, with one line that names the
variable and what it accepts (:class:`SettingsError`).

>>> s = Settings.from_env({"DRIVER_STATS_WINDOW_SECONDS": "10"})
>>> s.window_seconds, s.allowed_lateness_seconds
(10, 30)
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Literal, Mapping
from urllib.parse import urlsplit

import msgspec

from .contract.events import DriverRated, DriverTipped, JourneyFinished
from .contract.topics import INPUT_OF, INPUT_SHARDS, INPUTS, REJECTED_PREFIX, STATS_TOPIC

PREFIX = "DRIVER_STATS_"

Seconds = Annotated[int, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[int, msgspec.Meta(gt=0)]
Topic = Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[^#+\x00]+$")]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
WireFormat = Literal["protobuf", "json"]
BrokerOrder = Literal["session", "topic"]

# What each setting accepts, said in the error line when a value is wrong.
ACCEPTS: dict[str, str] = {
    "mqtt_url": "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
    "mqtt_ca_file": "a readable PEM file of CA certificates",
    "mqtt_cert_file": "a readable PEM client certificate (with DRIVER_STATS_MQTT_KEY_FILE)",
    "mqtt_key_file": "a readable PEM private key (with DRIVER_STATS_MQTT_CERT_FILE)",
    "window_seconds": "a whole number of seconds > 0",
    "allowed_lateness_seconds": "a whole number of seconds >= 0",
    "max_future_seconds": "a whole number of seconds >= 0",
    "state_retention_seconds": "a whole number of seconds >= DRIVER_STATS_ALLOWED_LATENESS_SECONDS",
    "client_id": "1 to 40 characters from A-Z a-z 0-9 _ -",
    "partitions_per_topic": "a whole number from 1 to 64",
    "max_message_bytes": "a whole number of bytes from 64 to 268435455",
    "max_unacked_messages": "a whole number from 100 to 65000",
    "output_format": "protobuf or json",
    "broker_order": "session (the broker keeps a session's order across topics; checked at start) or topic "
                    "(per topic only: no idle advance, no change of the partition count)",
    "publish_timeout_seconds": "a whole number of seconds >= 0 (0: wait as long as the broker is away)",
    "child_silent_seconds": "a whole number of seconds > 0",
    "metrics_port": "a TCP port 1-65535, or 0 to turn metrics off",
    "metrics_address": "an IP address to listen on: 0.0.0.0 (all IPv4), :: (all), 127.0.0.1 (this host only)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "wall_clock_shift_file": "a file path (tests only: seconds added to the wall clock)",
}


class SettingsError(ValueError):
    """A setting has a value the program cannot run with.

    ``str(err)`` is the one line to show the operator.
    """


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """All settings of the flow and its tools, with the contract's defaults."""

    # Broker connection.
    mqtt_url: str = "mqtt://localhost:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = msgspec.field(default=None)
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    # Intervals and lateness.
    window_seconds: PositiveSeconds = 600
    allowed_lateness_seconds: Seconds = 30
    # An event this far ahead of wall-clock time is rejected as "future",
    # so a phone with a wrong clock cannot close a driver's intervals early.
    max_future_seconds: Seconds = 300
    # A driver's state is forgotten once nothing is open and its last record
    # is this far behind the stream clock; events that old are late for
    # every driver (see driver_stats/core/windows.py).
    state_retention_seconds: Seconds = 3600
    # Identity: MQTT client ids and the partition marker topics derive from it.
    client_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,40}$")] = "driver-stats"
    # Topics (the inputs' rows of driver_stats.contract.topics.INPUTS).
    topic_driver_rated: Topic = INPUT_OF[DriverRated].default_topic
    topic_driver_tipped: Topic = INPUT_OF[DriverTipped].default_topic
    topic_journey_finished: Topic = INPUT_OF[JourneyFinished].default_topic
    topic_driver_stats: Topic = STATS_TOPIC
    rejected_prefix: Topic = REJECTED_PREFIX
    # Scaling and limits.
    partitions_per_topic: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    max_message_bytes: Annotated[int, msgspec.Meta(ge=64, le=268435455)] = 65536
    # Per input partition: held unacknowledged until the epoch commits, so
    # also the most messages a partition reads per epoch (MQTT 5 Receive
    # Maximum, below the 16-bit packet-id space).
    max_unacked_messages: Annotated[int, msgspec.Meta(ge=100, le=65_000)] = 50_000
    output_format: WireFormat = "protobuf"
    # The idle advance and a change of the partition count need a broker that
    # delivers a session's messages in publish order across topics (mosquitto,
    # RabbitMQ, ejabberd); NATS keeps it per topic only.
    broker_order: BrokerOrder = "session"
    # How long a batch of output may wait for the broker's acknowledgements
    # before the process exits; 0: as long as the broker is away (nothing is
    # lost either way, but an exit needs something to restart the process).
    publish_timeout_seconds: Seconds = 0
    # /readyz says not ready once an MQTT partition's child process has sent
    # no heartbeat for this long (stopped, frozen): the flow stands still.
    child_silent_seconds: PositiveSeconds = 10
    # Operability: /metrics, /livez and /readyz on this address and port.
    metrics_port: Port = 0
    metrics_address: str = "0.0.0.0"
    log_level: LogLevel = "INFO"
    # Tests only: a file whose number of seconds is added to the wall clock
    # while the flow runs (driver_stats/core/wall_clock.py), to step it.
    wall_clock_shift_file: str | None = None

    def __repr__(self) -> str:
        # The password must never reach logs or tracebacks.
        fields = ", ".join(
            f"{name}={'***' if name == 'mqtt_password' and value else value!r}"
            for name, value in ((n, getattr(self, n)) for n in self.__struct_fields__)
        )
        return f"Settings({fields})"

    __str__ = __repr__

    @property
    def input_topics(self) -> tuple[str, ...]:
        """The input topics, in the order of :data:`~driver_stats.contract.topics.INPUTS`."""
        return tuple(getattr(self, row.setting) for row in INPUTS)

    def input_topic_types(self) -> dict[str, type]:
        """Input topic, plain or shard (``<topic>/<s>``) -> the event type it carries."""
        types = {}
        for row in INPUTS:
            topic = getattr(self, row.setting)
            types[topic] = row.event_type
            types.update({f"{topic}/{shard}": row.event_type for shard in range(INPUT_SHARDS)})
        return types

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raise :class:`SettingsError` on a bad value."""
        environ = os.environ if environ is None else environ
        known = {PREFIX + name.upper() for name in cls.__struct_fields__}
        for variable in sorted(environ):
            if variable.startswith(PREFIX) and variable not in known:
                raise SettingsError(
                    f"{variable} is not a setting: the DRIVER_STATS_ variables are "
                    + ", ".join(sorted(known))
                )
        raw = {
            name: environ[PREFIX + name.upper()]
            for name in cls.__struct_fields__
            if environ.get(PREFIX + name.upper(), "") != ""
        }
        for name, value in raw.items():
            try:
                msgspec.convert({name: value}, cls, strict=False)
            except msgspec.ValidationError:
                raise SettingsError(_bad_value(name, value)) from None
        settings = msgspec.convert(raw, cls, strict=False)
        settings._check_files_and_url()
        return settings

    def _check_files_and_url(self) -> None:
        url = urlsplit(self.mqtt_url)
        try:
            url.port  # noqa: B018 - raises on a bad port
            ok = url.scheme in ("mqtt", "mqtts") and bool(url.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise SettingsError(_bad_value("mqtt_url", self.mqtt_url))
        for name in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file"):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise SettingsError(_bad_value(name, path))
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            missing = "mqtt_key_file" if self.mqtt_key_file is None else "mqtt_cert_file"
            raise SettingsError(_bad_value(missing, "(unset)"))
        try:
            ipaddress.ip_address(self.metrics_address)
        except ValueError:
            raise SettingsError(_bad_value("metrics_address", self.metrics_address)) from None
        if self.state_retention_seconds < self.allowed_lateness_seconds:
            # The floor would then reject events still within the allowed lateness.
            raise SettingsError(_bad_value("state_retention_seconds", str(self.state_retention_seconds)))

    @property
    def mqtt_host(self) -> str:
        return urlsplit(self.mqtt_url).hostname or "localhost"

    @property
    def mqtt_port(self) -> int:
        url = urlsplit(self.mqtt_url)
        return url.port or (8883 if url.scheme == "mqtts" else 1883)

    @property
    def mqtt_tls(self) -> bool:
        return urlsplit(self.mqtt_url).scheme == "mqtts"


def _bad_value(name: str, value: str) -> str:
    shown = "***" if name == "mqtt_password" else repr(value)
    return f"{PREFIX}{name.upper()}={shown} is invalid: expected {ACCEPTS.get(name, 'a valid value')}"


def load_or_exit(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for a program's start: a bad value exits with its one-line message."""
    try:
        return Settings.from_env(environ)
    except SettingsError as err:
        raise SystemExit(f"driver-stats: {err}") from None
