#!/usr/bin/env python3
"""Fuzzer for "no message can stop the flow": every input message is accounted for.

Usage::

    python bench/fuzz.py [N] [--seed S] [--profiles default,small-windows,weekly,far-future]
                         [--flow-cases F] [--show K]

Hypothesis generates N messages (default 100000; the same N and seed give the
same messages) in sessions of 40, each under one settings profile
(``PROFILES``): valid events in protobuf or JSON, repeats, empty, odd and
out-of-range values, mutated and random bytes on any topic, deep nesting,
payloads around the size limit, uint32 overflows.

Sections, in order: the contract written down independently of the code
(``FIELDS``, ``expect_of``, ``totals``); payload generators (protobuf and JSON
writers of our own, ``Gen``, ``sessions``); the harness (``Run``,
``through_bytewax``); the report and the command line (``Report``, ``main``).

Nothing of the flow is re-implemented: ``Run`` drives a session through the
real steps as Bytewax calls them, on a simulated wall clock. ``Intake`` -> one
``flows.steps.DriverShardLogic`` per ``shard_of(driver_id)`` (``on_batch``;
``on_notify`` once ``notify_at`` has come; ``snapshot`` each epoch; now and
then a crash, resumed through its builder from the pickled snapshots;
``on_eof``) -> ``stats_encoder`` / ``rejected_encoder``. Each event goes to
``on_batch`` alone, so the step's verdict on it shows: a rejection in its
output, or its own counters (counted, duplicate). ``through_bytewax`` also
sends some sessions (``--flow-cases`` messages, default 400) through
``flows.driver_stats.build_flow`` over Bytewax's TestingSource.

The categories: *escaped*, an exception left the intake, a call of the window
step or an encoder, a last-resort guard caught one, or the Bytewax run
stopped; *unaccounted*, a message neither counted, nor a duplicate of
something counted, nor rejected with a known reason and its bytes, a counted
event without a record, a record without a counted event; *wrong*, the
contract contradicted: not the verdict a planted fault calls for, different
verdicts for the two encodings of an event, record totals other than the sums
of the events counted, an event counted twice...; *slow*, the intake took over
a second for one message. The last line is exactly
``N cases, E escaped, U unaccounted``; the exit code is 1 unless all four
counts are 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import pickle
import re
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache, partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, seed, strategies as st  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

from driver_stats.contract import DriverRated, DriverStats, DriverTipped, FinishReason  # noqa: E402
from driver_stats.contract import JourneyFinished, Rejection, decode_stats  # noqa: E402
from driver_stats.core.intake import Accepted, Intake  # noqa: E402
from driver_stats.core.shards import shard_of  # noqa: E402
from driver_stats.core.stream_clock import StreamClock  # noqa: E402
from driver_stats.settings import Settings, SettingsError  # noqa: E402
from flows import metrics  # noqa: E402
from flows.steps import DriverShardLogic, rejected_encoder, stats_encoder  # noqa: E402

# ---------------------------------------------------------------------------
# The contract, written down here independently of the code under test.

UINT32_MAX, NS = 2**32 - 1, 10**9
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799  # Timestamp: years 0001..9999
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FIELDS = (  # per event type, as in events.proto: (name, number, kind: s string, u uint32, t Timestamp, e enum)
    (("driver_id", 1, "s"), ("rider_id", 2, "s"), ("journey_id", 3, "s"), ("rated_at", 4, "t"), ("rating", 5, "u")),
    (("driver_id", 1, "s"), ("rider_id", 2, "s"), ("journey_id", 3, "s"), ("tipped_at", 4, "t"), ("amount", 5, "u")),
    (("journey_id", 1, "s"), ("driver_id", 2, "s"), ("rider_id", 3, "s"), ("finish_reason", 4, "e"),
     ("started_at", 5, "t"), ("ended_at", 6, "t"), ("distance", 7, "u"), ("price", 8, "u")),
)
TIME_FIELD = ("rated_at", "tipped_at", "ended_at")
REASON_NAMES = ("DROP_OFF", "RIDER_CANCEL", "DRIVER_CANCEL", "ADMIN_CANCEL")
TOTALS = ("total_drop_offs", "total_driver_cancels", "total_distance", "total_price", "total_tips")
REASONS = {"undecodable", "late", "future", "too large", "unknown topic"} | {f"overflow: {t}" for t in TOTALS} | {
    f"invalid: {name}" for fields in FIELDS for name, _, _ in fields}
TIMES_INVALID = ("0000-12-31T23:59:59.999999999Z", "0001-01-01T00:00:00+00:01",  # (after the offset)
                 "10000-01-01T00:00:00Z", "9999-12-31T23:59:59-00:01")  # outside years 0001..9999 in JSON
GUARDS = {"internal error", "unencodable"}  # the flow's last-resort guards caught an exception of ours
PROFILES = {  # legal DRIVER_STATS_* values; each found real bugs
    "default": {},
    "small-windows": {"WINDOW_SECONDS": "10", "ALLOWED_LATENESS_SECONDS": "0", "MAX_MESSAGE_BYTES": "4096",
                      "OUTPUT_FORMAT": "json"},
    "weekly": {"WINDOW_SECONDS": "604800", "ALLOWED_LATENESS_SECONDS": "3600",
               "STATE_RETENTION_SECONDS": "1000000000000"},
    "far-future": {"MAX_FUTURE_SECONDS": "1000000000000", "STATE_RETENTION_SECONDS": "1000000000000"},
}


def time_ok(value) -> bool:
    return value is not None and MIN_SECONDS <= value[0] <= MAX_SECONDS and 0 <= value[1] < NS


def seconds_of(value: datetime) -> int:
    return (value - EPOCH) // timedelta(seconds=1)


def expect_of(spec: dict, now: float, settings: Settings) -> set[str] | None:
    """The intake verdicts the contract allows for ``spec``: {"accept"}, reasons, or None (no opinion)."""
    kind, time_field = spec["type"], TIME_FIELD[spec["type"]]
    faults = {f"invalid: {name}" for name in ("driver_id", "journey_id") if not spec[name]}
    for name, _, of in FIELDS[kind]:
        value = spec[name]
        if (of == "u" and not 0 <= value <= UINT32_MAX) or (of == "t" and not time_ok(value)) or (
                of == "e" and value not in REASON_NAMES and value not in range(4)):
            faults.add(f"invalid: {name}")
    if kind == 0 and not 1 <= spec["rating"] <= 5:
        faults.add("invalid: rating")
    started, ended = spec.get("started_at"), spec.get("ended_at")  # compared in microseconds
    if time_ok(started) and time_ok(ended) and (started[0], started[1] // 1000) > (ended[0], ended[1] // 1000):
        faults.add("invalid: started_at")
    if faults:
        return faults
    window, (seconds, nanos) = settings.window_seconds, spec[time_field]
    ahead = seconds + nanos // 1000 / 1e6 - now
    if abs(ahead - settings.max_future_seconds) < 0.5:
        return None
    verdicts = {"future"} if ahead > settings.max_future_seconds else set()
    if not MIN_SECONDS <= seconds // window * window <= MAX_SECONDS - window:  # its record's bounds are Timestamps
        verdicts.add(f"invalid: {time_field}")
    return verdicts or {"accept"}


def totals(events: list) -> dict:
    """A record's totals: sums over the events counted; the mean rating, 0 without ratings."""
    sums = dict.fromkeys(TOTALS, 0)
    ratings = [event.rating for event in events if type(event) is DriverRated]
    for event in events:
        if type(event) is DriverTipped:
            sums["total_tips"] += event.amount
        elif type(event) is JourneyFinished:
            sums["total_distance"] += event.distance
            sums["total_price"] += event.price
            sums["total_drop_offs"] += event.finish_reason is FinishReason.DROP_OFF
            sums["total_driver_cancels"] += event.finish_reason is FinishReason.DRIVER_CANCEL
    sums["avg_rating"] = sum(ratings) / len(ratings) if ratings else 0.0
    return sums


