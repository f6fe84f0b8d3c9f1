#!/usr/bin/env python3
"""Fuzzer for "no message can stop the flow": every payload is accounted for.

    python bench/fuzz.py [N] [--seed S] [--flow-cases F] [--profiles default,...]

Hypothesis generates N input messages (default 100000) in sessions of a few
dozen, on the three input topics, as protobuf or proto3 JSON: valid events of
the three types, repeats (same bytes, the other encoding, other content),
truncated / bit-flipped / spliced payloads, random bytes, JSON nested
thousands of levels deep, payloads over ``max_message_bytes``, JSON numbers
that are negative, >= 2^32, floats or strings, timestamps outside years
0001..9999 (and protobuf nanos/seconds out of range), unknown enum names and
numbers, enum numbers in JSON, empty ids, values whose sums overflow uint32.
Sessions rotate over a few legal settings profiles (the contract's defaults;
10 s windows without lateness and JSON output; weekly windows; a very large
``max_future_seconds``; the last two keep driver state for ever).

Each message goes the real way: ``Intake`` (bytes -> event or rejection) ->
one ``DriverWindows`` per driver (dedupe, lateness, totals) -> every closed
record through ``encode_stats`` and ``to_json``. Three counts:

* escaped: an exception left a step (intake, windows, closing, encoding), or
  the Bytewax run of a session stopped;
* unaccounted: a message with no outcome (counted, duplicate, or rejected
  with a known reason and its original bytes), a duplicate verdict with no
  counted original, an event counted into an interval that never came out,
  or a record for an interval that got no accepted event;
* wrong: an outcome the contract contradicts: an accepted event that is not
  valid or decodes to other values than were sent, a known-invalid value
  (uint32 or timestamp out of range, unknown enum) rejected for another
  reason, protobuf and JSON of one event getting different verdicts, record
  totals that differ from the sum of the counted events, a record that does
  not survive its own encodings;
* slow: one message took the intake more than a second (the worker holds the
  GIL meanwhile, so every driver waits): crafted JSON up to the size limit.

A subset of sessions (``--flow-cases``, default 400 messages) also runs
through the real dataflow, ``flows.driver_stats.build_flow`` over Bytewax's
``TestingSource``/``TestingSink``, and must publish exactly the rejections
and records the step-by-step run predicts.

The last line is exactly ``N cases, E escaped, U unaccounted``; the exit
code is non-zero when E, U, the wrong or the slow count is; the first failures are
printed (payload repr, truncated) before the last line. Same N and seed,
same cases.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import math
import os
import re
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from driver_stats.contract import (  # noqa: E402
    DriverRated,
    DriverStats,
    DriverTipped,
    FinishReason,
    JourneyFinished,
    Rejection,
    decode_stats,
    encode_stats,
    to_json,
)
from driver_stats.core.intake import Accepted, Intake  # noqa: E402
from driver_stats.settings import Settings, SettingsError  # noqa: E402
from driver_stats.core.windows import COUNTED, DUPLICATE, DriverWindows, Refused  # noqa: E402

# ---------------------------------------------------------------------------
# The contract, written down here independently of the code under test.

UINT32_MAX = 2**32 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MASK64 = 2**64 - 1
NS = 1_000_000_000
# google.protobuf.Timestamp: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

RATED, TIPPED, FINISHED = 0, 1, 2
TYPE_NAMES = ("rated", "tipped", "finished")
EVENT_CLASS = (DriverRated, DriverTipped, JourneyFinished)
# (proto field name, field number, kind): s string, u uint32, t Timestamp, e enum
FIELDS = {
    RATED: (("driver_id", 1, "s"), ("rider_id", 2, "s"), ("journey_id", 3, "s"),
            ("rated_at", 4, "t"), ("rating", 5, "u")),
    TIPPED: (("driver_id", 1, "s"), ("rider_id", 2, "s"), ("journey_id", 3, "s"),
             ("tipped_at", 4, "t"), ("amount", 5, "u")),
    FINISHED: (("journey_id", 1, "s"), ("driver_id", 2, "s"), ("rider_id", 3, "s"),
               ("finish_reason", 4, "e"), ("started_at", 5, "t"), ("ended_at", 6, "t"),
               ("distance", 7, "u"), ("price", 8, "u")),
}
FIELD_KIND = {t: {name: kind for name, _, kind in fields} for t, fields in FIELDS.items()}
TIME_FIELD = {RATED: "rated_at", TIPPED: "tipped_at", FINISHED: "ended_at"}
REASON_NAMES = ("DROP_OFF", "RIDER_CANCEL", "DRIVER_CANCEL", "ADMIN_CANCEL")
KNOWN_FIELDS = {name for fields in FIELDS.values() for name, _, _ in fields}
TOTALS = ("total_drop_offs", "total_driver_cancels", "total_distance", "total_price", "total_tips")
PLAIN_REASONS = {"undecodable", "late", "future", "too large", "unknown topic"}

ACCEPT = "accept"  # an expectation: the intake must accept the message
SLOW_SECONDS = 1.0  # one message deciding slower than this is a failure (they take microseconds)

# Settings profiles the sessions rotate over; all legal values of the settings.
PROFILES = (
    ("default", {}),
    ("small-windows", {"WINDOW_SECONDS": "10", "ALLOWED_LATENESS_SECONDS": "0",
                       "MAX_MESSAGE_BYTES": "4096", "OUTPUT_FORMAT": "json"}),
    ("weekly", {"WINDOW_SECONDS": "604800", "ALLOWED_LATENESS_SECONDS": "3600",
                "STATE_RETENTION_SECONDS": "1000000000000"}),
    ("far-future", {"MAX_FUTURE_SECONDS": "1000000000000", "STATE_RETENTION_SECONDS": "1000000000000"}),
)
# Reasons of the dataflow's last-resort guards: an exception of ours was caught there.
GUARD_REASONS = {"internal error", "unencodable"}
PROFILE_WEIGHTS = (0, 0, 0, 1, 2, 3)  # index into PROFILES: default 3 of 6
WALL_BASE = 1_704_110_400  # 2024-01-01T12:00:00Z

DRIVERS = ("d1", "d2", "d3", "driver-\u00e9\u4e2d", "d" * 300)
JOURNEYS = ("j1", "j2", "j3", "j4", "j5", "j6", "journey-\U0001f695")
RIDERS = ("", "r1", "rider-\u03b2")
SESSION_CASES = 40


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def field_default(event_type: int, name: str) -> Any:
    kind = FIELD_KIND[event_type][name]
    return "" if kind == "s" else None if kind == "t" else 0


# ---------------------------------------------------------------------------
# Wire encoders of our own (no project code): protobuf and proto3 JSON.


def varint(value: int) -> bytes:
    value &= MASK64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def pb_field(number: int, kind: str, value: Any, explicit: bool) -> bytes:
    if kind == "s":
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        return tag(number, 2) + varint(len(data)) + data if data or explicit else b""
    if kind in ("u", "e"):
        return tag(number, 0) + varint(value) if value or explicit else b""
    if value is None:
        return b""
    seconds, nanos = value
    body = (tag(1, 0) + varint(seconds) if seconds or explicit else b"") + (
        tag(2, 0) + varint(nanos) if nanos or explicit else b""
    )
    return tag(number, 2) + varint(len(body)) + body


def pb_bytes(spec: dict, explicit: bool = False, order: list[int] | None = None) -> bytes:
    fields = FIELDS[spec["_type"]]
    parts = [
        pb_field(number, kind, spec.get(name, field_default(spec["_type"], name)), explicit)
        for name, number, kind in fields
    ]
    if order is not None:
        parts = [parts[i] for i in order]
    return b"".join(parts)


def pb_effective(spec: dict) -> dict:
    """What a protobuf decoder reads back: uint32 and int32 values truncated."""
    out = dict(spec)
    for name, kind in FIELD_KIND[spec["_type"]].items():
        value = spec.get(name)
        if kind == "u" and value is not None:
            out[name] = value & UINT32_MAX
        elif kind == "e" and value is not None:
            number = value & 0xFFFFFFFF
            out[name] = number - 2**32 if number > INT32_MAX else number
    return out


def civil_from_days(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count since 1970-01-01."""
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def rfc3339(seconds: int, nanos: int, offset_minutes: int = 0, digits: int | None = None) -> str:
    """The instant as RFC 3339 text, written in the given UTC offset."""
    local = seconds + offset_minutes * 60
    days, rest = divmod(local, 86_400)
    year, month, day = civil_from_days(days)
    text = f"{year:04d}-{month:02d}-{day:02d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    if digits is None:
        digits = 0 if nanos == 0 else 3 if nanos % 1_000_000 == 0 else 6 if nanos % 1000 == 0 else 9
    if digits:
        text += "." + f"{nanos:09d}"[:digits]
    if offset_minutes == 0:
        return text + "Z"
    sign = "+" if offset_minutes > 0 else "-"
    return text + f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"


