"""Throughput of the full flow against bare Bytewax windowing, in one run.

    python bench/dataflow.py [--events N] [--drivers D]

Both runs see the same synthetic events (mixed types, ~10k drivers, a few
percent duplicates, slightly out of order): the full flow gets them as
protobuf messages over TestingSource (decode, validate, dedupe, window,
encode); the reference gets them already decoded and only runs Bytewax's
``key_on`` + ``fold_window``. The last line is the ratio of the two
throughputs, which survives a noisy shared machine better than either.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bytewax.operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window  # noqa: E402
from bytewax.testing import TestingSink, TestingSource, run_main  # noqa: E402

from connectors.mqtt import MQTTMessage  # noqa: E402
from driver_stats.contract import DriverRated, DriverTipped, FinishReason, JourneyFinished, encode_event  # noqa: E402
from driver_stats.settings import Settings  # noqa: E402
from flows.driver_stats import build_flow  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
TOPICS = {DriverRated: "input/driver_rated", DriverTipped: "input/driver_tipped",
          JourneyFinished: "input/journey_finished"}


def synthetic_events(count: int, drivers: int, seed: int = 7) -> list:
    """Journeys spread over event time, each followed by a rating and a tip sometimes."""
    rng = random.Random(seed)
    events: list = []
    journey = 0
    while len(events) < count:
        journey += 1
        driver = f"driver-{rng.randrange(drivers)}"
        ended = START + timedelta(seconds=journey * 0.05 + rng.uniform(-5, 5))
        reason = rng.choices(list(FinishReason), weights=(85, 7, 5, 3))[0]
        drop = reason is FinishReason.DROP_OFF
        jid = f"journey-{journey}"
        events.append(JourneyFinished(
            journey_id=jid, driver_id=driver, rider_id=f"rider-{rng.randrange(10**6)}", finish_reason=reason,
            started_at=ended - timedelta(minutes=12), ended_at=ended,
            distance=rng.randrange(500, 20000) if drop else 0, price=rng.randrange(500, 5000) if drop else 0))
        if drop and rng.random() < 0.6:
            events.append(DriverRated(driver_id=driver, rider_id="r", journey_id=jid,
                                      rated_at=ended + timedelta(seconds=20), rating=rng.randint(1, 5)))
        if drop and rng.random() < 0.3:
            events.append(DriverTipped(driver_id=driver, rider_id="r", journey_id=jid,
                                       tipped_at=ended + timedelta(seconds=25), amount=rng.randrange(50, 500)))
        if rng.random() < 0.03:  # at-least-once delivery: a repeat
            events.append(events[-1])
    return events[:count]


def run_full(messages: list[MQTTMessage], settings: Settings) -> tuple[float, int]:
    out: list = []
    flow = build_flow(settings, TestingSource(messages, batch_size=1000), TestingSink(out))
    started = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - started, len(out)


def bare_windowing(settings: Settings, source, sink) -> Dataflow:
    """The reference: decoded events keyed by driver into Bytewax's own tumbling-window fold, a count each."""
    flow = Dataflow("bare_windowing")
    stream = op.input("events", flow, source)
    keyed = op.key_on("key_by_driver", stream, lambda e: e.driver_id)
    clock = EventClock(lambda e: e.event_time,
                       wait_for_system_duration=timedelta(seconds=settings.allowed_lateness_seconds))
    windower = TumblingWindower(length=timedelta(seconds=settings.window_seconds), align_to=START)
    windows = fold_window("fold", keyed, clock, windower, lambda: 0, lambda count, _event: count + 1,
                          lambda a, b: a + b)
    op.output("out", windows.down, sink)
    return flow


def run_bare(events: list, settings: Settings) -> tuple[float, int]:
    out: list = []
    flow = bare_windowing(settings, TestingSource(events, batch_size=1000), TestingSink(out))
    started = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - started, len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="events per run (default 300000)")
    parser.add_argument("--drivers", type=int, default=10_000, help="distinct drivers (default 10000)")
    args = parser.parse_args()

    events = synthetic_events(args.events, args.drivers)
    messages = [MQTTMessage(TOPICS[type(e)], encode_event(e)) for e in events]
    settings = Settings(max_future_seconds=10**10)
    print(f"{len(events)} events, {args.drivers} drivers, window {settings.window_seconds}s")

    full_seconds, full_out = run_full(messages, settings)
    bare_seconds, bare_out = run_bare(events, settings)
    full_rate, bare_rate = len(events) / full_seconds, len(events) / bare_seconds
    print(f"full flow:      {full_rate:10.0f} events/s ({full_seconds:.2f}s, {full_out} records out)")
    print(f"bare windowing: {bare_rate:10.0f} events/s ({bare_seconds:.2f}s, {bare_out} windows out)")
    print(f"full/bare ratio: {full_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
