"""Kill -9 the live flow many times under paced traffic; count what went wrong.

    python bench/chaos.py [--kills 20] [--rate 50] [--drivers 40]

A private mosquitto, the real flow (`python -m bytewax.run flows.driver_stats`
with recovery, 1 s snapshots) and the generator's traffic with event times =
now. The flow is killed with SIGKILL at random moments and restarted after a
random pause; afterwards the published records are compared with the ground
truth of everything published. The last line is
``lost=… wrong=… conflicting=… duplicate_records=…``: intervals never
published, published with other totals, published twice with different
totals, and published twice byte-identical (tolerated, the goal is 0).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.mqtt.testing import Collector, Mosquitto, Publisher  # noqa: E402
from driver_stats.testing.live_flow import LiveFlow, wait_for_records  # noqa: E402
from driver_stats.testing.paced import PacedTraffic, compare  # noqa: E402

WINDOW, LATENESS = 5, 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs (default 20)")
    parser.add_argument("--rate", type=float, default=50, help="events/s (default 50)")
    parser.add_argument("--drivers", type=int, default=40, help="drivers (default 40)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pauses = [(rng.uniform(1.0, 4.0), rng.uniform(0.1, 2.0)) for _ in range(args.kills)]
    seconds = sum(up + down for up, down in pauses) + 3
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        collector = Collector(broker, "output/driver_stats")
        publisher = Publisher(broker)
        flow = LiveFlow(broker, Path(tmp) / "flow", client_id="chaos", window=WINDOW, lateness=LATENESS,
                        recovery=True, epoch_seconds=1).start()
        traffic = PacedTraffic(publisher, count=int(seconds * args.rate), rate=args.rate,
                               drivers=args.drivers, window=WINDOW, lateness=LATENESS, seed=args.seed)
        print(f"{len(traffic.messages)} events over {seconds:.0f}s, {args.kills} kills", flush=True)
        traffic.start()
        for i, (up, down) in enumerate(pauses, 1):
            time.sleep(up)
            flow.kill(signal.SIGKILL)
            time.sleep(down)
            flow.start()
            print(f"kill {i}: after {up:.1f}s up, {down:.1f}s down", flush=True)
        traffic.join()
        expected = traffic.expected()
        try:
            wait_for_records(collector, expected, timeout=WINDOW + LATENESS + 60)
        except AssertionError as err:
            print(err)
        flow.kill()
        counts = compare(expected, collector.messages)
        print(f"{len(expected)} expected records")
        print(" ".join(f"{name}={value}" for name, value in counts.items()))


if __name__ == "__main__":
    main()