# ---------------------------------------------------------------------------
# Payload generators: our own protobuf and JSON writers (no project code), and the cases.


def varint(value: int) -> bytes:
    value, out = value & (2**64 - 1), bytearray()  # a negative number in ten bytes, as protobuf writes it
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def pb_bytes(spec: dict) -> bytes:
    """``spec`` in protobuf, default values left out."""
    out = b""
    for name, number, of in FIELDS[spec["type"]]:
        value = spec[name]
        if of == "s" and value:
            data = value.encode("utf-8", "surrogatepass")
            out += tag(number, 2) + varint(len(data)) + data
        elif of in ("u", "e") and value:
            out += tag(number, 0) + varint(value)
        elif of == "t" and value is not None:
            body = b"".join(tag(i, 0) + varint(part) for i, part in enumerate(value, 1) if part)
            out += tag(number, 2) + varint(len(body)) + body
    return out


def json_bytes(spec: dict, ensure_ascii=True, numbers=False, offsets=None, raw=None, extra=()) -> bytes:
    """``spec`` in proto3 JSON: enums by name (by number with ``numbers``), times in UTC ``offsets``
    (minutes), ``raw`` tokens in place of values, ``extra`` members; default values left out."""
    items = []
    for name, _, of in FIELDS[spec["type"]]:
        value, token, offset = spec[name], (raw or {}).get(name), (offsets or {}).get(name, 0)
        if token is None and value not in ("", 0, None):
            if of == "t" and not time_ok(value):  # out of range: one such text, before year 1 or after 9999
                token = json.dumps(TIMES_INVALID[2 * (value[0] > 0) + value[0] % 2])
            elif of == "t":
                local = (EPOCH + timedelta(seconds=value[0] + offset * 60)).replace(tzinfo=None)
                zone = f"{'+-'[offset < 0]}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}" if offset else "Z"
                token = f'"{local.isoformat()}{f".{value[1]:09d}".rstrip("0") if value[1] else ""}{zone}"'
            elif of == "e" and not isinstance(value, str) and not numbers and value in range(4):
                token = json.dumps(REASON_NAMES[value])
            else:
                token = json.dumps(value, ensure_ascii=ensure_ascii) if isinstance(value, str) else str(value)
        if token is not None:
            items.append((name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:]), token))
    return ("{" + ",".join(f'"{k}":{v}' for k, v in items + list(extra)) + "}").encode("utf-8", "surrogatepass")


def shard_mates(driver: str, count: int) -> tuple[str, ...]:
    """Driver ids in the shard of ``driver``, so that one DriverShard holds several drivers."""
    names = (f"{driver}-mate-{i}" for i in itertools.count())
    return tuple(itertools.islice((name for name in names if shard_of(name) == shard_of(driver)), count))


