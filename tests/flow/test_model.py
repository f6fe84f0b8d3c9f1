"""Model-based test: generated event sequences through the real dataflow against a reference.

Hypothesis generates sequences of valid events of the three types: a few
drivers, a handful of journeys (so the same type + journey_id comes again,
as the very same bytes, re-encoded in the other format, or with other
content), times often exactly on interval boundaries or a microsecond before
one, all four finish reasons, ratings 1..5, protobuf and JSON payloads. They
go through ``flows.driver_stats.build_flow`` over Bytewax's ``TestingSource``
with a wall clock that stands still, and every published record is compared
with a reference written here from ../shared/CONTRACT.md, not from the code:

* an event counts in the interval ``[a, b)`` holding its event time, a a
  multiple of the window since the epoch;
* an event is (message type, journey_id): the first occurrence counts, later
  ones are duplicates (not counted, not rejected);
* per driver and interval: drop-offs, driver cancels, distance and price of
  every journey that ended there, tips, and the mean rating rounded to a
  protobuf float, written as its shortest decimal (the codec's ``float32``)
  in protobuf and JSON output alike (0 without ratings);
* one record per driver and interval with at least one counted event, no
  other record, no rejection (every event here is valid and on time).

Lateness is kept out of the order, never guessed: either every event arrives
within the allowed lateness of the newest event sent before it (so none can
be late), or the input is complete (``complete_input=True``) and arrives in
any order.

The third property reads a publish order of the first kind the way the live
input does. Each driver's events come through one of 1..4 input partitions
(drawn per driver, as a driver's shard topic is read by one partition), in
publish order; the partitions take turns at random, each delivering a run of
its queue, so any of them can fall behind the others (delivery delays). The
stream time is the input's low watermark, gated as the live flow gates it:
before each batch, the lowest over partitions of the newest event time each
one delivered in earlier batches. Neither may change anything: the records
equal the reference's for the publish order, and nothing is rejected.

Examples: 250 per property by default (200 for the partition property, to
keep the suite's time), the same every run (the suite); set
``DRIVER_STATS_MODEL_EXAMPLES=3000`` for a long run (random, not
derandomized; with ``--timeout=0``, as it outlasts pytest-timeout's 300 s).

Two counterexamples Hypothesis found are kept as explicit tests at the end:
a repeat with other content in a later interval once the original's
interval has closed (fixed: dedupe keys now outlive their interval by the
state retention), and the same identity under two drivers (a known gap,
marked xfail: dedupe is per driver). The generator keeps a journey's driver
so that the properties keep looking for anything else.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.mqtt import MQTTMessage
from driver_stats.contract import (
    DriverRated,
    DriverTipped,
    FinishReason,
    JourneyFinished,
    decode_stats,
    encode_event,
    float32,
    to_json,
)
from driver_stats.core.stream_clock import StreamClock
from driver_stats.settings import Settings
from flows.driver_stats import build_flow

LONG_RUN = int(os.environ.get("DRIVER_STATS_MODEL_EXAMPLES", "0"))
settings.register_profile(
    "driver-stats-model",
    max_examples=LONG_RUN or 250,
    derandomize=not LONG_RUN,  # the suite sees the same examples every run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MODEL = settings.get_profile("driver-stats-model")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
T0 = datetime(2024, 1, 1, 12, tzinfo=timezone.utc)  # a multiple of the window
WINDOW = 10  # seconds
US = 1_000_000
TOPICS = {"rated": "input/driver_rated", "tipped": "input/driver_tipped", "finished": "input/journey_finished"}
REASONS = list(FinishReason)
STATS = "output/driver_stats"


@dataclass(frozen=True)
class Ev:
    """One generated event; times are integer microseconds since the epoch."""

    kind: str
    driver: str
    journey: str
    time_us: int
    value: int = 0  # rating (1..5) or tip amount
    reason: int = 0  # index into REASONS
    distance: int = 0
    price: int = 0
    duration_us: int = 0  # started_at = time - duration
    as_json: bool = False

    def event(self):
        at = EPOCH + timedelta(microseconds=self.time_us)
        if self.kind == "rated":
            return DriverRated(driver_id=self.driver, rider_id="r", journey_id=self.journey, rated_at=at,
                               rating=self.value)
        if self.kind == "tipped":
            return DriverTipped(driver_id=self.driver, rider_id="r", journey_id=self.journey, tipped_at=at,
                                amount=self.value)
        return JourneyFinished(journey_id=self.journey, driver_id=self.driver, rider_id="r",
                               finish_reason=REASONS[self.reason],
                               started_at=at - timedelta(microseconds=self.duration_us), ended_at=at,
                               distance=self.distance, price=self.price)

    def message(self) -> MQTTMessage:
        event = self.event()
        return MQTTMessage(TOPICS[self.kind], to_json(event) if self.as_json else encode_event(event))


# -- the reference ------------------------------------------------------------


def reference(arrivals: list[Ev]) -> dict:
    """(driver, interval start) -> totals, from the contract's rules alone."""
    seen = set()
    sums = defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0])  # drop-offs, cancels, distance, price, tips, rating sum, count
    for ev in arrivals:
        identity = (ev.kind, ev.journey)
        if identity in seen:
            continue  # a repeat counts once: the first occurrence
        seen.add(identity)
        start = ev.time_us // (WINDOW * US) * WINDOW  # floor: [a, b) aligned to the epoch
        total = sums[ev.driver, start]
        if ev.kind == "rated":
            total[5] += ev.value
            total[6] += 1
        elif ev.kind == "tipped":
            total[4] += ev.value
        else:
            total[2] += ev.distance
            total[3] += ev.price
            if REASONS[ev.reason] is FinishReason.DROP_OFF:
                total[0] += 1
            elif REASONS[ev.reason] is FinishReason.DRIVER_CANCEL:
                total[1] += 1
    # The mean as a protobuf float, written as its shortest decimal in JSON too (the codec's float32).
    return {key: (t[0], t[1], t[2], t[3], t[4], float32(t[5] / t[6]) if t[6] else 0.0) for key, t in sums.items()}


