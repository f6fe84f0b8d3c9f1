"""Resident memory and state of the full flow over a long run: they must stay flat.

    python bench/memory.py [--events 1000000] [--journeys 100000]    # steady traffic
    python bench/memory.py churn [--recovery] [--events 1000000] [--retention 2] [--rate 10000]  # new drivers
    python bench/memory.py flood [--events 1000000]                  # one driver, one huge interval

*steady* (the default):
The full flow (decode, validate, dedupe, windows, encode) runs in this
process over TestingSource: ``--journeys`` journeys of ``--drivers`` drivers,
each journey a JourneyFinished, a rating and a tip plus at-least-once repeats,
about ``events / journeys`` messages per journey, with event time moving
forward 0.25 s per journey (600 s windows close as it goes). RSS is sampled
every 10% of the events. Dedupe keys and interval state are dropped when an
interval closes, so memory should level off after the first intervals; the
last line compares the end with the 30% mark.

*churn*: every event comes from a driver never seen before, ``--rate``
(10,000) events per second of event time, ending about now, with 1 s
windows, no lateness and a 2 s state retention (``--retention``), so that
intervals close and drivers are forgotten within the run (the same rule as
production's 600 s / 30 s / 3600 s, compressed in time). Event times, not
the wall clock, set how many drivers are held, so a loaded machine changes
the time a run takes, not its state. The flow is :func:`flows.driver_stats.build_flow`
with its default stream clock, the product's rule for an input without
watermarks (:meth:`driver_stats.core.stream_clock.StreamClock.of_input`: the
stream time is what the window step processed), so drivers are forgotten as
in production: each sample line shows the drivers the flow holds (its
``driver_stats_tracked_drivers`` gauge), which levels off at about
``rate`` x (window + retention) drivers. RSS is sampled as in *steady*; with
``--recovery`` the flow also snapshots every second into a recovery store
whose size is sampled instead (``store end/30% ratio``). The last line
compares the process's CPU seconds per 100k drivers in the last stretch
(10% of the events) with the first: the cost of an event must not grow with
the drivers seen before it. (The sampling itself, a full collection and the
gauges, is left out.) Every mode runs the flow with the live process's
garbage-collector settings (:data:`flows.live.GC_THRESHOLDS`).

*flood*: one driver, every event a new journey in one open interval, run
without and then with a recovery store (1 s snapshots); the last line is the
throughput ratio. Snapshot cost must follow what changed, not the size of
the interval's dedupe set.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.recovery import RecoveryConfig, init_db_dir  # noqa: E402
from bytewax.testing import TestingSource, run_main  # noqa: E402

from prometheus_client import REGISTRY  # noqa: E402

from connectors.mqtt import MQTTMessage  # noqa: E402
from driver_stats.contract import DriverRated, DriverTipped, FinishReason, JourneyFinished, encode_event  # noqa: E402
from driver_stats.settings import Settings  # noqa: E402
from flows import live  # noqa: E402
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


def tip(driver: str, journey: str, at: datetime) -> MQTTMessage:
    return MQTTMessage("input/driver_tipped", encode_event(DriverTipped(
        driver_id=driver, rider_id="r", journey_id=journey, tipped_at=at, amount=100)))


def churn_messages(events: int, rate: int):
    """Event ``i`` from driver ``i`` at ``i / rate`` stream seconds, the last one about now (none in the future)."""
    start = time.time() - events / rate
    for i in range(events):
        yield tip(f"driver-{i}", "journey", datetime.fromtimestamp(start + i / rate, timezone.utc))


def flood_messages(events: int):
    at = datetime.now(timezone.utc)
    for i in range(events):
        yield tip("driver-0", f"journey-{i}", at)


def sampled(stream, events: int, measure, label: str, samples: list, extra=None):
    """Pass ``stream`` through, sampling ``measure()`` every 10% (TestingSource pulls lazily).

    ``extra()``, if given, adds text to each sample's line. The CPU time of
    the sampling itself (a full collection, the gauges) is left out of the
    stretches: :data:`samples` holds ``(events, value, cpu seconds so far)``.
    """
    step = max(1, events // 10)
    cpu, paused = time.process_time(), 0.0
    for n, message in enumerate(stream, 1):
        if n % step == 0:
            before = time.process_time()
            gc.collect()
            samples.append((n, measure(), before - paused - cpu))
            spent = samples[-1][2] - (samples[-2][2] if len(samples) > 1 else 0.0)
            line = f"{n:>9} events  cpu {spent / step * 100_000:5.2f} s/100k  {label} {samples[-1][1]:9.1f} MiB"
            if extra is not None:
                line += f"  {extra()}"
            print(line, flush=True)
            paused += time.process_time() - before
        yield message


def ratio_line(name: str, samples: list, events: int) -> tuple[str, str]:
    """The figures and the ratio of the last sample to the one at 30% of the events."""
    early = next(value for n, value, _cpu in samples if n >= events * 0.3)
    return (f"{name} end/30%: {samples[-1][1]:.1f} / {early:.1f} MiB",
            f"{name} end/30% ratio: {samples[-1][1] / early:.2f}")


def time_lines(samples: list) -> tuple[str, str]:
    """CPU seconds per 100k drivers (events) in the first and in the last stretch between samples."""
    n0, _, cpu0 = samples[0]
    n1, _, cpu1 = samples[-2] if len(samples) > 1 else (0, 0.0, 0.0)
    n2, _, cpu2 = samples[-1]
    first, last = cpu0 / n0 * 100_000, (cpu2 - cpu1) / (n2 - n1) * 100_000
    return (f"cpu per 100k drivers: first {n0:,} drivers {first:.2f} s, last {n2 - n1:,} drivers {last:.2f} s",
            f"time per 100k drivers end/start: {last / first:.2f}")


def tracked_drivers() -> int:
    """The flow's ``driver_stats_tracked_drivers`` gauge, summed over workers (what an operator sees)."""
    return int(sum(sample.value for family in REGISTRY.collect()
                   if family.name == "driver_stats_tracked_drivers" for sample in family.samples))


