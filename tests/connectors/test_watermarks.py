"""connectors.mqtt.watermarks: a partition's watermark, and the board that reads them all from the broker."""

from __future__ import annotations

import doctest
import math

import pytest

from connectors.mqtt import MQTTConnection
from connectors.mqtt import watermarks as module
from connectors.mqtt.testing import Publisher, wait_for
from connectors.mqtt.watermarks import (
    DONE,
    NOTHING_READ,
    PartitionClock,
    WatermarkBoard,
    encode_watermark,
)


def test_doctests():
    assert doctest.testmod(module).failed == 0


def committed(clock: PartitionClock) -> tuple:
    """End an epoch and commit it: (the watermark to publish or None, whether to say NOTHING_READ)."""
    clock.seal()
    return clock.release(), clock.release_nothing_read()


def test_a_partition_that_read_nothing_never_takes_the_wall_clock_and_says_so_every_idle_epoch():
    clock = PartitionClock(restored=None, now=1000.0)
    clock.idle_emitted(sent=1005.0)
    assert committed(clock) == (None, True)
    assert committed(clock) == (None, False)  # an epoch without an idle probe says nothing
    clock.idle_emitted(sent=1007.0)
    assert committed(clock) == (None, True)  # said again: a board that started since learns it too
    # It reads an event from 2022, a second after its last idle probe.
    clock.emitted(newest=1_650_000_000.0, now=1008.0)
    clock.idle_emitted(sent=1010.0)
    assert committed(clock) == (1_650_000_002.0, False)  # from its event, by the time elapsed since


def test_the_idle_advance_counts_elapsed_time_from_the_newest_event_not_from_a_start_or_a_restart():
    restored = PartitionClock(restored=500.0, now=10_000.0)  # the downtime before does not count
    restored.idle_emitted(sent=10_003.0)
    assert committed(restored) == (503.0, False)
    restored.emitted(newest=499.0, now=10_004.0)  # older than its position: the position stays
    restored.idle_emitted(sent=10_006.0)
    assert committed(restored) == (506.0, False)
    drained = PartitionClock(restored=DONE, now=0.0)  # a drained partition's end is no position
    drained.idle_emitted(sent=5.0)
    assert committed(drained) == (None, True)


@pytest.mark.mqtt
@pytest.mark.timeout(60)
def test_the_board_leaves_out_a_partition_that_read_nothing_until_its_first_watermark(mosquitto):
    connection = MQTTConnection(host=mosquitto.host, port=mosquitto.port)
    publisher = Publisher(mosquitto, client_id="watermark-writer")
    board = WatermarkBoard(connection, "wm").start()
    topic = "connectors-mqtt/watermarks/wm/in-{}".format
    try:
        assert board.of((0, 1, 2)) == {0: -math.inf, 1: -math.inf, 2: -math.inf}  # none yet: all hold back
        publisher.client.publish(topic(0), encode_watermark(100.0), qos=1, retain=True).wait_for_publish(5)
        publisher.publish(topic(1), [NOTHING_READ])
        wait_for(lambda: board.of((0, 1, 2)) == {0: 100.0, 2: -math.inf}, 10, "in-1 left out")
        publisher.client.publish(topic(1), encode_watermark(90.0), qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: board.of((0, 1, 2)) == {0: 100.0, 1: 90.0, 2: -math.inf}, 10, "in-1 counted once read")
        publisher.publish(topic(1), [NOTHING_READ])  # too late: it has a watermark
        publisher.publish(topic(2), [NOTHING_READ])
        wait_for(lambda: board.of((0, 1, 2)) == {0: 100.0, 1: 90.0}, 10, "in-2 left out")
        # Not retained: a board of a later run learns it from the partition again, never from an earlier run.
        later = WatermarkBoard(connection, "wm").start()
        try:
            assert later.of((0, 1, 2)) == {0: 100.0, 1: 90.0, 2: -math.inf}
        finally:
            later.stop()
    finally:
        board.stop()
        publisher.close()