def run(arrivals: list[Ev], *, lateness: int, complete: bool, batch_size: int, output: str,
        source: TestingSource | None = None, stream_clock: StreamClock | None = None,
        wall: float = T0.timestamp()) -> tuple[dict, list]:
    """The real dataflow; returns (driver, interval start) -> totals, and the rejected messages.

    ``source`` replaces the one fed ``arrivals`` in order; ``stream_clock``
    the stream time (default: the product's, from what the window step
    processed); ``wall`` the wall clock, standing still.
    """
    out: list = []
    flow = build_flow(
        Settings(window_seconds=WINDOW, allowed_lateness_seconds=lateness, max_future_seconds=10**6,
                 output_format=output),
        source or TestingSource([ev.message() for ev in arrivals], batch_size=batch_size),
        TestingSink(out),
        clock=lambda: wall,  # a wall clock standing still: only event time moves
        stream_clock=stream_clock,
        complete_input=complete,
    )
    run_main(flow)
    records = [decode_stats(m.payload) for _, m in out if m.topic == STATS]
    got = {}
    for s in records:
        start = (s.interval_start - EPOCH) // timedelta(seconds=1)
        key = (s.driver_id, start)
        assert key not in got, f"two records for driver {s.driver_id!r}, interval {s.interval_start}"
        assert s.interval_end - s.interval_start == timedelta(seconds=WINDOW), s
        got[key] = (s.total_drop_offs, s.total_driver_cancels, s.total_distance, s.total_price, s.total_tips,
                    s.avg_rating)
    rejected = [(m.topic, m.user_property("reason"), m.payload) for _, m in out if m.topic != STATS]
    return got, rejected


def describe(arrivals: list[Ev]) -> str:
    """The arrivals, one short line each, times in seconds after T0."""
    t0 = int(T0.timestamp()) * US
    lines = []
    for ev in arrivals:
        extra = {"rated": f"rating {ev.value}", "tipped": f"amount {ev.value}"}.get(
            ev.kind, f"{REASONS[ev.reason].name} distance {ev.distance} price {ev.price}")
        lines.append(f"  {ev.kind} {ev.driver} {ev.journey} at {(ev.time_us - t0) / US:g}s {extra}"
                     f"{' (JSON)' if ev.as_json else ''}")
    return "\n".join(lines)