def json_year(seconds: int, offset_minutes: int = 0) -> int:
    return civil_from_days((seconds + offset_minutes * 60) // 86_400)[0]


def json_string(text: str, ascii_only: bool) -> str:
    return json.dumps(text, ensure_ascii=ascii_only)


@dataclass
class JsonStyle:
    ascii_only: bool = True
    explicit: bool = False
    enum_as_number: bool = False
    space: str = ""
    order: list[int] | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # time field -> UTC offset minutes
    digits: dict[str, int] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)  # field -> raw JSON token (replaces the value)
    extra: list[tuple[str, str]] = field(default_factory=list)  # (key, raw token) appended


def json_bytes(spec: dict, style: JsonStyle) -> bytes:
    event_type = spec["_type"]
    items = []
    for name, _, kind in FIELDS[event_type]:
        key = camel(name)
        if name in style.raw:
            items.append((key, style.raw[name]))
            continue
        value = spec.get(name, field_default(event_type, name))
        if kind == "s":
            if value or style.explicit:
                items.append((key, json_string(value, style.ascii_only)))
        elif kind == "u":
            if value or style.explicit:
                items.append((key, str(value)))
        elif kind == "e":
            if isinstance(value, str):
                items.append((key, json_string(value, True)))
            elif value or style.explicit or style.enum_as_number:
                use_number = style.enum_as_number or not 0 <= value < len(REASON_NAMES)
                items.append((key, str(value) if use_number else f'"{REASON_NAMES[value]}"'))
        elif value is not None:
            seconds, nanos = value
            text = rfc3339(seconds, nanos, style.offsets.get(name, 0), style.digits.get(name))
            items.append((key, f'"{text}"'))
        elif style.explicit:
            items.append((key, "null"))
    if style.order is not None:
        items = [items[i] for i in style.order if i < len(items)] + [
            item for i, item in enumerate(items) if i not in style.order
        ]
    items += style.extra
    sp = style.space
    body = ("," + sp).join(f"{json_string(k, True)}{sp}:{sp}{v}" for k, v in items)
    return ("{" + sp + body + sp + "}").encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------
# What the contract says about one decoded spec.


def time_ok(value: tuple[int, int] | None) -> bool:
    return value is not None and MIN_SECONDS <= value[0] <= MAX_SECONDS and 0 <= value[1] < NS


