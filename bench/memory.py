"""Resident memory of the full flow over a long run: it must stay flat.

    python bench/memory.py [--events 1000000] [--journeys 100000]

The full flow (decode, validate, dedupe, windows, encode) runs in this
process over TestingSource: ``--journeys`` journeys of ``--drivers`` drivers,
each journey a JourneyFinished, a rating and a tip plus at-least-once repeats,
about ``events / journeys`` messages per journey, with event time moving
forward 0.25 s per journey (600 s windows close as it goes). RSS is sampled
every 10% of the events. Dedupe keys and interval state are dropped when an
interval closes, so memory should level off after the first intervals; the
last line compares the end with the 30% mark.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bytewax.testing import TestingSource, run_main  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402

from connectors.mqtt import MQTTMessage  # noqa: E402
from driver_stats.contract import DriverRated, DriverTipped, FinishReason, JourneyFinished, encode_event  # noqa: E402
from driver_stats.settings import Settings  # noqa: E402
from flows.driver_stats import build_flow  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
PAGE = 4096


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def messages(events: int, journeys: int, drivers: int):
    per_journey = max(3, events // journeys)
    produced = 0
    for j in itertools.count():
        driver, jid = f"driver-{j % drivers}", f"journey-{j}"
        ended = START + timedelta(seconds=j * 0.25)
        batch = [
            ("input/journey_finished", encode_event(JourneyFinished(
                journey_id=jid, driver_id=driver, rider_id="r", finish_reason=FinishReason.DROP_OFF,
                started_at=ended - timedelta(minutes=9), ended_at=ended, distance=3000, price=1500))),
            ("input/driver_rated", encode_event(DriverRated(
                driver_id=driver, rider_id="r", journey_id=jid, rated_at=ended, rating=4))),
            ("input/driver_tipped", encode_event(DriverTipped(
                driver_id=driver, rider_id="r", journey_id=jid, tipped_at=ended, amount=100))),
        ]
        for i in range(per_journey):
            topic, payload = batch[i % 3]
            yield MQTTMessage(topic, payload)
            produced += 1
            if produced >= events:
                return


class _Count(StatelessSinkPartition):
    def __init__(self, counter):
        self.counter = counter

    def write_batch(self, items):
        self.counter[0] += len(items)


class CountingSink(DynamicSink):
    def __init__(self):
        self.counter = [0]

    def build(self, step_id, worker_index, worker_count):
        return _Count(self.counter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--journeys", type=int, default=100_000)
    parser.add_argument("--drivers", type=int, default=2_000)
    args = parser.parse_args()
    samples: list[tuple[int, float]] = []
    step = args.events // 10

    def sampled(stream):
        # TestingSource pulls lazily, so this runs as messages enter the flow.
        for n, message in enumerate(stream, 1):
            if n % step == 0:
                gc.collect()
                samples.append((n, rss_mib()))
                print(f"{n:>9} events  rss {samples[-1][1]:7.1f} MiB", flush=True)
            yield message

    sink = CountingSink()
    source = TestingSource(sampled(messages(args.events, args.journeys, args.drivers)), batch_size=1000)
    flow = build_flow(Settings(max_future_seconds=10**10), source, sink)
    print(f"before: rss {rss_mib():.1f} MiB")
    run_main(flow)
    print(f"{sink.counter[0]} messages out")
    early = next(mib for n, mib in samples if n >= args.events * 0.3)
    print(f"rss end/30% ratio: {samples[-1][1] / early:.2f} ({samples[-1][1]:.1f} / {early:.1f} MiB)")


if __name__ == "__main__":
    main()