def check(arrivals: list[Ev], *, lateness: int, complete: bool, batch_size: int, output: str = "protobuf",
          source: TestingSource | None = None, stream_clock: StreamClock | None = None, note: str = "",
          wall: float = T0.timestamp()) -> None:
    """The flow's records equal the reference's for ``arrivals``, and nothing is rejected.

    With a ``source`` of its own, ``arrivals`` is the order the reference
    sees (the publish order) and ``note`` says how the source delivers it.
    """
    got, rejected = run(arrivals, lateness=lateness, complete=complete, batch_size=batch_size, output=output,
                        source=source, stream_clock=stream_clock, wall=wall)
    where = f"arrivals (lateness {lateness}, batch size {batch_size}, {output} out):\n{describe(arrivals)}{note}"
    assert rejected == [], f"valid, on-time events were rejected: {rejected}\n{where}"
    want = reference(arrivals)
    assert got == want, "\n".join(
        f"{key}: flow {got.get(key)}, reference {want.get(key)}"
        for key in sorted(set(got) | set(want))
        if got.get(key) != want.get(key)
    ) + f"\n{where}"


# -- generated sequences -------------------------------------------------------

DRIVERS = ("d1", "d2", "d3")
JOURNEYS = tuple(f"j{i}" for i in range(12))


