"""Codecs between wire bytes and the contract structs.

Two wire formats carry the same messages: protobuf (the contract's format)
and the proto3 JSON mapping (history files, and optionally the wire). A JSON
payload always starts with ``{``, a byte no valid protobuf message of ours can
start with (it would be field 15, wire type 3), so decoding picks the format
from the first byte and producers may use either.

Decoding raises :class:`DecodeError` with a one-line reason; it never returns
a half-read message. Encoding is deterministic: the same struct always gives
the same bytes, so a record republished after a recovery is byte-identical.
"""

from __future__ import annotations

import struct
from datetime import datetime
from typing import Callable

import msgspec
from google.protobuf.message import DecodeError as _ProtobufDecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from . import events_pb2, stats_pb2
from .events import (
    NUMBER_BY_FINISH_REASON,
    DriverRated,
    DriverStats,
    DriverTipped,
    Event,
    JourneyFinished,
)
from .json_mapping import JsonEventDecoder
from .limits import DecodeError, finish_reason, timestamp_parts, utc_datetime


def _timestamp_to_datetime(ts: Timestamp, field: str = "timestamp") -> datetime:
    return utc_datetime(ts.seconds, ts.nanos, field)


def _datetime_to_timestamp(value: datetime) -> Timestamp:
    seconds, nanos = timestamp_parts(value)
    return Timestamp(seconds=seconds, nanos=nanos)


def _optional_time(message, field: str) -> datetime | None:
    return _timestamp_to_datetime(getattr(message, field), field) if message.HasField(field) else None


def _rated_from_pb(m: events_pb2.DriverRated) -> DriverRated:
    return DriverRated(
        driver_id=m.driver_id,
        rider_id=m.rider_id,
        journey_id=m.journey_id,
        rated_at=_optional_time(m, "rated_at"),
        rating=m.rating,
    )


def _tipped_from_pb(m: events_pb2.DriverTipped) -> DriverTipped:
    return DriverTipped(
        driver_id=m.driver_id,
        rider_id=m.rider_id,
        journey_id=m.journey_id,
        tipped_at=_optional_time(m, "tipped_at"),
        amount=m.amount,
    )


def _finished_from_pb(m: events_pb2.JourneyFinished) -> JourneyFinished:
    # proto3 enums are open: an unknown number parses; the contract forbids it.
    reason = finish_reason(m.finish_reason)
    return JourneyFinished(
        journey_id=m.journey_id,
        driver_id=m.driver_id,
        rider_id=m.rider_id,
        finish_reason=reason,
        started_at=_optional_time(m, "started_at"),
        ended_at=_optional_time(m, "ended_at"),
        distance=m.distance,
        price=m.price,
    )


_EVENT_TIME_FIELD = {DriverRated: "rated_at", DriverTipped: "tipped_at", JourneyFinished: "ended_at"}
_FROM_PB: dict[type, tuple[type, Callable]] = {
    DriverRated: (events_pb2.DriverRated, _rated_from_pb),
    DriverTipped: (events_pb2.DriverTipped, _tipped_from_pb),
    JourneyFinished: (events_pb2.JourneyFinished, _finished_from_pb),
}


class EventDecoder:
    """Decodes one event type from protobuf or proto3 JSON bytes.

    >>> from datetime import datetime, timezone
    >>> event = DriverRated(driver_id="d1", journey_id="j1", rating=5,
    ...                     rated_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
    >>> EventDecoder(DriverRated).decode(encode_event(event)) == event
    True
    """

    __slots__ = ("event_type", "_pb_type", "_from_pb", "_json", "_time_field")

    def __init__(self, event_type: type):
        self.event_type = event_type
        self._pb_type, self._from_pb = _FROM_PB[event_type]
        self._json = JsonEventDecoder(event_type)
        self._time_field = _EVENT_TIME_FIELD[event_type]

    def event_seconds(self, payload: bytes) -> int | None:
        """The event time's whole seconds, without building the event; None where there is none to read.

        Cheaper than :meth:`decode` (no struct, no validation), for the
        input's watermark. Never raises.

        >>> from datetime import datetime, timezone
        >>> tip = DriverTipped(driver_id="d", journey_id="j", amount=1,
        ...                    tipped_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
        >>> EventDecoder(DriverTipped).event_seconds(encode_event(tip)), EventDecoder(DriverTipped).event_seconds(b"x")
        (1704067200, None)
        """
        try:
            if payload[:1] == b"{":
                event_time = self._json.decode(payload).event_time
                return None if event_time is None else timestamp_parts(event_time)[0]
            message = self._pb_type.FromString(payload)
            return getattr(message, self._time_field).seconds if message.HasField(self._time_field) else None
        except Exception:  # noqa: BLE001 - unreadable: the flow's decode step rejects it
            return None

    def decode(self, payload: bytes) -> Event:
        """The event in ``payload``, or :class:`DecodeError`; nothing else escapes."""
        if payload[:1] == b"{":
            return self._json.decode(payload)
        message = self._pb_type()
        try:
            message.ParseFromString(payload)
        except (_ProtobufDecodeError, RecursionError) as err:
            raise DecodeError(f"bad protobuf: {err}") from None
        return self._from_pb(message)