DRIVERS = ("d1", "d2", "d3", "driver-\u00e9\u4e2d", "d" * 300) + shard_mates("d1", 2)
NEWCOMERS = shard_mates("d2", 16)  # drivers first seen late in a session, in a shard d2 may have left
JOURNEYS, RIDERS = ("j1", "j2", "j3", "j4", "j5", "j6", "journey-\U0001f695"), ("", "r1", "rider-\u03b2")
AMOUNTS = st.one_of(st.integers(0, 5000), st.sampled_from([0, UINT32_MAX, 2**31]), st.integers(0, UINT32_MAX))
BIG_AMOUNTS = st.one_of(st.sampled_from([UINT32_MAX, 2**31, 2**31 + 1]), st.integers(2**31, UINT32_MAX))
EXTREMES = {  # per kind: (values protobuf carries, values JSON carries); protobuf keeps 32 bits of a uint32
    "s": (("", "\x00", "x" * 1000),) * 2,
    "u": ((2**32, 2**64 - 1, -1, UINT32_MAX), (-1, -(2**31), -(2**63), 2**32, 2**63, 10**30, UINT32_MAX)),
    "e": ((4, 100, -1, 2**31 - 1, -(2**31)), ("FOO", "drop_off", "DROP_OFF ", 4, -1, 2**31 - 1, 1, 2, 3)),
    "t": (((MIN_SECONDS - 1, 0), (MAX_SECONDS + 1, 0), (2**62, 0), (MAX_SECONDS, NS), (1_704_110_000, -1), (0, 0)),
          ((MIN_SECONDS, 0), (MAX_SECONDS, 999_999_999), (0, 1000), (MIN_SECONDS - 1, 0), (MAX_SECONDS + 1, 0))),
}
ODD_TOKENS = {  # JSON hardly or not at all of the field's type: no expectation
    "u": ("1.5", "5.0", "1e3", "-0", "1E400", '"5"', '""', "null", "true", "[5]", "{}", "NaN", "05", "1" * 400),
    "e": ("4294967296", "1.0", '"1"', "null", "[0]", "true"),
    "t": ('"2024-02-30T00:00:00Z"', '"2024-01-01T24:00:00Z"', '"2024-01-01T23:59:60Z"', '"2024-01-01"', '"now"',
          '"2024-01-01T12:00:00"', '"2024-01-01T12:00:00.1234567891Z"', '"2024-01-01T12:00:00+24:00"', '""',
          '"\u0662\u0660\u0662\u0664-01-01T12:00:00Z"', "0", "1704110400", "null", "[]"),
    "s": ("1", "null", '"\\ud800"', "[]"),
}
WIRE_JUNK = (tag(5, 2) + b"\x01x", tag(5, 5) + b"\0" * 4, tag(4, 3), tag(99, 0) + varint(2**63),
             tag(15, 2) + varint(300) + b"\0" * 300, tag(1, 2) + b"\x02\xff\xfe", tag(536_870_911, 5) + b"abcd")
KINDS = ("valid",) * 30 + ("repeat",) * 10 + ("odd_value",) * 25 + ("mutated",) * 14 + ("random",) * 8 + (
    "deep",) * 5 + ("huge",) * 3 + ("overflow",) * 7


@dataclass
class Case:
    topic: str
    payload: bytes
    kind: str
    expect: set[str] | None = None  # the intake verdicts the contract allows; None: no opinion
    twin: bytes | None = None  # the same event in the other encoding: the same verdict


@dataclass
class Batch:
    wall: float  # the wall clock while the batch is processed
    restart: bool  # a crash before it: the window step resumes from its snapshots
    cases: list[Case]


@lru_cache(maxsize=None)
def integers(low: int, high: int) -> st.SearchStrategy:
    return st.integers(low, high)


