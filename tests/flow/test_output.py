"""The live flow's output without recovery (issue 20): nothing waits for a commit that never comes.

With recovery (``-r``) a record leaves once the snapshot of its epoch is
committed; without it there is no commit, and the sink publishes each record
and rejection as soon as the dataflow produces it.
"""

from __future__ import annotations

import time

import pytest

from connectors.mqtt.testing import Collector, Publisher, wait_for
from driver_stats.testing.live_flow import LiveFlow
from tests.support import RATED, rated, wire

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


def test_without_recovery_a_late_events_rejection_is_published_within_a_second(mosquitto, tmp_path):
    # The old sink waited for the end of the epoch (10 s here, Bytewax's
    # default) although no commit was coming.
    rejected = Collector(mosquitto, f"rejected/{RATED}", client_id="no-recovery-collector")
    publisher = Publisher(mosquitto, client_id="no-recovery-publisher")
    flow = LiveFlow(mosquitto, tmp_path, client_id="no-recovery", window=10, lateness=1, epoch_seconds=10)
    try:
        flow.start()
        topic, on_time = wire(rated("d1", "j-new", 100, 5))
        _, late = wire(rated("d1", "j-old", 0, 4))  # its interval closed at 100 - 1 on d1's clock
        publisher.publish(topic, [on_time])
        sent = time.time()
        publisher.publish(topic, [late])
        wait_for(lambda: rejected.messages, 15, "the late event's rejection")
        assert dict(rejected.messages[0].user_properties)["reason"] == "late"
        delay = rejected.arrived_at[0] - sent
        assert delay < 1.0, f"the rejection came {delay:.1f}s after the event"
    finally:
        flow.kill()
        rejected.close()
        publisher.close()
