"""The event-time clock follows the stream, not the wall clock (issue 18), on the real flow and broker.

An event that producers published in event-time order is counted, never
late, whatever delayed it on the way: a backlog read by one partition or by
four in two processes, a flow slower than its producers, a frozen broker.
A driver that goes quiet in a busy stream still gets its record, within the
bound the README gives. Window 10 s, allowed lateness 2 s; producers publish
on their drivers' shard topics (``PacedTraffic``).
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone

import pytest

from connectors.mqtt.testing import Collector, Publisher, wait_for
from driver_stats.traffic import Traffic
from driver_stats.contract import STATS_TOPIC, DriverTipped, decode_stats, encode_event, sharded_topic
from driver_stats.testing.live_flow import LiveFlow
from driver_stats.testing.paced import PacedTraffic
from tests.support import assert_counted_once, drain_backlog, rejections

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(180)]

WINDOW, LATENESS, EPOCH = 10, 2, 1
RECORD_BOUND = LATENESS + 3 * EPOCH + 2
"""README: a quiet driver's record is published within the allowed lateness + 3 epochs + 2 s of its interval's end."""


def test_a_backlog_drained_by_1_or_4_partitions_or_2_workers_gives_the_same_records_none_late(mosquitto, tmp_path):
    # 60 s of traffic from 200 drivers, queued while the flow was down: each
    # partition reads its shards at its own pace, the others ahead or behind,
    # and each worker processes its share at its own pace (what one worker
    # processed says nothing of what another still has to).
    traffic = Traffic(5, 200, start=time.time() - 60, rate=80, window=WINDOW, lateness=LATENESS, duplicates=0.05,
                      out_of_order=0.1)
    messages = list(traffic.events(4800))
    one, _ = drain_backlog(mosquitto, tmp_path, "backlog1", messages, WINDOW, LATENESS, partitions=1, processes=1)
    four, _ = drain_backlog(mosquitto, tmp_path, "backlog4", messages, WINDOW, LATENESS, partitions=4, processes=2)
    workers, _ = drain_backlog(mosquitto, tmp_path, "backlog2w", messages, WINDOW, LATENESS, partitions=2,
                               processes=1, workers=2)
    assert one == four == workers and len(one) > 500


def test_traffic_faster_than_the_unacked_cap_lets_the_flow_read_is_all_counted(mosquitto, tmp_path):
    # 100 unacknowledged messages and 1 s epochs: the flow reads at most about
    # 100 messages/s while producers publish 300/s, so it falls ever further behind.
    collector = Collector(mosquitto, STATS_TOPIC, "rejected/#", client_id="slow-collector")
    flow = LiveFlow(mosquitto, tmp_path, client_id="slow", window=WINDOW, lateness=LATENESS, recovery=True,
                    max_unacked_messages=100).start()
    traffic = PacedTraffic(Publisher(mosquitto, client_id="slow-publisher"), count=1100, rate=300, drivers=600,
                           window=WINDOW, lateness=LATENESS)
    try:
        traffic.start()
        traffic.join()
        published = time.time()
        assert_counted_once(traffic.expected(), collector, flow, timeout=90)
        assert max(collector.arrived_at) - published > 5, "the flow was never behind: the test proves nothing"
    finally:
        flow.kill()


def test_a_frozen_broker_makes_nothing_late(mosquitto, tmp_path):
    # 4 s windows: three intervals end during the 12 s freeze, six times the lateness.
    collector = Collector(mosquitto, STATS_TOPIC, "rejected/#", client_id="frozen-collector")
    flow = LiveFlow(mosquitto, tmp_path, client_id="frozen", window=4, lateness=LATENESS, recovery=True).start()
    traffic = PacedTraffic(Publisher(mosquitto, client_id="frozen-publisher"), count=1500, rate=100, drivers=100,
                           window=4, lateness=LATENESS)
    try:
        traffic.start()
        time.sleep(1.5)
        os.kill(mosquitto.pid, signal.SIGSTOP)  # producers keep publishing into their sockets
        time.sleep(12)
        os.kill(mosquitto.pid, signal.SIGCONT)
        traffic.join()
        assert_counted_once(traffic.expected(), collector, flow, timeout=60)
    finally:
        if mosquitto.pid:
            os.kill(mosquitto.pid, signal.SIGCONT)
        flow.kill()


def test_a_quiet_driver_in_a_busy_stream_gets_its_record_within_the_bound(mosquitto, tmp_path):
    collector = Collector(mosquitto, STATS_TOPIC, "rejected/#", client_id="quiet-collector")
    flow = LiveFlow(mosquitto, tmp_path, client_id="quiet", window=WINDOW, lateness=LATENESS, recovery=True,
                    epoch_seconds=EPOCH, partitions_per_topic=2).start()
    publisher = Publisher(mosquitto, client_id="quiet-publisher")
    traffic = PacedTraffic(publisher, count=1000, rate=60, drivers=30, window=WINDOW, lateness=LATENESS)
    try:
        traffic.start()
        time.sleep(2)
        # One event, then silence, while the other drivers keep the stream busy.
        now = time.time()
        tip = DriverTipped(driver_id="quiet-driver", journey_id="q1", tipped_at=datetime.fromtimestamp(now, timezone.utc), amount=42)
        publisher.publish(sharded_topic("input/driver_tipped", "quiet-driver"), [encode_event(tip)])
        end = (int(now) // WINDOW + 1) * WINDOW

        def quiet_record():
            for message, at in zip(list(collector.messages), list(collector.arrived_at)):
                if message.topic == STATS_TOPIC and decode_stats(message.payload).driver_id == "quiet-driver":
                    return decode_stats(message.payload), at

        record, arrived = wait_for(quiet_record, end + LATENESS + RECORD_BOUND + 10 - time.time(),
                                   "the quiet driver's record")
        assert record.total_tips == 42
        assert end + LATENESS <= arrived <= end + RECORD_BOUND, (
            f"published {arrived - end:.1f}s after its interval ended; bound {RECORD_BOUND}s")
        traffic.join()
        assert not rejections(collector)
    finally:
        flow.kill()
