"""Decoding the proto3 JSON mapping of the input events, with protobuf's ranges.

msgspec reads the JSON into a *wire* struct derived from each event struct,
whose timestamps are strings, enum a name or number and integers unbounded.
:func:`decode_json_event` then applies the rules protobuf would:

* ``uint32`` fields in 0..2^32-1, else ``invalid: <field>``;
* timestamps are RFC 3339, within years 0001..9999 (after applying the UTC
  offset), else ``invalid: <field>``; nanoseconds are truncated to
  microseconds exactly as for a protobuf Timestamp, so both encodings put an
  event in the same interval;
* ``finishReason`` is a contract name or number (0..3), else
  ``invalid: finish_reason``;
* JSON nested deeper than :data:`MAX_JSON_DEPTH` (our messages are flat;
  deeper values can only be unknown fields) is ``undecodable`` before msgspec
  reads it, so a crafted payload cannot exhaust the stack.

Malformed JSON, a wrong JSON type, or a timestamp string that is not RFC 3339
at all is ``undecodable``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from .events import FinishReason
from .limits import UINT32_MAX, DecodeError, check_uint32, finish_reason, invalid, utc_datetime

MAX_JSON_DEPTH = 32

# The bytes that matter for nesting: quotes and backslashes (strings) and brackets.
_STRUCTURE = re.compile(rb'[\\"\[\]{}]')
_RFC3339 = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d\d):(\d\d))\Z"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def nesting_exceeds(payload: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``payload`` nests arrays/objects deeper than ``limit``.

    One pass over the structural bytes, so a crafted payload costs linear time.
    """
    if payload.count(b"{") + payload.count(b"[") <= limit:
        return False  # the common case, at C speed
    depth, in_string, escaped_at = 0, False, -1
    for match in _STRUCTURE.finditer(payload):
        at = match.start()
        if at == escaped_at:
            continue  # the character after a backslash inside a string
        byte = payload[at]
        if in_string:
            if byte == 0x5C:  # backslash
                escaped_at = at + 1
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x7D, 0x5D):  # } ]
            depth -= 1
    return False


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, no datetime limits)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def parse_timestamp(text: str, field: str) -> datetime:
    """An RFC 3339 string as a UTC datetime, with protobuf Timestamp's range."""
    match = _RFC3339.match(text)
    if match is None:
        raise DecodeError(f"{field} {text[:40]!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, sign, offset_hours, offset_minutes = match.groups()[6:]
    days_in_month = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[(month - 1) % 12]
    if not (1 <= month <= 12 and 1 <= day <= days_in_month and hour < 24 and minute < 60 and second < 60):
        raise DecodeError(f"{field} {text[:40]!r} is not a calendar date and time")
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    if sign:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise DecodeError(f"{field} {text[:40]!r} has an impossible UTC offset")
        offset = int(offset_hours) * 3600 + int(offset_minutes) * 60
        seconds -= offset if sign == "+" else -offset
    nanos = int((fraction or "0").ljust(9, "0"))
    return utc_datetime(seconds, nanos, field)


def _wire_type(field_type: Any) -> Any:
    if field_type == (datetime | None):
        return str | None
    if field_type is FinishReason:
        return str | int
    return field_type


_OUT_OF_RANGE = re.compile(r"Integer value out of range - at `\$\.(\w+)`")


class JsonEventDecoder:
    """Reads one event type's JSON through its wire struct and applies the ranges."""

    __slots__ = ("_event_type", "_decoder", "_fields", "_name_of_key")

    def __init__(self, event_type: type):
        fields = msgspec.structs.fields(event_type)
        wire = msgspec.defstruct(
            f"{event_type.__name__}Json",
            [
                (f.name, _wire_type(f.type), f.default.name if isinstance(f.default, FinishReason) else f.default)
                for f in fields
            ],
            kw_only=True,
            rename="camel",
        )
        self._event_type = event_type
        self._decoder = msgspec.json.Decoder(wire)
        self._fields = [(f.name, f.type) for f in fields]
        self._name_of_key = {f.encode_name: f.name for f in fields}  # "tippedAt" -> "tipped_at"

    def decode(self, payload: bytes):
        if nesting_exceeds(payload):
            raise DecodeError(f"bad JSON: nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            payload.decode("utf-8")  # JSON is UTF-8 (RFC 8259), unknown fields included
        except UnicodeDecodeError as err:
            raise DecodeError(f"bad JSON: not UTF-8 at byte {err.start}") from None
        try:
            wire = self._decoder.decode(payload)
        except msgspec.ValidationError as err:
            match = _OUT_OF_RANGE.match(str(err))
            field = self._name_of_key.get(match.group(1)) if match else None
            if field:  # an integer too long even to parse: out of uint32 range all the same
                raise invalid(field, f"{field} is not a uint32 (0..{UINT32_MAX})") from None
            raise DecodeError(f"bad JSON: {str(err)[:200]}") from None
        except (msgspec.DecodeError, RecursionError) as err:
            raise DecodeError(f"bad JSON: {str(err)[:200]}") from None
        values = {}
        for name, field_type in self._fields:
            value = getattr(wire, name)
            if field_type is int:
                value = check_uint32(value, name)
            elif field_type is FinishReason:
                value = finish_reason(value)
            elif value is not None and field_type == (datetime | None):
                value = parse_timestamp(value, name)
            values[name] = value
        return self._event_type(**values)
