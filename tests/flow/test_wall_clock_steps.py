"""A step of the host's wall clock mid-stream changes nothing (issue 31), on the real flow and broker.

An NTP correction or a VM resumed from a pause steps the wall clock. Only
calendar questions read it (``driver_stats.core.wall_clock``); elapsed time
is monotonic. The flow's wall clock (its processes and their children) is
stepped through ``DRIVER_STATS_WALL_CLOCK_SHIFT_FILE`` while producers keep
stamping real time: every in-order event is counted, no interval closes
early, and every record equals the reference.
"""

from __future__ import annotations

import time

import pytest

from connectors.mqtt.testing import Collector, Publisher, wait_for
from driver_stats.traffic import COUNTED_KINDS
from driver_stats.contract import STATS_TOPIC, decode_stats
from driver_stats.testing.live_flow import LiveFlow, expected_stats, published_stats
from driver_stats.testing.paced import PacedTraffic
from tests.support import assert_counted_once

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]

WINDOW, LATENESS, EPOCH = 2, 1, 1


def arrival_of_records_ending_by(collector: Collector, end: float) -> float | None:
    """When the last record of an interval ending at or before ``end`` arrived (None: none yet)."""
    arrivals = [at for message, at in zip(list(collector.messages), list(collector.arrived_at))
                if message.topic == STATS_TOPIC and decode_stats(message.payload).interval_end.timestamp() <= end]
    return max(arrivals, default=None)


@pytest.mark.parametrize("step", [10, 120, -60])
def test_a_wall_clock_step_mid_stream_closes_nothing_early_and_loses_nothing(mosquitto, tmp_path, step):
    # The step comes as the traffic pauses: the input, idle, moves the stream
    # by the time elapsed (a wall-clock step forward would close the open
    # intervals early and make what follows late; one back would stall it).
    shift = tmp_path / "wall-clock-shift"
    shift.write_text("0")
    collector = Collector(mosquitto, STATS_TOPIC, "rejected/#", client_id="step-collector")
    flow = LiveFlow(mosquitto, tmp_path / "flow", client_id="step", window=WINDOW, lateness=LATENESS, recovery=True,
                    epoch_seconds=EPOCH, wall_clock_shift_file=str(shift)).start()
    publisher = Publisher(mosquitto, client_id="step-publisher")
    try:
        before = PacedTraffic(publisher, count=200, rate=40, drivers=20, window=WINDOW, lateness=LATENESS, seed=1,
                              duplicates=0)
        before.start()
        before.join()
        shift.write_text(str(step))  # the flow's host clock steps; the producers' does not
        paused = time.time()
        # The paused intervals close by the idle input's advance, within the README's bound.
        last = before.messages[-1].at
        last_end = (last // WINDOW + 1) * WINDOW
        due = paused + (last_end - last) + LATENESS
        paused_records = set(expected_stats([m.event for m in before.messages if m.kind in COUNTED_KINDS], WINDOW))

        def paused_records_arrived() -> float | None:
            if paused_records <= set(published_stats(list(collector.messages))[0]):
                return arrival_of_records_ending_by(collector, last_end)
            return None

        closed = wait_for(paused_records_arrived, due + 3 * EPOCH + 2 + 30 - time.time(), "the paused intervals' records")
        assert closed - due <= 3 * EPOCH + 2, f"the paused intervals' records came {closed - due:.1f}s after due"
        after = PacedTraffic(publisher, count=200, rate=40, drivers=20, window=WINDOW, lateness=LATENESS, seed=2,
                             duplicates=0)
        after.start()
        after.join()
        events = [m.event for m in before.messages + after.messages if m.kind in COUNTED_KINDS]
        assert_counted_once(expected_stats(events, WINDOW), collector, flow, timeout=60)
        assert f"wall clock shifted by {step:+g}s" in flow.logs(), "the step never reached the flow"
    finally:
        flow.kill()
        publisher.close()
        collector.close()