@st.composite
def event_times(draw, intervals: int = 6) -> int:
    interval = T0.timestamp() * US + draw(st.integers(0, intervals - 1)) * WINDOW * US
    offset = draw(st.one_of(
        st.sampled_from([0, 1, WINDOW * US - 1, WINDOW * US // 2]),  # on, just after, just before a boundary
        st.integers(0, WINDOW * US - 1),
    ))
    return int(interval) + offset


@st.composite
def new_events(draw, kind: str | None = None, drivers: int = 3, intervals: int = 6) -> Ev:
    kind = kind or draw(st.sampled_from(sorted(TOPICS)))
    ev = Ev(kind, draw(st.sampled_from(DRIVERS[:drivers])), draw(st.sampled_from(JOURNEYS)),
            draw(event_times(intervals)), as_json=draw(st.booleans()))
    if kind == "rated":
        return replace(ev, value=draw(st.integers(1, 5)))
    if kind == "tipped":
        return replace(ev, value=draw(st.integers(0, 10_000)))
    reason = draw(st.integers(0, 3))
    drop_off = REASONS[reason] is FinishReason.DROP_OFF
    # Producers fill distance and price for DROP_OFF only; the totals sum them over every journey anyway.
    filled = drop_off or draw(st.integers(0, 4)) == 0
    return replace(
        ev, reason=reason,
        distance=draw(st.integers(0, 100_000)) if filled else 0,
        price=draw(st.integers(0, 100_000)) if filled else 0,
        duration_us=draw(st.sampled_from([0, 1, 60 * US, 3600 * US])),
    )


@st.composite
def event_sequences(draw, *, repeats_move: bool) -> list[Ev]:
    """Events with repeats of (type, journey_id): the same bytes, re-encoded, or other content.

    A journey keeps its driver (the first one drawn for it: the other case is
    the xfail test below), and unless ``repeats_move`` a repeat with other
    content keeps the interval of the original.
    """
    events: list[Ev] = []
    owner: dict[str, str] = {}  # journey -> its driver
    first: dict[tuple[str, str], Ev] = {}  # identity -> its first event

    def add(ev: Ev) -> None:
        ev = replace(ev, driver=owner.setdefault(ev.journey, ev.driver))
        original = first.setdefault((ev.kind, ev.journey), ev)
        if not repeats_move:  # into the interval of the original
            start = original.time_us // (WINDOW * US) * (WINDOW * US)
            ev = replace(ev, time_us=start + ev.time_us % (WINDOW * US))
        events.append(ev)

    # Few drivers and intervals make busy intervals (means like 7/3), many make sparse ones.
    drivers, intervals = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    for _ in range(draw(st.integers(1, 30))):
        if events and draw(st.integers(0, 3)) == 0:
            original = draw(st.sampled_from(events))
            how = draw(st.sampled_from(["same bytes", "re-encoded", "other content"]))
            if how == "same bytes":
                add(original)
            elif how == "re-encoded":
                add(replace(original, as_json=not original.as_json))
            else:
                add(replace(draw(new_events(original.kind, drivers, intervals)), journey=original.journey))
        else:
            add(draw(new_events(None, drivers, intervals)))
    return events


def within_lateness(draw, events: list[Ev], lateness: int) -> list[Ev]:
    """An arrival order in which every event is within ``lateness`` of the newest one before it.

    Each event gets a key ``time + delay`` with ``0 <= delay <= lateness``;
    in key order, everything that arrived before an event has a time at most
    its key, so the newest time seen is at most ``time + lateness``.
    """
    delays = [draw(st.one_of(st.sampled_from([0, lateness * US]), st.integers(0, lateness * US)))
              for _ in events]
    order = sorted(range(len(events)), key=lambda i: (events[i].time_us + delays[i], i))
    return [events[i] for i in order]


def publish_order_within_lateness(data) -> tuple[int, list[Ev]]:
    """A lateness, and events with repeats in an order where none is late by it."""
    lateness = data.draw(st.sampled_from([0, 3, WINDOW]), label="lateness")
    events = data.draw(event_sequences(repeats_move=data.draw(st.booleans(), label="repeats move")),
                       label="events")
    return lateness, within_lateness(data.draw, events, lateness)


@MODEL
@given(st.data())
def test_records_match_the_reference_when_events_arrive_within_the_lateness(data):
    lateness, arrivals = publish_order_within_lateness(data)
    batch_size = data.draw(st.sampled_from([1, 2, 7, 1000]), label="batch_size")
    output = data.draw(st.sampled_from(["protobuf", "json"]), label="output format")
    check(arrivals, lateness=lateness, complete=False, batch_size=batch_size, output=output)


@MODEL
@given(st.data())
def test_records_match_the_reference_for_a_complete_input_in_any_order(data):
    events = data.draw(event_sequences(repeats_move=True), label="events")
    arrivals = data.draw(st.permutations(events), label="arrival order")
    batch_size = data.draw(st.sampled_from([1, 3, 1000]), label="batch_size")
    output = data.draw(st.sampled_from(["protobuf", "json"]), label="output format")
    check(arrivals, lateness=0, complete=True, batch_size=batch_size, output=output)


def delivered(draw, published: list[Ev], partitions: int) -> list[tuple[int, Ev]]:
    """``published`` as input partitions deliver it: (partition, event), in the order the flow reads.

    Each driver is read by one partition (its shard's), so its events keep
    the publish order; the partitions take turns at random, each delivering
    a run of its queue, so any of them can fall behind the others.
    """
    drivers = sorted({ev.driver for ev in published})
    partition = dict(zip(drivers, draw(st.lists(st.integers(0, partitions - 1), min_size=len(drivers),
                                                max_size=len(drivers)), label="partition of each driver")))
    queues = defaultdict(list)
    for ev in published:
        queues[partition[ev.driver]].append(ev)
    order = []
    while queues:
        p = draw(st.sampled_from(sorted(queues)), label="partition delivering next")
        run_length = draw(st.integers(1, len(queues[p])), label="events it delivers")
        order += [(p, ev) for ev in queues[p][:run_length]]
        del queues[p][:run_length]
        if not queues[p]:
            del queues[p]
    return order


def gated_low_watermark(order: list[tuple[int, Ev]], batch_size: int, stream: list[float]):
    """Messages for ``order``, moving ``stream[0]`` as the live input's low watermark would.

    Before each batch the stream time is the lowest, over partitions, of the
    newest event time each one delivered in earlier batches, -inf for one that
    delivered nothing yet: a partition's watermark counts only what the flow
    has processed (the epoch gate; with one worker, Bytewax runs a batch
    through the steps before it polls the source again). An exhausted
    partition keeps its newest time (no idle advance); a partition with no
    driver here is left out, since the live flow's idle probes would move it,
    and leaving it out lets the stream move as fast as the others allow.
    """
    newest = {p: -math.inf for p, _ in order}
    batch: dict[int, float] = {}
    for i, (p, ev) in enumerate(order):
        if i % batch_size == 0:
            for q, t in batch.items():
                newest[q] = max(newest[q], t)
            batch = {}
            stream[0] = min(newest.values())
        batch[p] = max(batch.get(p, -math.inf), ev.time_us / US)
        yield ev.message()


@settings(MODEL, max_examples=LONG_RUN or 200)
@given(st.data())
def test_partitions_and_their_delivery_delays_do_not_change_the_records(data):
    lateness, published = publish_order_within_lateness(data)
    order = delivered(data.draw, published, data.draw(st.integers(1, 4), label="partitions"))
    batch_size = data.draw(st.sampled_from([1, 2, 3, 7]), label="batch_size")
    output = data.draw(st.sampled_from(["protobuf", "json"]), label="output format")
    stream = [-math.inf]
    note = "\ndelivered (partition: event):\n" + "\n".join(
        f"  {p}: {line.strip()}" for (p, _), line in zip(order, describe([ev for _, ev in order]).splitlines()))
    check(published, lateness=lateness, complete=False, batch_size=batch_size, output=output,
          source=TestingSource(gated_low_watermark(order, batch_size, stream), batch_size=batch_size),
          stream_clock=StreamClock(lambda: stream[0]), note=note)


A_YEAR_US = 365 * 24 * 3600 * US


def with_idle_spells(draw, published: list[Ev]) -> tuple[list[Ev], list[int]]:
    """``published`` with 0-2 idle spells: the producers pause, then go on that much later in event time.

    Returns the events, each after a spell moved on by the spells before it,
    and the publish index at which each spell starts.
    """
    spells = sorted(draw(st.lists(st.integers(1, max(1, len(published) - 1)), max_size=2), label="spells at"))
    moved, shift = [], 0
    for i, ev in enumerate(published):
        for _ in range(spells.count(i)):
            # Up to 100 windows: a repeat moved across spells stays within the dedupe retention.
            shift += draw(st.sampled_from([1, WINDOW, 100 * WINDOW]), label="spell seconds") * US
        moved.append(replace(ev, time_us=ev.time_us + shift))
    return moved, [i for i in spells if i < len(published)]


def live_watermarks(segments: list[list[tuple[int, Ev]]], readers: int, silent: int, silent_shown_at: int,
                    batch_size: int, marks: list):
    """Messages (with their partition) for ``segments`` delivered one after the other, moving ``marks[0]``.

    ``marks[0]`` is the mapping the live input's watermarks give, gated as
    there: before each batch, a partition's watermark is the newest event
    time it delivered in earlier batches; ``-inf`` while it has none and may
    still deliver; left out once it has read nothing and is caught up (the
    ``silent`` partitions ``readers ..``, from batch ``silent_shown_at`` on).
    A reader that has read nothing yet stays ``-inf`` across spells: its
    first event may be delivered after others' later ones, which live
    traffic, stamped in real time, only does within seconds of showing it
    caught up. Between segments the producers
    paused (an idle spell): every partition is caught up, and one that read
    something moves on by the time elapsed since it read its newest event,
    the publish time of the newest event published before it (producers
    stamp in real time, up to the lateness early).
    """
    newest: dict[int, float] = {}
    read_at: dict[int, float] = {}  # the producers' time (newest published) when each partition read its newest
    watermark: dict[int, float] = {p: -math.inf for p in range(readers + silent)}
    idle_due: dict[int, float] | None = None
    published_max, i = -math.inf, 0
    for number, segment in enumerate(segments):
        if number:  # a spell before this segment: everything before it was read
            pause_end = min(ev.time_us for _, ev in segment) / US  # producers' time when they go on
            idle_due = {p: newest[p] + (pause_end - read_at[p]) for p in newest}
        for p, ev in segment:
            if i % batch_size == 0:
                if i // batch_size == silent_shown_at:
                    watermark.update({q: math.inf for q in range(readers, readers + silent)})
                for q, t in newest.items():
                    watermark[q] = max(watermark[q], t)
                if idle_due is not None:
                    for q, t in idle_due.items():
                        watermark[q] = max(watermark[q], t)
                    idle_due = None
                # inf: read nothing, caught up: left out of the mapping
                marks[0] = {q: t for q, t in watermark.items() if t != math.inf or q in newest}
            t = ev.time_us / US
            published_max = max(published_max, t)
            if t > newest.get(p, -math.inf):
                newest[p], read_at[p] = t, published_max
            i += 1
            message = ev.message()
            yield MQTTMessage(message.topic, message.payload, (), p)


@settings(MODEL, max_examples=LONG_RUN or 150)
@given(st.data())
def test_partitions_that_never_read_idle_spells_and_old_event_times_do_not_change_the_records(data):
    # The product's stream clock over what the live input's watermarks would
    # say: readers that may fall behind, partitions that never read, idle
    # spells between bursts, and a wall clock three years ahead of the events.
    lateness, published = publish_order_within_lateness(data)
    published, spells = with_idle_spells(data.draw, published)
    readers = data.draw(st.integers(1, 4), label="partitions that read")
    silent = data.draw(st.integers(0, 3), label="partitions that never read")
    silent_shown_at = data.draw(st.integers(0, 3), label="batch from which they are known idle")
    bounds = [0, *spells, len(published)]
    segments = [delivered(data.draw, published[a:b], readers) for a, b in zip(bounds, bounds[1:]) if b > a]
    batch_size = data.draw(st.sampled_from([1, 2, 3, 7]), label="batch_size")
    marks: list = [{p: -math.inf for p in range(readers + silent)}]
    order = [item for segment in segments for item in segment]
    note = f"\nspells before publish indexes {spells}; {silent} silent partitions; delivered:\n" + "\n".join(
        f"  {p}: {line.strip()}" for (p, _), line in zip(order, describe([ev for _, ev in order]).splitlines()))
    check(published, lateness=lateness, complete=False, batch_size=batch_size,
          source=TestingSource(live_watermarks(segments, readers, silent, silent_shown_at, batch_size, marks),
                               batch_size=batch_size),
          stream_clock=StreamClock.of_input(lambda: marks[0]), note=note,
          wall=T0.timestamp() + 3 * A_YEAR_US / US)


# -- counterexamples found by the properties above (shrunk) ---------------------


def at(seconds: float) -> int:
    return int(T0.timestamp()) * US + int(seconds * US)


@pytest.mark.xfail(strict=True, reason=(
    "known gap, documented in docs/limitations.md ('The same journey under two drivers counts for both'): "
    "dedupe state lives per driver, so one journey_id sent under two driver ids counts for both; the "
    "producers send each journey under its one driver, and closing the gap needs a journey-keyed dedupe "
    "step across workers. strict: the suite fails as soon as the gap is closed, so the marker gets removed"))
def test_an_identity_repeated_under_another_driver_counts_once():
    # An event is (message type, journey_id): the driver is not part of it, so
    # the second JourneyFinished of j0 is a repeat, whoever it names.
    check([Ev("finished", "d1", "j0", at(0)), Ev("finished", "d2", "j0", at(0))],
          lateness=0, complete=False, batch_size=1)


def test_a_repeat_in_a_later_interval_counts_once_after_the_first_interval_closed():
    # rated j0 counts in [0, 10); the JourneyFinished at 10 s closes that
    # interval (lateness 0); a second rated j0, other content at 10 s, is a
    # repeat of the first and must not count in [10, 20).
    check([Ev("rated", "d1", "j0", at(0), value=1),
           Ev("finished", "d1", "j0", at(10)),
           Ev("rated", "d1", "j0", at(10), value=1)],
          lateness=0, complete=False, batch_size=1)