def encode_event(event: Event) -> bytes:
    """Protobuf bytes of an input event (what producers publish)."""
    fields = {
        name: _datetime_to_timestamp(value) if isinstance(value, datetime) else value
        for name, value in msgspec.structs.asdict(event).items()
        if value is not None
    }
    if isinstance(event, JourneyFinished):
        fields["finish_reason"] = NUMBER_BY_FINISH_REASON[event.finish_reason]
    pb_type, _ = _FROM_PB[type(event)]
    return pb_type(**fields).SerializeToString(deterministic=True)


def encode_stats(stats: DriverStats) -> bytes:
    """Protobuf bytes of a stats record, deterministic."""
    return stats_pb2.DriverStats(
        driver_id=stats.driver_id,
        interval_start=_datetime_to_timestamp(stats.interval_start),
        interval_end=_datetime_to_timestamp(stats.interval_end),
        total_drop_offs=stats.total_drop_offs,
        total_driver_cancels=stats.total_driver_cancels,
        total_distance=stats.total_distance,
        total_price=stats.total_price,
        total_tips=stats.total_tips,
        avg_rating=stats.avg_rating,
    ).SerializeToString(deterministic=True)


def decode_stats(payload: bytes) -> DriverStats:
    """A stats record from protobuf or JSON bytes (for tools and tests)."""
    if payload[:1] == b"{":
        try:
            return _STATS_JSON.decode(payload)
        except msgspec.DecodeError as err:
            raise DecodeError(f"bad JSON: {err}") from None
    message = stats_pb2.DriverStats()
    try:
        message.ParseFromString(payload)
    except _ProtobufDecodeError as err:
        raise DecodeError(f"bad protobuf: {err}") from None
    return DriverStats(
        driver_id=message.driver_id,
        interval_start=_timestamp_to_datetime(message.interval_start, "interval_start"),
        interval_end=_timestamp_to_datetime(message.interval_end, "interval_end"),
        total_drop_offs=message.total_drop_offs,
        total_driver_cancels=message.total_driver_cancels,
        total_distance=message.total_distance,
        total_price=message.total_price,
        total_tips=message.total_tips,
        avg_rating=float32(message.avg_rating),
    )


def stats_interval_end(payload: bytes) -> float:
    """The interval end of a stats record in Unix seconds, without building the record (for metrics).

    Raises :class:`DecodeError` (or a protobuf error) where :func:`decode_stats` would not give one.

    >>> from datetime import datetime, timezone
    >>> start, end = datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 1, 0, 10, tzinfo=timezone.utc)
    >>> record = DriverStats(driver_id="d1", interval_start=start, interval_end=end)
    >>> stats_interval_end(encode_stats(record)) == stats_interval_end(to_json(record)) == end.timestamp()
    True
    """
    if payload[:1] == b"{":
        return decode_stats(payload).interval_end.timestamp()
    end = stats_pb2.DriverStats.FromString(payload).interval_end
    return end.seconds + end.nanos / 1e9


_STATS_JSON = msgspec.json.Decoder(DriverStats)
_JSON_ENCODER = msgspec.json.Encoder()


def to_json(message: msgspec.Struct) -> bytes:
    """Proto3 JSON mapping of any contract struct (one line, no newline)."""
    return _JSON_ENCODER.encode(message)


def float32(value: float) -> float:
    """``value`` rounded to a protobuf ``float``, as its shortest decimal.

    JSON and protobuf output then agree: 7/3 becomes 2.3333333 in both.
    """
    packed = struct.pack("<f", value)
    rounded = struct.unpack("<f", packed)[0]
    for digits in range(6, 10):
        candidate = float(f"{rounded:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return rounded
