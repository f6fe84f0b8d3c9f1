"""No wall clock moves the stream time (issue 27), on the real flow and broker.

A partition that has read nothing neither holds the stream back nor moves
it: a flow that sat idle before its first events counts events from any
year, stamped by producers with any clock, and a partition that never reads
does not keep the others' records back. Every flow here idles before its
events, and every event time is unlike the host's clock.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from connectors.mqtt.testing import Collector, Publisher, wait_for
from driver_stats.traffic import COUNTED_KINDS
from driver_stats.contract import STATS_TOPIC, DriverTipped, decode_stats, encode_event, input_shard, sharded_topic
from driver_stats.testing.live_flow import LiveFlow, expected_stats
from driver_stats.testing.paced import PacedTraffic
from tests.support import assert_counted_once, rejections

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(180)]

WINDOW, EPOCH = 10, 1
IDLE = 6.0
"""Seconds a flow sits idle, subscribed, before its first event: its input probes itself idle many times over."""
A_YEAR = 365 * 24 * 3600.0


def flush(publisher: Publisher, traffic: PacedTraffic, lateness: int) -> DriverTipped:
    """One event far enough after the traffic to close all of its intervals at once.

    Its own interval closes later, by the idle advance (at most a window plus
    the lateness after it is read): the tests expect its record too.
    """
    after = traffic.messages[-1].at + 3 * WINDOW + lateness
    tip = DriverTipped(driver_id="flush", journey_id="flush", amount=1,
                       tipped_at=datetime.fromtimestamp(after, timezone.utc))
    publisher.publish(sharded_topic("input/driver_tipped", "flush"), [encode_event(tip)])
    return tip


@pytest.mark.parametrize("offset, lateness", [(-A_YEAR, 2), (-90.0, 30)], ids=["last-year", "producers-90s-behind"])
def test_a_flow_that_idled_first_counts_events_far_behind_the_wall_clock(mosquitto, tmp_path, offset, lateness):
    # Last year's history replayed live, in order; or producers whose clocks
    # run 90 s behind the host's, with the default lateness of 30 s.
    collector = Collector(mosquitto, STATS_TOPIC, "rejected/#", client_id="behind-collector")
    flow = LiveFlow(mosquitto, tmp_path, client_id="behind", window=WINDOW, lateness=lateness, recovery=True,
                    epoch_seconds=EPOCH).start()
    publisher = Publisher(mosquitto, client_id="behind-publisher")
    try:
        time.sleep(IDLE)
        traffic = PacedTraffic(publisher, count=600, rate=120, drivers=40, window=WINDOW, lateness=lateness,
                               clock_offset=offset)
        traffic.start()
        traffic.join()
        tip = flush(publisher, traffic, lateness)
        events = [m.event for m in traffic.messages if m.kind in COUNTED_KINDS] + [tip]
        assert_counted_once(expected_stats(events, WINDOW), collector, flow, timeout=60)
    finally:
        flow.kill()
        publisher.close()
        collector.close()


def test_partitions_that_never_read_hold_no_record_back(mosquitto, tmp_path):
    # 4 partitions in 2 processes; every driver's shard is read by in-1, the
    # other three read nothing. Two-year-old events, after idling. The last
    # interval's records close by in-1's idle advance alone.
    partitions, lateness = 4, 2
    drivers = [d for d in (f"driver-{i}" for i in range(400)) if input_shard(d) % partitions == 1][:20]
    collector = Collector(mosquitto, STATS_TOPIC, "rejected/#", client_id="one-collector")
    flow = LiveFlow(mosquitto, tmp_path, client_id="one", window=WINDOW, lateness=lateness, recovery=True,
                    epoch_seconds=EPOCH, processes=2, partitions_per_topic=partitions).start()
    publisher = Publisher(mosquitto, client_id="one-publisher")
    try:
        time.sleep(IDLE)
        offset = -2 * A_YEAR
        first = time.time() + offset
        events = []
        for n in range(240):  # 12 s of traffic at 20 events/s
            due = first + n / 20
            events.append(DriverTipped(driver_id=drivers[n % len(drivers)], journey_id=f"j{n}", amount=n,
                                       tipped_at=datetime.fromtimestamp(due, timezone.utc)))
            time.sleep(max(0.0, due - offset - time.time()))
            publisher.client.publish(sharded_topic("input/driver_tipped", events[-1].driver_id),
                                     encode_event(events[-1]), qos=1)
        ended = time.time()  # the stream ends: in-1 reads nothing more, and idles
        last = events[-1].tipped_at.timestamp()
        last_end = (last // WINDOW + 1) * WINDOW
        expected = expected_stats(events, WINDOW)
        assert_counted_once(expected, collector, flow, timeout=60)
        # The README's bound for a quiet driver's record: lateness + 3 epochs + 2 s after the interval's end
        # (the wall time the stream, moving on by itself, passes it).
        due = ended + (last_end - last) + lateness
        arrived = max(at for message, at in zip(list(collector.messages), list(collector.arrived_at))
                      if message.topic == STATS_TOPIC
                      and decode_stats(message.payload).interval_end.timestamp() == last_end)
        assert arrived - due <= 3 * EPOCH + 2, f"the last interval's records came {arrived - due:.1f}s after due"
    finally:
        flow.kill()
        publisher.close()
        collector.close()


def test_a_flow_restarted_from_recovery_that_idles_counts_events_older_than_the_wall_clock(mosquitto, tmp_path):
    # Its first run reads nothing and is killed; the second idles, reads
    # half of last year's traffic and is killed after its first records;
    # the third idles, then reads the rest. Nothing late, nothing twice.
    lateness = 2
    collector = Collector(mosquitto, STATS_TOPIC, "rejected/#", client_id="again-collector")
    flow = LiveFlow(mosquitto, tmp_path, client_id="again", window=WINDOW, lateness=lateness, recovery=True,
                    epoch_seconds=EPOCH)
    publisher = Publisher(mosquitto, client_id="again-publisher")
    try:
        flow.start()
        time.sleep(IDLE)
        flow.kill()
        flow.start()
        time.sleep(IDLE)
        first = PacedTraffic(publisher, count=600, rate=100, drivers=30, window=WINDOW, lateness=lateness,
                             clock_offset=-A_YEAR, seed=1, duplicates=0)
        first.start()
        first.join()
        wait_for(lambda: any(m.topic == STATS_TOPIC for m in list(collector.messages)), 30, "a first record")
        flow.kill()
        flow.start()
        time.sleep(IDLE)
        # The same producers, their clocks still a year behind: later events.
        second = PacedTraffic(publisher, count=600, rate=100, drivers=30, window=WINDOW, lateness=lateness,
                              clock_offset=-A_YEAR, seed=2, duplicates=0)
        assert second.messages[0].at > first.messages[-1].at
        second.start()
        second.join()
        tip = flush(publisher, second, lateness)
        events = [m.event for m in first.messages + second.messages if m.kind in COUNTED_KINDS] + [tip]
        counts = assert_counted_once(expected_stats(events, WINDOW), collector, flow, timeout=60)
        assert counts["duplicate_records"] == 0 and not rejections(collector)
    finally:
        flow.kill()
        publisher.close()
        collector.close()
