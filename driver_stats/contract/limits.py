"""The value ranges of the wire types, shared by the protobuf and JSON codecs.

A protobuf ``uint32`` cannot hold a negative number or one of 2^32 or more,
but the proto3 JSON mapping can write one; the contract says such a value is
invalid, "exactly as the same event in protobuf would be". Both codecs check
through this module, so the same logical event gets the same verdict in
either encoding.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .events import FINISH_REASON_BY_NUMBER, FinishReason
from .reasons import Reason

UTC = timezone.utc
UINT32_MAX = 2**32 - 1

# google.protobuf.Timestamp's range in the proto3 JSON mapping:
# 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
NANOS_PER_SECOND = 1_000_000_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DecodeError(ValueError):
    """The bytes are not a valid message of the expected type.

    ``reason`` is the rejection reason (``undecodable``, or ``invalid: <field>``
    for a value the wire format carries but the contract forbids); ``str()``
    says why.
    """

    def __init__(self, detail: str, reason: str = Reason.UNDECODABLE):
        super().__init__(detail)
        self.reason = reason


def invalid(field: str, detail: str) -> DecodeError:
    return DecodeError(detail, Reason.INVALID.of(field))


def check_uint32(value: int, field: str) -> int:
    if not 0 <= value <= UINT32_MAX:
        shown = str(value) if abs(value) < 10**30 else f"{str(value)[:12]}... ({len(str(abs(value)))} digits)"
        raise invalid(field, f"{field} {shown} is not a uint32 (0..{UINT32_MAX})")
    return value


def utc_datetime(seconds: int, nanos: int, field: str) -> datetime:
    """A Timestamp as an aware UTC datetime, or ``invalid: <field>`` if out of range.

    Microseconds are the finest a datetime keeps: nanoseconds are truncated
    (never rounded up, which could carry an event into the next interval).
    """
    if not TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS:
        raise invalid(field, f"{field} {seconds}s is outside years 0001..9999")
    if not 0 <= nanos < NANOS_PER_SECOND:
        raise invalid(field, f"{field} nanos {nanos} is not in 0..999999999")
    return _EPOCH + timedelta(0, seconds, nanos // 1000)  # (days, seconds, microseconds): positional is faster


def timestamp_parts(value: datetime) -> tuple[int, int]:
    """(seconds, nanos) of an aware datetime, as a protobuf Timestamp holds them."""
    delta = value - _EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000


def finish_reason(value: str | int) -> FinishReason:
    """A contract enum value from its number (protobuf, JSON) or name (JSON)."""
    if isinstance(value, int):
        if 0 <= value < len(FINISH_REASON_BY_NUMBER):
            return FINISH_REASON_BY_NUMBER[value]
    elif value in FinishReason.__members__:
        return FinishReason[value]
    raise invalid("finish_reason", f"finish_reason {str(value)[:40]!r} is not a known value")
