"""How long after its interval can close a record arrives, with and without recovery.

    .venv/bin/python bench/latency.py [--epochs 1 3] [--seconds 30]

A private mosquitto, the real flow and paced traffic with event times = now,
plus one late event a second (for a driver already seen, an interval long
closed). With recovery (``-r``, ``-s`` = each epoch length given) output is
commit-gated; a last run without recovery (``-s`` = the first epoch length)
publishes at once, there being no commit to wait for. A driver's interval
can close at the earliest when its clock passes the interval's end plus the
allowed lateness (in event time, which is the wall clock here); the delay
measured per record is from then until the record arrives at a subscriber,
and per late event from its publishing until its rejection arrives. Records
are split into *busy* (their interval could close while traffic still
flowed: the stream moved them) and *idle* (the last intervals, closed after
the traffic stopped: the idle input's probes moved them). One line per run
with the median, 95th percentile and maximum (busy records also in epochs);
the last line is the largest busy maximum in epochs with recovery.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.mqtt.testing import Collector, Mosquitto, Publisher  # noqa: E402
from driver_stats.contract import DriverRated, decode_stats, encode_event  # noqa: E402
from driver_stats.testing.live_flow import LiveFlow, wait_for_records  # noqa: E402
from driver_stats.testing.paced import PacedTraffic  # noqa: E402

WINDOW, LATENESS = 4, 1


class LateEvents(threading.Thread):
    """One late rating a second, on the topic of a rating the traffic sent for its driver: ``sent``, payload -> time."""

    def __init__(self, publisher: Publisher, traffic: PacedTraffic):
        super().__init__(daemon=True)
        self.publisher, self.traffic = publisher, traffic
        self.sent: dict[bytes, float] = {}

    def run(self) -> None:
        time.sleep(WINDOW + LATENESS + 2)  # the drivers have events by then
        n = 0
        while time.time() < self.traffic.last_due:
            now = time.time()
            message = [m for m in self.traffic.messages if isinstance(m.event, DriverRated) and m.at <= now][-1]
            old = datetime.fromtimestamp(now - 10 * WINDOW, timezone.utc)
            late = DriverRated(driver_id=message.event.driver_id, rider_id="r", journey_id=f"late-{n}",
                               rated_at=old, rating=3)
            payload = encode_event(late)
            self.sent[payload] = time.time()
            self.publisher.client.publish(message.topic if self.traffic.plain else message.shard_topic, payload, qos=1)
            n += 1
            time.sleep(1.0)


def delays(tmp: Path, name: str, *, epoch: int, seconds: float,
           recovery: bool) -> tuple[list[float], list[float], list[float]]:
    """Interval closable -> record received (busy, idle), late event published -> rejection received."""
    with Mosquitto(tmp / f"broker-{name}") as broker:
        collector = Collector(broker, "output/driver_stats", "rejected/#", client_id=f"latency-{name}")
        flow = LiveFlow(broker, tmp / f"flow-{name}", client_id=f"latency{name}", window=WINDOW,
                        lateness=LATENESS, recovery=recovery, epoch_seconds=epoch).start()
        publisher = Publisher(broker)
        traffic = PacedTraffic(publisher, count=int(seconds * 40), rate=40, drivers=10,
                               window=WINDOW, lateness=LATENESS, duplicates=0.0)
        late = LateEvents(Publisher(broker, client_id="late-publisher"), traffic)
        traffic.start()
        late.start()
        traffic.join()
        late.join()
        wait_for_records(collector, traffic.expected(), timeout=WINDOW + LATENESS + 4 * epoch + 30)
        flow.kill()
        with collector.lock:
            arrivals = list(zip(collector.messages, collector.arrived_at))
    busy, idle, rejections = [], [], []
    for message, arrived in arrivals:
        if message.topic == "output/driver_stats":
            stats = decode_stats(message.payload)
            closable = stats.interval_end.timestamp() + LATENESS
            (busy if closable <= traffic.last_due else idle).append(arrived - closable)
        elif message.payload in late.sent:
            rejections.append(arrived - late.sent[message.payload])
    return sorted(busy), sorted(idle), sorted(rejections)


def spread(d: list[float]) -> tuple[float, float, float]:
    return statistics.median(d), d[int(0.95 * (len(d) - 1))], d[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3], help="epoch lengths, s (default 1 3)")
    parser.add_argument("--seconds", type=float, default=30, help="traffic per run, s (default 30)")
    args = parser.parse_args()
    worst = 0.0
    runs = [(f"-s {epoch}", epoch, True) for epoch in args.epochs]
    runs.append((f"no -r, -s {args.epochs[0]}", args.epochs[0], False))
    with tempfile.TemporaryDirectory() as tmp:
        for n, (label, epoch, recovery) in enumerate(runs):
            busy, idle, rejections = delays(Path(tmp), str(n), epoch=epoch, seconds=args.seconds,
                                            recovery=recovery)
            p50, p95, top = spread(busy)
            i50, _, itop = spread(idle)
            r50, _, rtop = spread(rejections)
            if recovery:
                worst = max(worst, top / epoch)
            print(f"{label}: interval closable -> record received: busy ({len(busy)} records) median {p50:.2f}s "
                  f"({p50 / epoch:.2f} epochs), p95 {p95:.2f}s, max {top:.2f}s ({top / epoch:.2f} epochs); "
                  f"idle ({len(idle)}) median {i50:.2f}s, max {itop:.2f}s; "
                  f"{len(rejections)} late events -> rejection received: median {r50:.3f}s, max {rtop:.3f}s",
                  flush=True)
    print(f"max busy delay in epochs with recovery: {worst:.2f}")


if __name__ == "__main__":
    main()