def as_datetime(value: tuple[int, int] | None) -> datetime | None:
    if value is None:
        return None
    return EPOCH + timedelta(seconds=value[0], microseconds=value[1] // 1000)


def exact_micros(value: tuple[int, int]) -> int:
    return value[0] * 1_000_000 + value[1] // 1000


def plain(verdict):
    """A DriverWindows.add outcome as None (counted), DUPLICATE, or the rejection reason."""
    if verdict is COUNTED:
        return None
    return verdict.reason if isinstance(verdict, Refused) else verdict


def expected_verdict(spec: dict, now: float, max_future: float) -> set[str] | None:
    """The acceptable intake outcomes for ``spec`` as decoded: {ACCEPT}, reasons, or None (no opinion)."""
    event_type = spec["_type"]
    get = lambda name: spec.get(name, field_default(event_type, name))  # noqa: E731
    faults = []
    if not get("driver_id"):
        faults.append("invalid: driver_id")
    if not get("journey_id"):
        faults.append("invalid: journey_id")
    time_field = TIME_FIELD[event_type]
    if not time_ok(get(time_field)):
        faults.append(f"invalid: {time_field}")
    for name, kind in FIELD_KIND[event_type].items():
        value = get(name)
        if kind == "u" and not 0 <= value <= UINT32_MAX:
            faults.append(f"invalid: {name}")
        if kind == "e":
            if isinstance(value, str):
                if value not in REASON_NAMES:
                    faults.append("invalid: finish_reason")
            elif not INT32_MIN <= value <= INT32_MAX:
                return None  # beyond the enum's int32: protobuf itself has no word for it
            elif not 0 <= value < len(REASON_NAMES):
                faults.append("invalid: finish_reason")
    if event_type == RATED and 0 <= get("rating") <= UINT32_MAX and not 1 <= get("rating") <= 5:
        faults.append("invalid: rating")
    if event_type == FINISHED:
        started, ended = get("started_at"), get("ended_at")
        if not time_ok(started):
            faults.append("invalid: started_at")
        elif time_ok(ended) and (started[0], started[1] // 1000) > (ended[0], ended[1] // 1000):
            faults.append("invalid: started_at")
    if faults:
        return set(faults)
    ahead = exact_micros(get(time_field)) / 1e6 - now
    if ahead > max_future + 0.5:
        return {"future"}
    if ahead <= max_future - 0.5:
        return {ACCEPT}
    return None


def matches(spec: dict, event: Any) -> str | None:
    """Why the decoded ``event`` is not what ``spec`` sent, or None."""
    event_type = spec["_type"]
    if type(event) is not EVENT_CLASS[event_type]:
        return f"decoded as {type(event).__name__}"
    for name, kind in FIELD_KIND[event_type].items():
        sent = spec.get(name, field_default(event_type, name))
        got = getattr(event, name)
        if kind == "t":
            sent = as_datetime(sent)
        elif kind == "e":
            sent = FinishReason[sent] if isinstance(sent, str) else FinishReason[REASON_NAMES[sent]]
        if got != sent:
            return f"{name}: sent {sent!r}, decoded {got!r}"
    return None


def invalid_accepted(event: Any, now: float, max_future: float) -> str | None:
    """Why an accepted event breaks the contract's validity rules, or None."""
    if not event.driver_id or not event.journey_id:
        return "empty id accepted"
    event_time = event.event_time
    if event_time is None or event_time.tzinfo is None:
        return "event time missing"
    if isinstance(event, DriverRated) and not 1 <= event.rating <= 5:
        return f"rating {event.rating} accepted"
    for name in ("amount", "distance", "price"):
        value = getattr(event, name, 0)
        if not 0 <= value <= UINT32_MAX:
            return f"{name} {value} accepted"
    if isinstance(event, JourneyFinished):
        if not isinstance(event.finish_reason, FinishReason):
            return f"finish_reason {event.finish_reason!r} accepted"
        if event.started_at is None or event.started_at > event.ended_at:
            return "started_at missing or after ended_at accepted"
    if event_time.timestamp() - now > max_future + 1:
        return "future event accepted"
    return None


# ---------------------------------------------------------------------------
# Generated cases.


@dataclass
class Case:
    topic: str
    payload: bytes
    kind: str
    expect: set[str] | None = None  # acceptable intake outcomes
    spec: dict | None = None  # what an accepted event must decode to
    twin: bytes | None = None  # the same event in the other encoding: same verdict


@dataclass
class Session:
    profile: int
    batches: list[tuple[float, list[Case]]]

    def __repr__(self) -> str:  # Hypothesis may show it; the payloads can be megabytes
        return f"Session(profile={self.profile}, {sum(len(b) for _, b in self.batches)} cases)"


KIND_WEIGHTS = tuple(
    ["valid"] * 30 + ["repeat"] * 10 + ["json-value"] * 12 + ["pb-value"] * 8 + ["empty-id"] * 3
    + ["mutated"] * 14 + ["random"] * 5 + ["deep"] * 5 + ["huge"] * 3 + ["overflow"] * 7
    + ["wrong-topic"] * 3
)
AMOUNTS = st.one_of(
    st.integers(0, 5000),
    st.sampled_from([0, 1, UINT32_MAX, UINT32_MAX - 1, 2**31, 2**31 - 1]),
    st.integers(0, UINT32_MAX),
)
BIG_AMOUNTS = st.one_of(
    st.sampled_from([UINT32_MAX, UINT32_MAX - 1, 2**31, 2**31 + 1, 3 * 2**30]),
    st.integers(2**31, UINT32_MAX),
)
# JSON tokens where an int goes: out of range (expectation: invalid) and of the wrong kind (no opinion).
OUT_OF_RANGE = (-1, -2, -(2**31), -(2**32), -(2**63), -(10**30), 2**32, 2**32 + 1, 2**33, 2**63, 2**64, 10**30)
ODD_TOKENS = ("1.5", "5.0", "1e3", "-0", "0.0", "1E400", "-1e-7", '"5"', '"-1"', '""', "null", "true",
              "false", "[]", "[5]", "{}", '{"a":1}', "NaN", "Infinity", "0x10", "05", "+5", "1" * 400)
TIME_TOKENS_INVALID = ("0000-01-01T00:00:00Z", "0000-12-31T23:59:59.999999999Z", "10000-01-01T00:00:00Z",
                       "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01", "99999-12-31T23:59:59Z")
TIME_TOKENS_ODD = ("2024-02-30T00:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01T23:59:60Z", "2024-01-01",
                   "2024-01-01T12:00:00", "2024-01-01 12:00:00Z", "", "now", "2024-01-01T12:00:00.Z",
                   "2024-01-01T12:00:00.1234567891Z", "2024-01-01T12:00:00+24:00", "2024-13-01T00:00:00Z",
                   "2024-01-01t12:00:00z", "\u0662\u0660\u0662\u0664-01-01T12:00:00Z")
ENUM_INVALID = ('"FOO"', '"drop_off"', '""', '"DROP_OFF "', "4", "-1", "2147483647", "-2147483648")
ENUM_ODD = ("4294967296", "18446744073709551616", "1.0", '"1"', "null", "[0]", "true")


# Strategies are built once: building one per draw costs more than the draw.
_SAMPLED: dict[tuple, st.SearchStrategy] = {}
_INTEGERS: dict[tuple[int, int], st.SearchStrategy] = {}
_BOOLEANS = st.booleans()


class Gen:
    """Draws one session's cases; keeps what it sent so it can repeat it."""

    def __init__(self, draw, profile: Settings, topics: tuple[str, str, str]):
        self.draw = draw
        self.window = profile.window_seconds
        self.future = profile.max_future_seconds
        self.max_bytes = profile.max_message_bytes
        self.topics = topics
        self.sent: list[tuple[dict, bytes]] = []  # valid specs with a payload
        self.now = 0.0
        self.fresh = 0

    # -- building blocks ----------------------------------------------------

    def pick(self, values):
        key = values if type(values) is tuple else tuple(values)
        strategy = _SAMPLED.get(key)
        if strategy is None:
            strategy = _SAMPLED[key] = st.sampled_from(key)
        return self.draw(strategy)

    def integer(self, low, high):
        strategy = _INTEGERS.get((low, high))
        if strategy is None:
            strategy = _INTEGERS[(low, high)] = st.integers(low, high)
        return self.draw(strategy)

    def event_time(self) -> tuple[int, int]:
        """Near the wall clock (often exactly on an interval boundary), or at an extreme."""
        draw, window = self.draw, self.window
        where = self.integer(0, 24)
        sub = self.pick((0, 0, 0, 1, 999, 500))  # nanos below the microsecond
        if where < 20:
            interval = (int(self.now) // window + self.integer(-3, 1)) * window
            position = self.pick(("start", "start", "next", "last", "any", "any", "any"))
            micros = {"start": 0, "next": 1, "last": window * 1_000_000 - 1}.get(position)
            if micros is None:
                micros = self.integer(0, window * 1_000_000 - 1)
            total = interval * NS + micros * 1000 + sub
        elif where == 20:  # the first instants of year 1, and a boundary just after
            total = MIN_SECONDS * NS + self.pick((0, self.window * NS - 1000, 599_999_999_000)) + sub
        elif where == 21:  # the last instants of year 9999
            total = MAX_SECONDS * NS + self.pick((0, 999_999_000, 999_999_999)) - self.pick((0, 600 * NS))
        elif where == 22:  # around the epoch
            total = self.integer(-2, 2) * self.window * NS + self.pick((0, -1000, 1000))
        elif where == 23:  # far past, where a float cannot hold microseconds
            interval = self.integer(-62_000, -1_000) * 10**6 // window * window
            total = interval * NS - self.pick((1000, 0))
        else:  # 2106 and after: beyond 32-bit seconds
            total = (2**32 + self.integer(-3600, 3600)) * NS
        return divmod(total, NS)

    def driver(self) -> str:
        """Mostly one of a few drivers (so events meet), sometimes one never seen before."""
        if self.integer(0, 7) == 0:
            self.fresh += 1
            return f"fresh-{self.fresh}"
        return self.pick(DRIVERS)

    def valid_spec(self, event_type: int | None = None) -> dict:
        if event_type is None:
            event_type = self.integer(0, 2)
        when = self.event_time()
        spec = {
            "_type": event_type,
            "driver_id": self.driver(),
            "rider_id": self.pick(RIDERS),
            "journey_id": self.pick(JOURNEYS),
            TIME_FIELD[event_type]: when,
        }
        if event_type == RATED:
            spec["rating"] = self.integer(1, 5)
        elif event_type == TIPPED:
            spec["amount"] = self.draw(AMOUNTS)
        else:
            reason = self.integer(0, 3)
            spec["finish_reason"] = reason
            duration = self.pick((0, 1000, 60 * NS, 3600 * NS, 86_400 * NS))
            start = max(when[0] * NS + when[1] - duration, MIN_SECONDS * NS)
            spec["started_at"] = divmod(start, NS)
            if reason == 0 or self.integer(0, 4) == 0:  # producers fill them for DROP_OFF only
                spec["distance"] = self.draw(AMOUNTS)
                spec["price"] = self.draw(AMOUNTS)
        return spec

    def json_style(self, spec: dict) -> JsonStyle:
        draw = self.draw
        style = JsonStyle(
            ascii_only=draw(_BOOLEANS),
            explicit=self.integer(0, 3) == 0,
            enum_as_number=self.integer(0, 2) == 0,
            space=self.pick(("", "", " ", "\n\t ")),
        )
        if self.integer(0, 3) == 0:
            style.order = draw(st.permutations(range(len(FIELDS[spec["_type"]]))))
        for name, _, kind in FIELDS[spec["_type"]]:
            value = spec.get(name)
            if kind == "t" and value is not None:
                offset = self.pick((0, 0, 0, 60, -330, 840, -1439))
                if MIN_SECONDS <= value[0] + offset * 60 <= MAX_SECONDS:
                    style.offsets[name] = offset
                if value[1] and self.integer(0, 3) == 0:
                    style.digits[name] = 9
        if self.integer(0, 9) == 0:
            style.extra.append(("unknownField", self.pick(('"x"', "1", "[1,2]", '{"a":{"b":[]}}', "null"))))
        return style

    def encode(self, spec: dict, as_json: bool | None = None) -> tuple[bytes, bool]:
        if as_json is None:
            as_json = self.draw(_BOOLEANS)
        if as_json:
            return json_bytes(spec, self.json_style(spec)), True
        explicit = self.integer(0, 3) == 0
        order = None
        if self.integer(0, 4) == 0:
            order = self.draw(st.permutations(range(len(FIELDS[spec["_type"]]))))
        return pb_bytes(spec, explicit, order), False

    def twin_of(self, spec: dict, as_json: bool) -> bytes | None:
        """The same event in the other encoding, when both can carry it."""
        for name, kind in FIELD_KIND[spec["_type"]].items():
            value = spec.get(name)
            if value is None:
                continue
            if kind == "u" and not 0 <= value <= UINT32_MAX:
                return None
            if kind == "e" and not (isinstance(value, int) and INT32_MIN <= value <= INT32_MAX):
                return None
            if kind == "t" and not (0 <= value[1] < NS and 0 <= json_year(value[0]) <= 99_999):
                return None
        return pb_bytes(spec) if as_json else json_bytes(spec, JsonStyle())

    def case_for(self, spec: dict, kind: str, *, as_json: bool | None = None, remember: bool = True,
                 twin: bool = True) -> Case:
        payload, is_json = self.encode(spec, as_json)
        decoded = spec if is_json else pb_effective(spec)
        if remember:
            self.sent.append((spec, payload))
        return Case(
            self.topics[spec["_type"]], payload, kind,
            expected_verdict(decoded, self.now, self.future), decoded,
            self.twin_of(spec, is_json) if twin else None,
        )

    # -- the kinds of case --------------------------------------------------

    def case(self) -> Case:
        kind = self.pick(KIND_WEIGHTS)
        return getattr(self, "make_" + kind.replace("-", "_"))()

    def make_valid(self) -> Case:
        return self.case_for(self.valid_spec(), "valid")

    def make_overflow(self) -> Case:
        """Values that overflow a uint32 total when summed, or (JSON only) are out of range on their own."""
        spec = self.valid_spec(self.pick((TIPPED, FINISHED, FINISHED)))
        alone = self.integer(0, 3) == 0  # often the first event of its interval
        big = self.pick((2**32, 2**32 + 1, 2**33, 2**63, -1, -(2**31))) if alone else self.draw(BIG_AMOUNTS)
        if spec["_type"] == TIPPED:
            spec["amount"] = big
        else:
            spec["finish_reason"] = 0
            spec[self.pick(("distance", "price"))] = big
        if alone:
            spec["driver_id"] = self.driver()
            return self.case_for(spec, "out-of-range-alone", as_json=True, remember=False, twin=False)
        return self.case_for(spec, "overflow")

    def make_repeat(self) -> Case:
        if not self.sent:
            return self.make_valid()
        spec, payload = self.sent[self.integer(0, len(self.sent) - 1)]
        how = self.integer(0, 3)
        if how == 0:  # the very same bytes
            return Case(self.topics[spec["_type"]], payload, "repeat-same-bytes")
        if how == 1:  # the same event, encoded again (maybe the other format)
            return self.case_for(spec, "repeat-reencoded", remember=False)
        other = self.valid_spec(spec["_type"])  # same identity, other content
        other["journey_id"] = spec["journey_id"]
        if how == 2:
            other["driver_id"] = spec["driver_id"]
        return self.case_for(other, "repeat-other-content")

    def make_empty_id(self) -> Case:
        spec = self.valid_spec()
        for name in self.pick((("driver_id",), ("journey_id",), ("driver_id", "journey_id"))):
            spec[name] = ""
        return self.case_for(spec, "empty-id", remember=False)

    def make_json_value(self) -> Case:
        """A valid event in JSON with one value replaced by something extreme or odd."""
        spec = self.valid_spec()
        event_type = spec["_type"]
        style = self.json_style(spec)
        names = [name for name, _, kind in FIELDS[event_type] if kind != "s"]
        name = self.pick(names)
        kind = FIELD_KIND[event_type][name]
        twin = False
        if kind == "u":
            if self.draw(_BOOLEANS):
                spec[name] = self.pick(OUT_OF_RANGE)
            else:
                style.raw[name] = self.pick(ODD_TOKENS)
        elif kind == "e":
            choice = self.integer(0, 3)
            if choice == 0:  # a number, as proto3 JSON allows
                spec[name] = self.integer(0, 3)
                style.enum_as_number = True
                twin = True
            elif choice == 1:
                token = self.pick(ENUM_INVALID)
                spec[name] = token.strip('"') if token.startswith('"') else int(token)
            else:
                style.raw[name] = self.pick(ENUM_ODD)
        else:
            choice = self.integer(0, 3)
            if choice == 0:  # outside years 0001..9999, well formed
                text = self.pick(TIME_TOKENS_INVALID)
                style.raw[name] = f'"{text}"'
                spec[name] = (2**62, 0)  # stands for "out of range" in the expectation
            elif choice == 1:  # the edges of the range
                spec[name] = self.pick(((MIN_SECONDS, 0), (MAX_SECONDS, 999_999_999),
                                        (MIN_SECONDS - 1, 999_999_999), (MAX_SECONDS + 1, 0)))
                style.offsets.pop(name, None)
                twin = True
            elif choice == 2:
                style.raw[name] = f'"{self.pick(TIME_TOKENS_ODD)}"'
            else:
                style.raw[name] = self.pick(("null", "0", "1704110400", "[]", '{"seconds":1}', "true"))
        payload = json_bytes(spec, style)
        expect = None if style.raw and not spec.get(name) == (2**62, 0) else expected_verdict(
            spec, self.now, self.future
        )
        return Case(self.topics[event_type], payload, f"json-{kind}-value", expect, spec,
                    self.twin_of(spec, True) if twin else None)

    def make_pb_value(self) -> Case:
        """A valid event in protobuf with one field made extreme at the wire level."""
        spec = self.valid_spec()
        event_type = spec["_type"]
        names = [name for name, _, kind in FIELDS[event_type]]
        name = self.pick(names)
        kind = FIELD_KIND[event_type][name]
        number = next(n for f, n, _ in FIELDS[event_type] if f == name)
        how = self.integer(0, 4)
        if how == 0:  # the value itself, extreme
            if kind == "t":
                spec[name] = self.pick(((MIN_SECONDS - 1, 0), (MAX_SECONDS + 1, 0), (-(2**62), 0), (2**62, 0),
                                        (MAX_SECONDS, NS), (1_704_110_000, -1), (1_704_110_000, INT32_MAX),
                                        (1_704_110_000, INT32_MIN), (0, 0)))
            elif kind == "e":
                spec[name] = self.pick((4, 5, 100, -1, INT32_MAX, INT32_MIN))
            elif kind == "u":
                spec[name] = self.pick((2**32, 2**32 + 5, 2**64 - 1, -1, -5, UINT32_MAX))
            else:
                spec[name] = self.pick(("", "\x00", "\U0010ffff", "x" * 1000))
            return self.case_for(spec, f"pb-{kind}-value", as_json=False, remember=False)
        payload = pb_bytes(spec)
        if how == 1:  # repeated: the last one wins
            extra = pb_field(number, kind, self.valid_spec(event_type).get(name, field_default(event_type, name)), True)
            payload += extra
        elif how == 2:  # a wrong wire type for the field
            payload += self.pick((tag(number, 0) + varint(7), tag(number, 2) + b"\x01x", tag(number, 5) + b"\0\0\0\0",
                                  tag(number, 1) + b"\0" * 8, tag(number, 3) + tag(number, 4)))
        elif how == 3:  # unknown fields, some long
            payload += self.pick((tag(99, 0) + varint(2**63), tag(15, 2) + varint(300) + b"\0" * 300,
                                  tag(536_870_911, 5) + b"abcd", tag(1000, 2) + b"\x00"))
        else:  # a string that is not UTF-8
            if kind == "s":
                payload += tag(number, 2) + b"\x02\xff\xfe"
            else:
                payload = b"\x0a\x03\xc3\x28\x00" + payload
        return Case(self.topics[event_type], payload, f"pb-wire-{how}")

    def make_mutated(self) -> Case:
        spec = self.valid_spec()
        payload, _ = self.encode(spec)
        data = bytearray(payload)
        for _ in range(self.integer(1, 3)):
            how = self.integer(0, 5)
            if not data:
                data.extend(self.draw(st.binary(min_size=1, max_size=8)))
            position = self.integer(0, len(data) - 1)
            if how == 0:
                del data[position:]
            elif how == 1:
                data[position] ^= 1 << self.integer(0, 7)
            elif how == 2:
                data[position] = self.pick((0x00, 0xFF, 0x80, 0x7F, ord("{"), ord('"'), ord("\\"), ord("}")))
            elif how == 3:
                data[position:position] = self.draw(st.binary(min_size=1, max_size=6))
            elif how == 4:
                del data[position:position + self.integer(1, 8)]
            else:  # splice with something sent before
                other = self.sent[self.integer(0, len(self.sent) - 1)][1] if self.sent else payload
                data[position:] = other[self.integer(0, max(0, len(other) - 1)):]
        return Case(self.topics[spec["_type"]], bytes(data), "mutated")

    def make_random(self) -> Case:
        payload = self.draw(st.binary(max_size=64))
        payload = self.pick((b"", b"{", b"\x0a", b"\x22")) + payload
        return Case(self.topics[self.integer(0, 2)], payload, "random")

    def make_deep(self) -> Case:
        depth = self.pick((33, 100, 1000, 2000, 5000, 30_000, 200_000))
        spec = self.valid_spec()
        if self.integer(0, 3) == 0:  # shapes that make a naive scanner quadratic, up to the size limit
            head = self.pick((b"{" * 33, b"{", b'{"x":' + b"[" * 40, b'{"driverId":'))
            unit = self.pick((b'\\"', b'"\\', b'"[', b"[\"", b'\\u', b'"x",', b'{"a":"', b'\\\\'))
            tail = self.pick((b"", b'"', b'"}', b"]" * 40 + b"}"))
            size = self.max_bytes - self.pick((0, 1, 100, len(head) + len(tail)))
            count = max(1, (size - len(head) - len(tail)) // len(unit))
            return Case(self.topics[spec["_type"]], head + unit * count + tail, "crafted-json")
        if self.integer(0, 4) == 0:  # protobuf: nested groups / messages in an unknown field
            if self.draw(_BOOLEANS):
                nest = tag(99, 3) * depth + tag(99, 4) * depth
            else:
                nest = b""
                for _ in range(min(depth, 2000)):
                    nest = tag(1, 2) + varint(len(nest)) + nest
                nest = tag(99, 2) + varint(len(nest)) + nest
            return Case(self.topics[spec["_type"]], pb_bytes(spec) + nest, "deep-protobuf")
        opener, closer = self.pick((("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")))
        inner = opener * depth + self.pick(("1", '"x"', "[]", "")) + closer * depth
        style = self.json_style(spec)
        where = self.integer(0, 2)
        if where == 0:
            style.extra.append(("deep", inner))
        elif where == 1:
            style.raw[self.pick([name for name, _, _ in FIELDS[spec["_type"]]])] = inner
        else:
            return Case(self.topics[spec["_type"]], ("{" + '"x":' + inner).encode(), "deep-json-unclosed")
        return Case(self.topics[spec["_type"]], json_bytes(spec, style), "deep-json")

    def make_huge(self) -> Case:
        spec = self.valid_spec()
        target = self.max_bytes + self.pick((1, 1, 2, 1000, 100_000, 0, -1))
        as_json = self.draw(_BOOLEANS)
        style = self.json_style(spec) if as_json else None
        while True:  # grow rider_id until the payload has (about) the target size
            payload = json_bytes(spec, style) if as_json else pb_bytes(spec)
            if len(payload) >= target:
                break
            spec["rider_id"] += "x" * (target - len(payload))
        decoded = spec if as_json else pb_effective(spec)
        expect = {"too large"} if len(payload) > self.max_bytes else expected_verdict(decoded, self.now, self.future)
        return Case(self.topics[spec["_type"]], payload, "huge", expect, decoded)

    def make_wrong_topic(self) -> Case:
        spec = self.valid_spec()
        payload, _ = self.encode(spec)
        if self.integer(0, 2) == 0:
            return Case(self.pick(("input/unknown", "output/driver_stats", "", "input/driver_rated/")),
                        payload, "unknown-topic", {"unknown topic"})
        return Case(self.topics[(spec["_type"] + self.integer(1, 2)) % 3], payload, "wrong-topic")


@st.composite
def sessions(draw, profiles: list[tuple[str, Settings]]):
    index = draw(st.sampled_from(PROFILE_WEIGHTS)) % len(profiles)
    profile = profiles[index][1]
    gen = Gen(draw, profile, profile.input_topics)
    gen.now = WALL_BASE + draw(st.integers(0, 86_400)) + draw(st.sampled_from((0.0, 0.5, 0.999999)))
    batches = []
    left = SESSION_CASES
    while left > 0:
        size = min(left, draw(st.integers(1, 12)))
        batches.append((gen.now, [gen.case() for _ in range(size)]))
        left -= size
        gen.now += draw(st.sampled_from((0, 0, 0, 0.5, 1, 5, 29, 31, 300, 601, 3600)))
    return Session(index, batches)


# ---------------------------------------------------------------------------
# Running the cases the real way, and accounting for each.


def reason_known(reason: Any) -> bool:
    if not isinstance(reason, str):
        return False
    if reason in PLAIN_REASONS:
        return True
    if reason.startswith("invalid: "):
        return reason[len("invalid: "):] in KNOWN_FIELDS
    return reason.startswith("overflow: ") and reason[len("overflow: "):] in TOTALS


def windows_factory(settings: Settings):
    """One driver's ``DriverWindows`` for these settings, built as the dataflow builds it."""
    options = {}
    parameters = inspect.signature(DriverWindows).parameters
    if "retention_seconds" in parameters and hasattr(settings, "state_retention_seconds"):
        options["retention_seconds"] = settings.state_retention_seconds
    return functools.partial(DriverWindows, settings.window_seconds, settings.allowed_lateness_seconds, **options)


def interval_of(event: Any, window: int) -> int:
    """The start (Unix seconds) of the interval holding the event's time, in exact arithmetic."""
    micros = (event.event_time - EPOCH) // timedelta(microseconds=1)
    return micros // (window * 1_000_000) * window


def start_seconds(value: datetime) -> int:
    return (value - EPOCH) // timedelta(seconds=1)


class Interval:
    """What the fuzzer itself counted into one driver's interval."""

    __slots__ = ("sums", "rating_sum", "rating_count", "keys", "cases")

    def __init__(self):
        self.sums = dict.fromkeys(TOTALS, 0)
        self.rating_sum = 0
        self.rating_count = 0
        self.keys: set = set()
        self.cases: list[Case] = []

    def would_overflow(self, event) -> str | None:
        if isinstance(event, DriverTipped):
            return "total_tips" if self.sums["total_tips"] + event.amount > UINT32_MAX else None
        if isinstance(event, JourneyFinished):
            for name in ("distance", "price"):
                if self.sums["total_" + name] + getattr(event, name) > UINT32_MAX:
                    return "total_" + name
        return None

    def count(self, event) -> None:
        if isinstance(event, DriverRated):
            self.rating_sum += event.rating
            self.rating_count += 1
        elif isinstance(event, DriverTipped):
            self.sums["total_tips"] += event.amount
        else:
            self.sums["total_distance"] += event.distance
            self.sums["total_price"] += event.price
            if event.finish_reason is FinishReason.DROP_OFF:
                self.sums["total_drop_offs"] += 1
            elif event.finish_reason is FinishReason.DRIVER_CANCEL:
                self.sums["total_driver_cancels"] += 1

    def differs(self, record: DriverStats) -> str | None:
        for name in TOTALS:
            if getattr(record, name) != self.sums[name]:
                return f"{name} {getattr(record, name)}, expected {self.sums[name]}"
        mean = self.rating_sum / self.rating_count if self.rating_count else 0.0
        if struct.pack("<f", record.avg_rating) != struct.pack("<f", mean):
            return f"avg_rating {record.avg_rating}, expected float32 of {mean}"
        return None


@dataclass
class Failure:
    category: str
    profile: str
    topic: str
    payload: bytes
    kind: str
    what: str


class Harness:
    def __init__(self, profiles: list[tuple[str, Settings]], flow_cases: int, stride: int):
        self.profiles = profiles
        self.intakes = [Intake(settings, time.time) for _, settings in profiles]
        self.new_windows = [windows_factory(settings) for _, settings in profiles]
        self.cases = 0
        self.counts = Counter()  # escaped, unaccounted, wrong
        self.failures: list[Failure] = []
        self.kinds = Counter()  # failure signature -> count
        self.examples: dict[str, Failure] = {}  # failure signature -> its first failure
        self.outcomes = Counter()
        self.sessions = 0
        self.flow_target = flow_cases
        self.flow_done = 0
        self.flow_runs = 0
        self.stride = stride

    def fail(self, category: str, profile: int, case: Case | None, what: str) -> None:
        self.counts[category] += 1
        topic, payload, kind = (case.topic, case.payload, case.kind) if case else ("", b"", "")
        failure = Failure(category, self.profiles[profile][0], topic, payload, kind, what)
        if len(self.failures) < 100:
            self.failures.append(failure)
        sig = signature(failure)
        self.kinds[sig] += 1
        self.examples.setdefault(sig, failure)

    # -- one session through intake -> windows -> encode ------------------

    def run_session(self, session: Session, limit: int) -> None:
        batches, taken = [], 0
        for now, cases in session.batches:
            if taken >= limit:
                break
            cases = cases[: limit - taken]
            taken += len(cases)
            batches.append((now, cases))
        self.simulate(session.profile, batches, check=True)
        self.cases += taken
        if self.flow_done < self.flow_target and self.sessions % self.stride == 0:
            self.run_flow(session.profile, batches)
        self.sessions += 1

    def simulate(self, profile: int, batches, *, check: bool) -> tuple[list, list, list]:
        """Run ``batches`` of (wall time, cases); return the rejections and records to publish, and escapes."""
        settings = self.profiles[profile][1]
        intake = self.intakes[profile]
        window, lateness, future = settings.window_seconds, settings.allowed_lateness_seconds, settings.max_future_seconds
        drivers: dict[str, DriverWindows] = {}
        held: dict[tuple[str, int], Interval] = {}
        emitted: set[tuple[str, int]] = set()
        touched: dict[tuple[str, int], Case] = {}  # the last case routed to a driver's interval
        broken: set[str] = set()  # drivers whose windows raised: what they held is already reported
        rejected: list[tuple[str, bytes, str]] = []
        records: list[DriverStats] = []
        escapes: list[Case] = []  # without check: the cases that raised, for the dataflow's report

        def quiet(category, _profile, case, _what):
            if category == "escaped" and case is not None:
                escapes.append(case)

        fail = self.fail if check else quiet
        count_outcome = self.outcomes.update if check else (lambda *args: None)

        def closed(windows_driver: str, stats_list: list[DriverStats]) -> None:
            for stats in stats_list:
                records.append(stats)
                self.check_record(profile, stats, windows_driver, window, held, emitted, touched, fail)

        for now, cases in batches:
            for case in cases:
                started = time.perf_counter()
                try:
                    result = intake(case.topic, case.payload, now)
                except Exception as err:  # noqa: BLE001 - the point of the fuzzer
                    fail("escaped", profile, case, f"intake raised {type(err).__name__}: {str(err)[:120]}")
                    continue
                took = time.perf_counter() - started
                if took > SLOW_SECONDS:  # the worker holds the GIL meanwhile: every driver waits
                    fail("slow", profile, case, f"the intake took {took:.1f} s over one message")
                if type(result) is Rejection:
                    count_outcome([result.reason])
                    if not reason_known(result.reason):
                        fail("unaccounted", profile, case, f"rejected with unknown reason {result.reason!r}")
                    elif result.payload != case.payload or result.source_topic != case.topic:
                        fail("unaccounted", profile, case, "rejection does not carry the original topic and bytes")
                    elif case.expect is not None and result.reason not in case.expect:
                        fail("wrong", profile, case, f"rejected {result.reason!r} ({result.detail[:80]}), "
                                                     f"expected {sorted(case.expect)}")
                    rejected.append((case.topic, case.payload, result.reason))
                    if case.twin is not None and check:
                        self.check_twin(profile, intake, case, result, now)
                    continue
                if type(result) is not Accepted:
                    fail("unaccounted", profile, case, f"intake returned {type(result).__name__}")
                    continue
                event = result.event
                if case.expect is not None and ACCEPT not in case.expect:
                    fail("wrong", profile, case, f"accepted, expected {sorted(case.expect)}")
                else:
                    why = invalid_accepted(event, now, future)
                    if why is None and case.expect is not None and case.spec is not None:
                        why = matches(case.spec, event)
                    if why:
                        fail("wrong", profile, case, why)
                if case.twin is not None and check:
                    self.check_twin(profile, intake, case, result, now)
                driver = event.driver_id
                windows = drivers.get(driver)
                if windows is None:
                    windows = drivers[driver] = self.new_windows[profile]()
                touched[(driver, interval_of(event, window))] = case
                try:
                    verdict = plain(windows.add(event, result.event_time, now))
                except Exception as err:  # noqa: BLE001
                    broken.add(driver)
                    fail("escaped", profile, case, f"DriverWindows.add raised {type(err).__name__}: {str(err)[:120]}")
                    continue
                check_verdict = fail if driver not in broken else quiet  # a broken state explains itself
                self.account(profile, case, driver, event, verdict, window, held, check_verdict, count_outcome)
                if isinstance(verdict, str) and verdict is not DUPLICATE:
                    rejected.append((case.topic, case.payload, verdict))
            forgotten: list[str] = []
            for driver, windows in drivers.items():
                try:
                    closed(driver, windows.close_due(now))
                except Exception as err:  # noqa: BLE001
                    broken.add(driver)
                    fail("escaped", profile, self.culprit(driver, held, touched),
                         f"close_due raised {type(err).__name__}: {str(err)[:120]}")
                    continue
                if driver in broken:
                    continue
                if hasattr(windows, "discardable") and windows.discardable(now):
                    forgotten.append(driver)  # as the dataflow does: the floor now guards it
                    continue
                try:  # when the dataflow asks to be woken: a wall-clock datetime, as its notify_at makes
                    wake = windows.next_close()
                    if wake is None and hasattr(windows, "discard_at"):
                        wake = windows.discard_at()
                    if wake is not None:
                        datetime.fromtimestamp(wake, timezone.utc)
                except Exception as err:  # noqa: BLE001
                    broken.add(driver)
                    fail("escaped", profile, self.culprit(driver, held, touched),
                         f"the next wake-up time is not a datetime: {type(err).__name__}: {str(err)[:120]}")
            for driver in forgotten:
                del drivers[driver]
        for driver, windows in drivers.items():
            try:
                closed(driver, windows.close_all())
            except Exception as err:  # noqa: BLE001
                broken.add(driver)
                fail("escaped", profile, self.culprit(driver, held, touched),
                     f"close_all raised {type(err).__name__}: {str(err)[:120]}")
        for (driver, start), interval in held.items():
            if driver in broken:
                continue
            case = interval.cases[0] if interval.cases else None
            fail("unaccounted", profile, case,
                 f"counted into driver {driver[:20]!r} interval {start}, but no record came out for it")
        return rejected, records, escapes

    @staticmethod
    def culprit(driver: str, held: dict, touched: dict) -> Case | None:
        """The oldest case still held for ``driver`` (what a failing close is about)."""
        keys = sorted(key for key in held if key[0] == driver)
        if keys and held[keys[0]].cases:
            return held[keys[0]].cases[0]
        keys = sorted(key for key in touched if key[0] == driver)
        return touched[keys[0]] if keys else None

    def account(self, profile, case, driver, event, verdict, window, held, fail, count_outcome) -> None:
        """Check a windows verdict against what the fuzzer counted itself."""
        start = interval_of(event, window)
        key = (type(event).__name__, event.journey_id)
        own = [iv for (d, _), iv in held.items() if d == driver and key in iv.keys]
        if verdict is None:
            count_outcome(["counted"])
            if own:
                fail("wrong", profile, case, f"counted twice: {key} already counted in an open interval")
            interval = held.get((driver, start))
            if interval is None:
                interval = held[(driver, start)] = Interval()
            overflow = interval.would_overflow(event)
            if overflow:
                fail("wrong", profile, case, f"counted although {overflow} overflows uint32")
            interval.count(event)
            interval.keys.add(key)
            interval.cases.append(case)
        elif verdict is DUPLICATE or verdict == DUPLICATE:
            count_outcome(["duplicate"])
            if not own:
                fail("unaccounted", profile, case, "dropped as a duplicate, but nothing with its identity is counted")
        elif verdict == "late":
            count_outcome(["late"])
        elif isinstance(verdict, str) and verdict.startswith("overflow: ") and reason_known(verdict):
            count_outcome([verdict])
            total = verdict[len("overflow: "):]
            if (held.get((driver, start)) or Interval()).would_overflow(event) != total:
                fail("wrong", profile, case, f"rejected {verdict!r}, but the sum fits in uint32")
        else:
            fail("unaccounted", profile, case, f"DriverWindows.add returned {verdict!r}")

    def check_record(self, profile, stats, windows_driver, window, held, emitted, touched, fail) -> None:
        try:
            protobuf, json = encode_stats(stats), to_json(stats)
        except Exception as err:  # noqa: BLE001
            cause = held.get((stats.driver_id, start_seconds(stats.interval_start)))
            fail("escaped", profile, cause.cases[0] if cause and cause.cases else None,
                 f"encoding {stats!r:.160} raised {type(err).__name__}: {str(err)[:100]}")
            return
        key = (stats.driver_id, start_seconds(stats.interval_start))
        interval = held.pop(key, None)
        if interval is None or stats.driver_id != windows_driver:
            fail("unaccounted", profile, touched.get((windows_driver, key[1])) or self.culprit(windows_driver, held, touched),
                 f"record for driver {stats.driver_id[:20]!r} (state of {windows_driver[:20]!r}) interval "
                 f"{stats.interval_start.isoformat()} that got no accepted event"
                 + (" (a second record)" if key in emitted else "") + f": {stats!r:.200}")
            return
        emitted.add(key)
        case = interval.cases[0]
        why = interval.differs(stats)
        if why is None and start_seconds(stats.interval_end) - key[1] != window:
            why = f"interval {stats.interval_start} .. {stats.interval_end} is not {window}s long"
        if why is None:
            for encoded in (protobuf, json):
                try:
                    if decode_stats(encoded) != stats:
                        why = f"record does not survive its encoding: {decode_stats(encoded)!r:.200}"
                except Exception as err:  # noqa: BLE001
                    why = f"its own encoding does not decode: {type(err).__name__}: {err}"
        if why:
            fail("wrong", profile, case, f"record {stats.driver_id[:20]!r} {stats.interval_start}: {why}")

    def check_twin(self, profile, intake, case, result, now) -> None:
        try:
            other = intake(case.topic, case.twin, now)
        except Exception as err:  # noqa: BLE001
            self.fail("escaped", profile, Case(case.topic, case.twin, case.kind + "-twin"),
                      f"intake raised {type(err).__name__}: {str(err)[:120]}")
            return
        if type(result) is Accepted and type(other) is Accepted:
            if result.event != other.event or result.event_time != other.event_time:
                self.fail("wrong", profile, case, f"decodes to {result.event!r:.150}, the same event in the other "
                                                  f"encoding to {other.event!r:.150}: {case.twin[:100]!r}")
        elif not (type(result) is Rejection and type(other) is Rejection and result.reason == other.reason):
            def say(r):
                return repr(r.reason) if type(r) is Rejection else "accepted"

            self.fail("wrong", profile, case,
                      f"{say(result)}, the same event in the other encoding {say(other)}: {case.twin[:100]!r}")

    # -- the same session through the real dataflow -----------------------

    def run_flow(self, profile: int, batches) -> None:
        from bytewax.testing import TestingSink, TestingSource, run_main

        from connectors.mqtt import MQTTMessage
        from flows.driver_stats import build_flow

        settings = self.profiles[profile][1]
        cases = [case for _, batch in batches for case in batch]
        wall = batches[0][0]
        # One message per batch and a wall clock standing still: the step-by-step run is then exact.
        predicted_rejected, predicted_records, escapes = self.simulate(
            profile, [(wall, [case]) for case in cases], check=False
        )
        out: list = []
        flow = build_flow(
            settings,
            TestingSource([MQTTMessage(case.topic, case.payload) for case in cases], batch_size=1),
            TestingSink(out),
            clock=lambda: wall,
        )
        self.flow_runs += 1
        self.flow_done += len(cases)
        first = Case("", b"", "flow")
        try:
            with _stderr_silenced():  # Bytewax prints a Rust backtrace of a stopped run
                run_main(flow)
        except Exception as err:  # noqa: BLE001
            culprit = Case(escapes[0].topic, escapes[0].payload, "flow") if escapes else first
            message = (str(err).strip().splitlines() or [""])[-1][:160]
            self.fail("escaped", profile, culprit, f"the Bytewax run stopped: {type(err).__name__}: {message}")
            return
        stats_topic = settings.topic_driver_stats
        encode = to_json if settings.output_format == "json" else encode_stats
        got_records = sorted(m.payload for _, m in out if m.topic == stats_topic)
        got_rejected = sorted(
            (m.topic, m.payload, m.user_property("reason")) for _, m in out
            if m.topic != stats_topic and m.user_property("reason") not in GUARD_REASONS
        )
        guarded = [m for _, m in out if m.user_property("reason") in GUARD_REASONS]
        for message in guarded:
            self.fail("escaped", profile, Case(message.topic, message.payload, "flow"),
                      f"caught by the dataflow's last-resort guard: {message.user_property('reason')!r} "
                      f"({(message.user_property('detail') or '')[:120]})")
        if guarded:
            return
        want_rejected = sorted((settings.rejected_prefix + t, p, r) for t, p, r in predicted_rejected)
        try:
            want_records = sorted(encode(s) for s in predicted_records)
        except Exception:  # noqa: BLE001 - already reported by the step-by-step run
            want_records = None
        if got_rejected != want_rejected:
            missing = Counter(want_rejected) - Counter(got_rejected)
            extra = Counter(got_rejected) - Counter(want_rejected)
            sample = next(iter(missing or extra))
            self.fail("unaccounted" if missing else "wrong", profile, Case(sample[0], sample[1], "flow"),
                      f"the dataflow's rejections differ: {sum(missing.values())} missing, "
                      f"{sum(extra.values())} extra, e.g. reason {sample[2]!r}")
        if want_records is not None and got_records != want_records:
            self.fail("wrong", profile, first,
                      f"the dataflow published {len(got_records)} records, the step-by-step run {len(want_records)}"
                      f" (or other bytes)")


# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def show(f: Failure, lead: str) -> None:
    print(f"{lead}[{f.category}] {f.kind} on {f.topic!r} ({f.profile}): {f.what[:300]}")
    print(f"{' ' * len(lead)}    payload ({len(f.payload)} bytes): {f.payload[:160]!r}{'...' if len(f.payload) > 160 else ''}")


def signature(f: Failure) -> str:
    """A failure without its numbers and quoted values: failures of one kind share it."""
    what = re.sub(r"'[^']*'|\"[^\"]*\"|b'[^']*'|-?\d[\d.:+eE-]*", "#", f.what)
    return f"[{f.category}] {f.profile}: {what[:110]}"


def legal_profiles() -> list[tuple[str, Settings]]:
    profiles = []
    known = {name.upper() for name in Settings.__struct_fields__}
    for name, values in PROFILES:
        env = {f"DRIVER_STATS_{k}": v for k, v in values.items() if k in known}
        try:
            profiles.append((name, Settings.from_env(env)))
        except SettingsError as err:
            print(f"profile {name} skipped: not a legal setting any more ({err})", flush=True)
    return profiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="?", type=int, default=100_000, help="number of messages (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    parser.add_argument("--flow-cases", type=int, default=400,
                        help="messages also run through the Bytewax dataflow (default 400)")
    parser.add_argument("--show", type=int, default=8, help="failures to print (default 8)")
    parser.add_argument("--profiles", default=",".join(name for name, _ in PROFILES),
                        help="settings profiles to rotate over (default: all of " +
                             ", ".join(name for name, _ in PROFILES) + ")")
    args = parser.parse_args(argv)
    n = max(0, args.cases)
    wanted = set(args.profiles.split(","))
    unknown = wanted - {name for name, _ in PROFILES}
    if unknown:
        parser.error(f"unknown profile {', '.join(sorted(unknown))}")
    profiles = [p for p in legal_profiles() if p[0] in wanted]
    if not profiles:  # the settings refuse every profile asked for: nothing to fuzz, nothing failed
        print(f"{n} cases, 0 escaped, 0 unaccounted (no legal profile among {args.profiles})")
        return 0
    sessions_needed = max(1, math.ceil(n / SESSION_CASES))
    flow_sessions = math.ceil(min(args.flow_cases, n) / SESSION_CASES)
    stride = max(1, sessions_needed // max(1, flow_sessions))
    harness = Harness(profiles, min(args.flow_cases, n), stride)
    started = time.monotonic()
    next_report = [max(1000, n // 10)]
    print(f"fuzzing {n} messages, seed {args.seed}, profiles {', '.join(p for p, _ in profiles)}", flush=True)

    round_ = 0
    while harness.cases < n:
        left = n - harness.cases

        @settings(max_examples=math.ceil(left / SESSION_CASES), database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
        @seed(args.seed * 1000 + round_)
        @given(sessions(profiles))
        def drive(session: Session) -> None:
            if harness.cases >= n:
                return
            harness.run_session(session, n - harness.cases)
            if harness.cases >= next_report[0]:
                next_report[0] += max(1000, n // 10)
                c = harness.counts
                print(f"  {harness.cases}/{n} cases: {c['escaped']} escaped, {c['unaccounted']} unaccounted, "
                      f"{c['wrong']} wrong, {c['slow']} slow ({time.monotonic() - started:.0f} s)", flush=True)

        drive()
        round_ += 1

    elapsed = time.monotonic() - started
    c = harness.counts
    top = ", ".join(f"{k} {v}" for k, v in harness.outcomes.most_common(12))
    print(f"outcomes: {top}", flush=True)
    print(f"dataflow: {harness.flow_done} of the cases in {harness.flow_runs} Bytewax runs", flush=True)
    print(f"{c['wrong']} wrong (outcomes or records the contract contradicts), {c['slow']} slow "
          f"(over {SLOW_SECONDS:g} s for one message); {elapsed:.1f} s, {n / elapsed if elapsed else 0:.0f} cases/s",
          flush=True)
    if harness.failures:
        print(f"failures: {sum(c.values())} of {len(harness.kinds)} kinds; the first of each kind:")
        for sig, count in harness.kinds.most_common():
            show(harness.examples[sig], f"{count:5d} x ")
        print(f"the first {min(args.show, len(harness.failures))} failures:")
        for failure in harness.failures[: args.show]:
            show(failure, "  ")
    print(f"{n} cases, {c['escaped']} escaped, {c['unaccounted']} unaccounted", flush=True)
    return 1 if c["escaped"] or c["unaccounted"] or c["wrong"] or c["slow"] else 0


if __name__ == "__main__":
    sys.exit(main())