def store_mib(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.glob("*")) / 2**20


def live_gc() -> None:
    """The live process's collector settings (flows/live.py): what is set up is frozen, and a
    collection runs after 50,000 net new objects, not 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*live.GC_THRESHOLDS)


def run_flow(messages, settings: Settings, recovery_dir: Path | None = None,
             sink: CountingSink | None = None) -> CountingSink:
    sink = sink or CountingSink()
    flow = build_flow(settings, TestingSource(messages, batch_size=1000), sink)
    live_gc()
    if recovery_dir is None:
        run_main(flow)
    else:
        init_db_dir(recovery_dir, 1)
        run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=RecoveryConfig(str(recovery_dir)))
    return sink


def churn(events: int, recovery: bool, retention: int, rate: int) -> None:
    settings = Settings(window_seconds=1, allowed_lateness_seconds=0, state_retention_seconds=retention)
    samples: list[tuple[int, float, float]] = []
    held: list[int] = []
    sink = CountingSink()

    def drivers() -> str:
        held.append(tracked_drivers())
        return f"drivers held {held[-1]:>8,}  records out {sink.counter[0]:>9,}"

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) if recovery else None
        measure, label = ((lambda: store_mib(store)), "store") if recovery else (rss_mib, "rss")
        started = time.perf_counter()
        run_flow(sampled(churn_messages(events, rate), events, measure, label, samples, drivers), settings, store, sink)
        elapsed = time.perf_counter() - started
    last = samples[-1][0] if samples else 0
    forgotten = last - (held[-1] if held else 0)
    print(f"{events} drivers in {elapsed:.1f}s, {sink.counter[0]} records out; drivers held at most "
          f"{max(held, default=0):,}, at the last sample {held[-1] if held else 0:,} of {last:,} seen "
          f"({forgotten:,} forgotten; window 1 s, lateness 0 s, retention {retention} s, "
          f"{rate:,} events per event-time second)")
    if held and not forgotten:
        print("no driver was forgotten: the stream time did not move", file=sys.stderr)
    figures, ratio = ratio_line(label, samples, events)
    cpu_figures, cpu_ratio = time_lines(samples)
    print(figures)
    print(cpu_figures)
    print(ratio)
    print(cpu_ratio)


def flood(events: int) -> None:
    settings = Settings(window_seconds=3600, allowed_lateness_seconds=0)
    rates = []
    for recovery in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            run_flow(flood_messages(events), settings, Path(tmp) if recovery else None)
            elapsed = time.perf_counter() - started
        rates.append(events / elapsed)
        print(f"{'with' if recovery else 'without'} recovery: {events} journeys of one driver in "
              f"{elapsed:.1f}s, {rates[-1]:,.0f} events/s", flush=True)
    print(f"recovery/no-recovery throughput ratio: {rates[1] / rates[0]:.2f}")


def steady(events: int, journeys: int, drivers: int) -> None:
    samples: list[tuple[int, float]] = []
    stream = sampled(messages(events, journeys, drivers), events, rss_mib, "rss", samples)
    sink = CountingSink()
    flow = build_flow(Settings(max_future_seconds=10**10), TestingSource(stream, batch_size=1000), sink)
    print(f"before: rss {rss_mib():.1f} MiB")
    live_gc()
    run_main(flow)
    print(f"{sink.counter[0]} messages out")
    figures, ratio = ratio_line("rss", samples, events)
    print(figures)
    print(ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["steady", "churn", "flood"], default="steady")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--journeys", type=int, default=100_000, help="steady: distinct journeys")
    parser.add_argument("--drivers", type=int, default=2_000, help="steady: distinct drivers")
    parser.add_argument("--recovery", action="store_true", help="churn: sample a recovery store's size")
    parser.add_argument("--retention", type=int, default=2,
                        help="churn: state retention, whole seconds (drivers held: about rate x (1 + this))")
    parser.add_argument("--rate", type=int, default=10_000, help="churn: events (new drivers) per event-time second")
    args = parser.parse_args()
    if args.mode == "churn":
        churn(args.events, args.recovery, args.retention, args.rate)
    elif args.mode == "flood":
        flood(args.events)
    else:
        steady(args.events, args.journeys, args.drivers)


if __name__ == "__main__":
    main()
