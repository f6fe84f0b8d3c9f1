"""How long after its interval can close a record arrives, with commit-gated output.

    .venv/bin/python bench/latency.py [--epochs 1 3] [--seconds 30]

A private mosquitto, the real flow with recovery (`-s` = each epoch length
given) and paced traffic with event times = now. A driver's interval can
close at the earliest when its clock passes the interval's end plus the
allowed lateness; the delay measured per record is from then until the
record arrives at a subscriber. Per epoch length, one line with the median,
95th percentile and maximum, in seconds and in epochs; the last line is the
largest maximum in epochs (the README's bound: about 2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.mqtt.testing import Collector, Mosquitto, Publisher  # noqa: E402
from driver_stats.contract import decode_stats  # noqa: E402
from driver_stats.testing.live_flow import LiveFlow, wait_for_records  # noqa: E402
from driver_stats.testing.paced import PacedTraffic  # noqa: E402

WINDOW, LATENESS = 4, 1


def delays(epoch: int, seconds: float, tmp: Path) -> list[float]:
    with Mosquitto(tmp / f"broker-{epoch}") as broker:
        collector = Collector(broker, "output/driver_stats", client_id=f"latency-{epoch}")
        flow = LiveFlow(broker, tmp / f"flow-{epoch}", client_id=f"latency{epoch}", window=WINDOW,
                        lateness=LATENESS, recovery=True, epoch_seconds=epoch).start()
        traffic = PacedTraffic(Publisher(broker), count=int(seconds * 40), rate=40, drivers=10,
                               window=WINDOW, lateness=LATENESS, duplicates=0.0)
        traffic.start()
        traffic.join()
        wait_for_records(collector, traffic.expected(), timeout=WINDOW + LATENESS + 4 * epoch + 30)
        flow.kill()
        with collector.lock:
            arrivals = list(zip(collector.messages, collector.arrived_at))
    out = []
    for message, arrived in arrivals:
        stats = decode_stats(message.payload)
        can_close = stats.interval_end.timestamp() + LATENESS
        out.append(arrived - can_close)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3], help="epoch lengths, s (default 1 3)")
    parser.add_argument("--seconds", type=float, default=30, help="traffic per run, s (default 30)")
    args = parser.parse_args()
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in args.epochs:
            d = sorted(delays(epoch, args.seconds, Path(tmp)))
            p50, p95, top = statistics.median(d), d[int(0.95 * (len(d) - 1))], d[-1]
            worst = max(worst, top / epoch)
            print(f"-s {epoch}: {len(d)} records, interval closable -> received: median {p50:.2f}s "
                  f"({p50 / epoch:.2f} epochs), p95 {p95:.2f}s, max {top:.2f}s ({top / epoch:.2f} epochs)",
                  flush=True)
    print(f"max delay in epochs: {worst:.2f}")


if __name__ == "__main__":
    main()