class Gen:
    """Draws one session's cases around its wall clock ``now``; keeps what it sent, to repeat it."""

    def __init__(self, draw, settings: Settings, now: float):
        self.draw, self.settings, self.now, self.topics = draw, settings, now, settings.input_topics
        self.sent: list[tuple[dict, bytes]] = []
        self.newcomers = 0

    def int(self, low: int, high: int) -> int:
        return self.draw(integers(low, high))

    def pick(self, values):
        return values[self.int(0, len(values) - 1)]

    def chance(self, n: int) -> bool:  # one in n
        return self.int(1, n) == 1

    def spec(self, kind: int | None = None) -> dict:
        """A valid event, mostly of a few drivers (so that events meet) and near the wall clock."""
        kind, window = self.int(0, 2) if kind is None else kind, self.settings.window_seconds
        if self.chance(5):  # the first instants of year 1, the last of 9999, 1970, the far past, after 2106
            anchor = self.pick((MIN_SECONDS, MAX_SECONDS, 0, -6 * 10**10, 2**32))
            when = divmod(anchor * NS + self.pick((0, 999_999_999, -1000, -600 * NS, window * NS - 1000)), NS)
        else:  # in the last few intervals, often on a boundary
            micros = self.pick((0, 1, window * 10**6 - 1, self.int(0, window * 10**6 - 1)))
            when = ((int(self.now) // window + self.int(-3, 1)) * window + micros // 10**6,
                    micros % 10**6 * 1000 + self.pick((0, 0, 1, 999)))
        driver = self.pick(DRIVERS)
        if self.chance(8):  # a driver first seen now, half of them in a shard with others
            self.newcomers += 1
            driver = NEWCOMERS[self.newcomers % len(NEWCOMERS)] if self.chance(2) else f"new-{self.newcomers}"
        spec = {"type": kind, "driver_id": driver, "rider_id": self.pick(RIDERS), "journey_id": self.pick(JOURNEYS),
                TIME_FIELD[kind]: when}
        if kind == 0:
            spec["rating"] = self.int(1, 5)
        elif kind == 1:
            spec["amount"] = self.draw(AMOUNTS)
        else:  # producers fill distance and price for DROP_OFF only
            reason, took = self.int(0, 3), self.pick((0, 1000, 60 * NS, 86_400 * NS))
            filled = reason == 0 or self.chance(5)
            started = divmod(max(when[0] * NS + when[1] - took, MIN_SECONDS * NS), NS)
            spec.update(finish_reason=reason, started_at=started,
                        distance=self.draw(AMOUNTS) if filled else 0, price=self.draw(AMOUNTS) if filled else 0)
        return spec

    def encode(self, spec: dict, kind: str, as_json: bool | None = None, style: dict | None = None) -> Case:
        """``spec`` as a case in either encoding (JSON in a drawn ``style``), with expectation and twin."""
        as_json = self.chance(2) if as_json is None else as_json
        if as_json and style is None:  # escapes, enum numbers, UTC offsets within years 0001..9999
            offsets = {n: self.pick((0, 60, -330, 840, -1439)) for n, _, of in FIELDS[spec["type"]] if of == "t"}
            offsets = {n: o for n, o in offsets.items() if time_ok(spec[n]) and time_ok((spec[n][0] + o * 60, 0))}
            extra = [("unknownField", "[{}]")] if self.chance(9) else []
            style = {"ensure_ascii": self.chance(2), "numbers": self.chance(3), "offsets": offsets, "extra": extra}
        payload = json_bytes(spec, **style) if as_json else pb_bytes(spec)
        both = all((of != "u" or 0 <= spec[n] <= UINT32_MAX) and (of != "e" or spec[n] in range(4)) and (
            of != "t" or spec[n] is None or time_ok(spec[n])) for n, _, of in FIELDS[spec["type"]])
        twin = (pb_bytes(spec) if as_json else json_bytes(spec)) if both and not (style or {}).get("raw") else None
        return Case(self.topics[spec["type"]], payload, kind, expect_of(spec, self.now, self.settings), twin)

    def valid(self) -> Case:
        spec = self.spec()
        case = self.encode(spec, "valid")
        self.sent.append((spec, case.payload))
        return case

    def repeat(self) -> Case:
        """An event sent before: the very same bytes, encoded again, or another event with its identity."""
        if not self.sent:
            return self.valid()
        (spec, payload), how = self.pick(self.sent), self.int(0, 2)
        if how == 0:
            return Case(self.topics[spec["type"]], payload, "repeat-same-bytes")
        other = dict(self.spec(spec["type"]), journey_id=spec["journey_id"], driver_id=spec["driver_id"])
        return self.encode(spec, "repeat-encoded-again") if how == 1 else self.encode(other, "repeat-other-content")

    def odd_value(self) -> Case:
        """A valid event with one value empty, out of range, at an edge, or (in JSON) of another type."""
        spec, as_json = self.spec(), self.chance(2)
        name, _, of = self.pick(FIELDS[spec["type"]])
        style = {"ensure_ascii": self.chance(2), "numbers": self.chance(2)} if as_json else None
        if as_json and self.chance(3):
            payload = json_bytes(spec, raw={name: self.pick(ODD_TOKENS[of])})
            return Case(self.topics[spec["type"]], payload, "json-odd-value")
        spec[name] = self.pick(EXTREMES[of][as_json])
        case = self.encode(spec, f"{'json' if as_json else 'protobuf'}-{of}-value", as_json, style)
        case.expect = None if of == "u" and not as_json else case.expect  # protobuf keeps 32 bits of it
        return case

    def overflow(self) -> Case:
        """A tip, or a drop-off's distance or price, that a few more overflow as a uint32 total; or, in
        JSON, one out of range on its own (often the first event of its interval)."""
        spec = self.spec(self.pick((1, 2, 2)))
        name = "amount" if spec["type"] == 1 else self.pick(("distance", "price"))
        if spec["type"] == 2:
            spec["finish_reason"] = 0
        if self.chance(4):
            spec[name] = self.pick((2**32, 2**32 + 1, 2**63, -1, -(2**31)))
            return self.encode(spec, "out-of-range-alone", as_json=True)
        spec[name] = self.draw(BIG_AMOUNTS)
        return self.encode(spec, "overflow")

    def mutated(self) -> Case:
        """A valid payload truncated, bit-flipped, grown, cut, spliced with another, or with wire junk."""
        case = self.encode(self.spec(), "mutated")
        data = bytearray(case.payload)
        for _ in range(self.int(1, 3)):
            at, how = self.int(0, max(0, len(data) - 1)), self.int(0, 4)
            if how == 0:
                del data[at:at + self.pick((1, 8, len(data)))]
            elif how == 1 and data:
                data[at] ^= 1 << self.int(0, 7)
            elif how == 2:
                data[at:at] = self.draw(st.binary(min_size=1, max_size=6))
            elif how == 3:
                other = self.pick(self.sent)[1] if self.sent else bytes(data)
                data[at:] = other[self.int(0, max(0, len(other) - 1)):]
            else:
                data += self.pick(WIRE_JUNK)
        return Case(case.topic, bytes(data), "mutated")

    def random(self) -> Case:
        """Random bytes, or an event sent before, on an input topic or on one that is none."""
        payload = self.pick(self.sent)[1] if self.sent and self.chance(2) else self.draw(st.binary(max_size=64))
        topic = self.pick(self.topics + ("input/unknown", "output/driver_stats", "", self.topics[0] + "/"))
        return Case(topic, payload, "random", None if topic in self.topics else {"unknown topic"})

    def deep(self) -> Case:
        """JSON nested thousands deep, crafted JSON up to the size limit, nested groups in protobuf."""
        spec, how = self.spec(), self.int(0, 3)
        topic, depth = self.topics[spec["type"]], self.pick((33, 100, 1000, 5000, 30_000, 200_000))
        if how == 0:  # shapes that make a naive scanner quadratic
            head = self.pick((b"{" * 33, b'{"x":' + b"[" * 40, b'{"driverId":'))
            unit = self.pick((b'\\"', b'"\\', b'"[', b'["', b"\\u", b'"x",', b'{"a":"', b"\\\\"))
            size = self.settings.max_message_bytes - len(head) - self.pick((0, 1, 100))
            return Case(topic, head + unit * max(1, size // len(unit)), "crafted-json")
        if how == 1:
            return Case(topic, pb_bytes(spec) + tag(99, 3) * depth + tag(99, 4) * depth, "deep-protobuf")
        inner = "[" * depth + self.pick(("1", '{"a":', "")) + "]" * depth
        deep = {"raw": {self.pick(FIELDS[spec["type"]])[0]: inner}} if how == 2 else {"extra": [("deep", inner)]}
        return Case(topic, json_bytes(spec, **deep), "deep-json")

    def huge(self) -> Case:
        """A valid event whose rider_id makes it about ``max_message_bytes`` long."""
        spec, limit, as_json = self.spec(), self.settings.max_message_bytes, self.chance(2)
        target = limit + self.pick((1, 2, 1000, 100_000, 0, -1))
        while len(payload := json_bytes(spec) if as_json else pb_bytes(spec)) < target:
            spec["rider_id"] += "x" * (target - len(payload))
        expect = {"too large"} if len(payload) > limit else expect_of(spec, self.now, self.settings)
        return Case(self.topics[spec["type"]], payload, "huge", expect)


@st.composite
def sessions(draw, profiles: list[tuple[str, Settings]]) -> tuple[int, list[Batch]]:
    """40 cases in batches, under one profile (the first one half of the time), on an advancing clock."""
    profile = draw(st.sampled_from((0, 0, 0, 1, 2, 3))) % len(profiles)
    start = 1_704_110_400 + draw(st.integers(0, 86_400)) + draw(st.sampled_from((0, 0.5)))  # 2024-01-01 or 02
    gen = Gen(draw, profiles[profile][1], start)
    batches = []
    while (left := 40 - sum(len(batch.cases) for batch in batches)) > 0:
        cases = [getattr(gen, gen.pick(KINDS))() for _ in range(min(left, draw(st.integers(1, 12))))]
        batches.append(Batch(gen.now, draw(st.integers(0, 7)) == 0, cases))
        gen.now += draw(st.sampled_from((0, 0, 0, 0.5, 1, 5, 29, 31, 300, 601, 3600, 7200)))
    return profile, batches


# ---------------------------------------------------------------------------
# The harness: each session through the real steps, checked against the contract.


def tally() -> tuple[float, float]:
    """The window step's own counters, events counted and duplicates: its verdict on one event."""
    return tuple(counter.collect()[0].samples[0].value for counter in (metrics.EVENTS_ACCEPTED, metrics.DUPLICATES))


def record_problems(stats: DriverStats, events: list, window: int, payload: bytes | None) -> list[str]:
    """What contradicts the contract in a record of the counted ``events``, published as ``payload``."""
    want = totals(events)
    wrong = [f"{name} {getattr(stats, name)}, expected {want[name]}" for name in TOTALS
             if getattr(stats, name) != want[name]]
    if struct.pack("<f", stats.avg_rating) != struct.pack("<f", want["avg_rating"]):
        wrong.append(f"avg_rating {stats.avg_rating}, expected the float32 of {want['avg_rating']}")
    if seconds_of(stats.interval_end) - seconds_of(stats.interval_start) != window:
        wrong.append(f"the interval is not {window} s long")
    try:
        if not wrong and payload is not None and decode_stats(payload) != stats:
            wrong.append(f"its encoding decodes to {decode_stats(payload)!r:.200}")
    except Exception as err:  # noqa: BLE001
        wrong.append(f"its encoding does not decode: {type(err).__name__}: {err}")
    return wrong


class Run:
    """One session: Intake -> a DriverShardLogic per shard key -> encoders, called as Bytewax calls them."""

    def __init__(self, report: Report, profile: tuple[str, Settings]):
        name, self.settings = profile
        self.fail, self.outcomes, self.now = partial(report.fail, name), report.outcomes, 0.0
        self.intake, self.window = Intake(self.settings), self.settings.window_seconds
        self.build = DriverShardLogic.builder(self.settings, self.settings.allowed_lateness_seconds,
                                              self.settings.state_retention_seconds, StreamClock(self.stream_time))
        self.encode_stats, self.encode_rejected = stats_encoder(self.settings), rejected_encoder(self.settings)
        self.shards, self.wake, self.saved = {}, {}, {}  # shard key -> its logic, its notify_at, its snapshot
        self.broken, self.last = set(), {}  # shards an exception left (reported once); their last case
        self.counted: dict[tuple, list] = {}  # (driver, interval start) -> [(case, event)] with no record yet
        self.open_ids, self.ids = set(), set()  # (type, driver, journey_id) in open intervals; ever counted

    def stream_time(self) -> float:
        # The live flow's stream time trails the wall clock (the producers'
        # lag, the epochs before a watermark is published): three intervals here,
        # so most events land in open intervals and some in closed ones.
        return self.now - 3 * self.window

    def run(self, batches: list[Batch]) -> None:
        for batch in batches:
            self.now = batch.wall
            if batch.restart:  # a crash: each shard comes back through the builder from its last snapshot
                self.shards, self.wake = {}, {}
                for key, state in list(self.saved.items()):
                    try:
                        self.shards[key] = self.build(pickle.loads(state))
                        self.wake[key] = self.shards[key].notify_at()
                    except Exception as err:  # noqa: BLE001
                        self.lose(key, None, f"resuming from a snapshot raised {type(err).__name__}: {str(err)[:120]}")
            for key, at in list(self.wake.items()):  # Bytewax wakes the shards whose time has come
                if at is not None and at.timestamp() <= self.now:
                    self.records(key, self.step(key, None, "on_notify"))
            for case in batch.cases:
                self.message(case)
            for key, logic in list(self.shards.items()):  # the epoch ends: snapshots for the recovery store
                try:
                    self.saved[key] = pickle.dumps(logic.snapshot())
                except Exception as err:  # noqa: BLE001
                    self.lose(key, None, f"snapshot raised {type(err).__name__}: {str(err)[:120]}")
        for key in list(self.shards):  # the end of the input
            self.records(key, self.step(key, None, "on_eof"))
        for (driver, start), events in self.counted.items():
            if shard_of(driver) not in self.broken:
                self.fail("unaccounted", events[0][0], f"counted in driver {driver[:20]!r}'s interval {start}, "
                                                       "but no record came out for it")

    def step(self, key: str, case: Case | None, method: str, *args) -> list:
        """The shard's ``method``, then its notify_at, as Bytewax calls them; [] if an exception escaped."""
        what = method
        try:
            logic = self.shards[key] if key in self.shards else self.shards.setdefault(key, self.build(None))
            items, discard = getattr(logic, method)(*args)
            items, what = list(items), "notify_at"
            at = logic.notify_at()
            if at is not None and (type(at) is not datetime or at.tzinfo is None):
                raise TypeError(f"not an aware datetime: {at!r}")
        except Exception as err:  # noqa: BLE001 - the point of the fuzzer
            self.lose(key, case, f"{what} raised {type(err).__name__}: {str(err)[:120]}")
            return []
        self.wake[key] = at
        for held in (self.shards, self.wake, self.saved) if discard else ():  # Bytewax drops the state
            held.pop(key, None)
        return items

    def lose(self, key: str, case: Case | None, what: str) -> None:
        self.broken.add(key)
        for held in (self.shards, self.wake, self.saved):
            held.pop(key, None)
        self.fail("escaped", case or self.last.get(key), what)

    def message(self, case: Case) -> None:
        """A message through the intake, its verdict checked; then rejected, or on to the window step."""
        started = time.perf_counter()
        try:
            result = self.intake(case.topic, case.payload, self.now)
        except Exception as err:  # noqa: BLE001
            return self.fail("escaped", case, f"intake raised {type(err).__name__}: {str(err)[:120]}")
        if time.perf_counter() - started > 1.0:  # the worker holds the GIL meanwhile: every driver waits
            self.fail("slow", case, f"the intake took {time.perf_counter() - started:.1f} s for one message")
        if type(result) not in (Accepted, Rejection):
            return self.fail("unaccounted", case, f"intake returned {type(result).__name__}")
        verdict = str(result.reason) if type(result) is Rejection else "accept"
        if case.expect is not None and verdict not in case.expect:
            said = "accepted" if verdict == "accept" else f"rejected {verdict!r} ({result.detail[:80]})"
            self.fail("wrong", case, f"{said}, expected {sorted(case.expect)}")
        if case.twin is not None:
            try:
                other = self.intake(case.topic, case.twin, self.now)
            except Exception as err:  # noqa: BLE001
                return self.fail("escaped", Case(case.topic, case.twin, "twin"), f"intake raised {type(err).__name__}")
            mine, its = (str(r.reason) if type(r) is Rejection else f"accepted as {r.event!r:.120}"
                         for r in (result, other))
            if mine != its:
                self.fail("wrong", case, f"{mine}, the same event in the other encoding {its}: {case.twin[:100]!r}")
        self.reject(case, result) if type(result) is Rejection else self.window_step(case, result)

    def reject(self, case: Case, rejection: Rejection) -> None:
        reason = str(rejection.reason)
        self.outcomes[reason] += 1
        if reason in GUARDS:
            self.fail("escaped", case, f"caught by a last-resort guard: {reason} ({rejection.detail[:120]})")
        elif reason not in REASONS:
            self.fail("unaccounted", case, f"rejected with the unknown reason {reason!r}")
        try:
            message = self.encode_rejected(rejection)
        except Exception as err:  # noqa: BLE001
            return self.fail("escaped", case, f"rejected_encoder raised {type(err).__name__}: {str(err)[:120]}")
        got = (message.topic, message.payload, message.user_property("reason"))
        if got != (self.settings.rejected_prefix + case.topic, case.payload, reason):
            self.fail("unaccounted", case, f"not the original bytes on rejected/<topic> with the reason: {got!r:.160}")

    def window_step(self, case: Case, accepted: Accepted) -> None:
        """The event alone through its shard's on_batch: its verdict, then the records that came out."""
        event, key = accepted.event, shard_of(accepted.event.driver_id)
        if key in self.broken:
            return
        self.last[key], before = case, tally()
        out = self.step(key, case, "on_batch", [accepted])
        if key in self.broken:
            return
        counted, duplicates = (after - was for after, was in zip(tally(), before))
        rejections = [item for item in out if type(item) is Rejection]
        interval = (event.driver_id, seconds_of(event.event_time) // self.window * self.window)
        ident = (type(event).__name__, event.driver_id, event.journey_id)
        verdict = (len(rejections), counted, duplicates)
        if verdict == (1, 0, 0):
            self.reject(case, rejections[0])
            total = rejections[0].reason.partition("overflow: ")[2]
            if total and totals([e for _, e in self.counted.get(interval, [])] + [event])[total] <= UINT32_MAX:
                self.fail("wrong", case, f"rejected {str(rejections[0].reason)!r}, but the sum fits in a uint32")
        elif verdict == (0, 1, 0):
            self.outcomes["counted"] += 1
            if ident in self.open_ids:
                self.fail("wrong", case, f"counted twice: {ident[0]} {ident[2]!r} is counted in an open interval")
            self.open_ids.add(ident), self.ids.add(ident)
            self.counted.setdefault(interval, []).append((case, event))
        elif verdict == (0, 0, 1):
            self.outcomes["duplicate"] += 1
            if ident not in self.ids:
                self.fail("unaccounted", case, "dropped as a duplicate, but nothing with its identity was counted")
        else:
            self.fail("unaccounted", case, f"the window step answered one event with {len(rejections)} rejections, "
                                           f"{counted:g} counted, {duplicates:g} duplicates")
        self.records(key, out)

    def records(self, key: str, items: list) -> None:
        """Each record out of the window step: encoded, matched with the events counted in its interval."""
        for stats in (item for item in items if type(item) is not Rejection):
            if type(stats) is not DriverStats:
                self.fail("unaccounted", self.last.get(key), f"the window step returned {stats!r:.100}")
                continue
            interval = (stats.driver_id, seconds_of(stats.interval_start))
            events = [event for _, event in self.counted.get(interval, [])]
            case = self.counted.pop(interval, [(self.last.get(key), None)])[0][0]
            try:
                message = self.encode_stats(stats)
            except Exception as err:  # noqa: BLE001
                self.fail("escaped", case, f"stats_encoder raised {type(err).__name__}: {str(err)[:120]}")
                continue
            guarded = message.user_property("reason")  # the encoder's last-resort guard caught an exception
            if guarded:
                self.fail("escaped", case, f"encoding {stats!r:.160} raised {message.user_property('detail')}")
            if not events:
                self.fail("unaccounted", case, f"record for driver {stats.driver_id[:20]!r} interval "
                                               f"{stats.interval_start.isoformat()} that got no accepted event")
                continue
            self.open_ids.difference_update((type(e).__name__, e.driver_id, e.journey_id) for e in events)
            wrong = record_problems(stats, events, self.window, None if guarded else message.payload)
            if wrong:
                self.fail("wrong", case, f"record {stats.driver_id[:20]!r} {stats.interval_start}: {'; '.join(wrong)}")


def through_bytewax(report: Report, profile: tuple[str, Settings], cases: list[Case], wall: float) -> None:
    """The cases through build_flow over Bytewax's TestingSource, the clock frozen at ``wall``.

    How Bytewax batches a driver's events and when it notifies may decide whether a repeat is a
    duplicate or late, so its output is checked on what holds under any schedule: it runs to the end,
    no guard is at work, every message is published rejected (unchanged, with a known reason) or is
    counted or a duplicate (the window step's counters), and no interval has two records.
    """
    from bytewax.testing import TestingSink, TestingSource, run_main

    from connectors.mqtt import MQTTMessage
    from flows.driver_stats import build_flow

    (name, settings), out, before = profile, [], tally()
    source = TestingSource([MQTTMessage(case.topic, case.payload) for case in cases], batch_size=7)
    try:
        run_main(build_flow(settings, source, TestingSink(out), clock=lambda: wall))
    except Exception as err:  # noqa: BLE001
        return report.fail(name, "escaped", None, f"the Bytewax run stopped: {type(err).__name__}: {str(err)[-160:]}")
    counted, duplicates = (after - was for after, was in zip(tally(), before))
    sent = Counter((settings.rejected_prefix + case.topic, case.payload) for case in cases)
    rejected = Counter((m.topic, m.payload) for _, m in out if m.topic != settings.topic_driver_stats)
    records = Counter(decode_stats(m.payload).interval_start.isoformat() + " of " + decode_stats(m.payload).driver_id
                      for _, m in out if m.topic == settings.topic_driver_stats)
    for _, message in out:
        if message.user_property("reason") in GUARDS or (message.topic in rejected and
                                                          message.user_property("reason") not in REASONS):
            report.fail(name, "escaped" if message.user_property("reason") in GUARDS else "unaccounted",
                        Case(message.topic, message.payload, "flow"), f"the dataflow published it with reason "
                        f"{message.user_property('reason')!r} ({(message.user_property('detail') or '')[:120]})")
    problems = [f"{sum((rejected - sent).values())} rejected messages that were not sent"] * bool(rejected - sent)
    if len(cases) != sum(rejected.values()) + counted + duplicates:
        problems.append(f"{len(cases)} messages, but {sum(rejected.values())} rejected + {counted:g} counted "
                        f"+ {duplicates:g} duplicates")
    problems += [f"{count} records for the interval {interval}" for interval, count in records.items() if count > 1]
    for problem in problems:
        report.fail(name, "unaccounted", Case("", b"", "flow"), f"the dataflow: {problem}")


# ---------------------------------------------------------------------------
# The report and the command line.


class Report:
    """Failures counted by category and grouped by kind (the message without its numbers and quotes)."""

    def __init__(self):
        self.counts, self.kinds, self.outcomes, self.examples, self.failures = Counter(), Counter(), Counter(), {}, []

    def fail(self, profile: str, category: str, case: Case | None, what: str) -> None:
        failure = (category, profile, case or Case("", b"", ""), what)
        kind = f"[{category}] {profile}: " + re.sub(r"'[^']*'|\"[^\"]*\"|-?\d[\d.:+eE-]*", "#", what)[:110]
        self.counts[category] += 1
        self.kinds[kind] += 1
        self.examples.setdefault(kind, failure)
        self.failures += [failure] if len(self.failures) < 100 else []

    def show(self, failure: tuple, lead: str) -> None:
        category, profile, case, what = failure
        print(f"{lead}[{category}] {case.kind} on {case.topic!r} ({profile}): {what[:300]}")
        print(f"{' ' * len(lead)}    payload ({len(case.payload)} bytes): {case.payload[:160]!r}")

    def print(self, n: int, flow_done: int, elapsed: float, show: int) -> int:
        counts = self.counts
        print("outcomes: " + ", ".join(f"{outcome} {count}" for outcome, count in self.outcomes.most_common(12)))
        print(f"dataflow: {flow_done} of the cases through build_flow as well")
        print(f"{counts['wrong']} wrong (the contract contradicted), {counts['slow']} slow (over 1 s for one message);"
              f" {elapsed:.1f} s, {n / max(elapsed, 1e-9):.0f} cases/s")
        if self.failures:
            print(f"failures: {sum(counts.values())} of {len(self.kinds)} kinds; the first of each kind:")
            for kind, count in self.kinds.most_common():
                self.show(self.examples[kind], f"{count:5d} x ")
            print(f"the first {min(show, len(self.failures))} failures:")
            for failure in self.failures[:show]:
                self.show(failure, "  ")
        print(f"{n} cases, {counts['escaped']} escaped, {counts['unaccounted']} unaccounted", flush=True)
        return 1 if any(counts.values()) else 0


def legal_profiles(names: list[str]) -> list[tuple[str, Settings]]:
    """The profiles asked for, as Settings; one the settings refuse today is skipped."""
    profiles, known = [], {name.upper() for name in Settings.__struct_fields__}
    for name in (name for name in PROFILES if name in names):
        try:
            profiles.append((name, Settings.from_env({f"DRIVER_STATS_{k}": v for k, v in PROFILES[name].items()
                                                      if k in known})))
        except SettingsError as err:
            print(f"profile {name} skipped: not a legal setting any more ({err})")
    return profiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="?", type=int, default=100_000, help="messages (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    parser.add_argument("--flow-cases", type=int, default=400, help="messages also run through build_flow (400)")
    parser.add_argument("--show", type=int, default=8, help="failures to print in full (default 8)")
    parser.add_argument("--profiles", default=",".join(PROFILES), help=f"some of {', '.join(PROFILES)} (all)")
    args = parser.parse_args(argv)
    n, names, report = max(0, args.cases), args.profiles.split(","), Report()
    if set(names) - set(PROFILES):
        parser.error(f"unknown profile {', '.join(sorted(set(names) - set(PROFILES)))}")
    profiles = legal_profiles(names)
    if not profiles:  # the settings refuse every profile asked for: nothing to fuzz, nothing failed
        print(f"{n} cases, 0 escaped, 0 unaccounted (no legal profile among {args.profiles})")
        return 0
    logging.getLogger("driver_stats").setLevel(logging.CRITICAL)  # the guards log what the report shows
    flow_every = max(1, math.ceil(n / 40) // max(1, math.ceil(min(args.flow_cases, n) / 40)))  # in sessions
    done, flow_done, sessions_run, started = 0, 0, 0, time.monotonic()
    print(f"fuzzing {n} messages, seed {args.seed}, profiles {', '.join(p for p, _ in profiles)}", flush=True)
    for round_ in itertools.count():  # a round ends early when Hypothesis drops sessions it overran
        if done >= n:
            break

        @hypothesis_settings(max_examples=math.ceil((n - done) / 40), database=None, deadline=None,
                             phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @seed(args.seed * 1000 + round_)
        @given(sessions(profiles))
        def drive(session: tuple[int, list[Batch]]) -> None:
            nonlocal done, flow_done, sessions_run
            batches, left = [], n - done
            for batch in session[1]:  # the last session may be cut short
                batches += [Batch(batch.wall, batch.restart, batch.cases[:left])] if left > 0 else []
                left -= len(batch.cases)
            if not batches:
                return
            Run(report, profiles[session[0]]).run(batches)
            taken = sum(len(batch.cases) for batch in batches)
            if flow_done < args.flow_cases and sessions_run % flow_every == 0:
                through_bytewax(report, profiles[session[0]], [c for b in batches for c in b.cases], batches[0].wall)
                flow_done += taken
            done, sessions_run = done + taken, sessions_run + 1
            if done * 10 // n != (done - taken) * 10 // n:
                print(f"  {done}/{n} cases: " + ", ".join(f"{report.counts[c]} {c}" for c in (
                    "escaped", "unaccounted", "wrong", "slow")) + f" ({time.monotonic() - started:.0f} s)", flush=True)

        drive()
    return report.print(n, flow_done, time.monotonic() - started, args.show)


if __name__ == "__main__":
    sys.exit(main())
