"""The inputs and outputs of the contract by name: one row per input topic.

Each input is one event type on one topic. :data:`INPUTS` says, for each,
which :class:`~driver_stats.settings.Settings` attribute names its topic, the
topic's default name and the history file that holds its events (for
``driver-stats generate --truth`` and ``driver-stats replay``). Everything
that needs "the three inputs" reads this table instead of relying on an order.

Each input topic ``t`` also has :data:`INPUT_SHARDS` *shard* topics
``t/<s>``: a producer that publishes a driver's events on
``t/<input_shard(driver_id)>`` (:func:`sharded_topic`) lets the flow's
input partitions each read only their shards, so every message is read
once and a driver's events stay in publish order on one partition. The
plain topics keep working (all read by one partition).

>>> input_shard("driver-42"), sharded_topic("input/driver_rated", "driver-42")
(47, 'input/driver_rated/47')
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

from .events import DriverRated, DriverTipped, JourneyFinished


class Input(NamedTuple):
    """One input of the flow."""

    event_type: type
    setting: str
    """The Settings attribute (and ``DRIVER_STATS_<SETTING>`` variable) of its topic."""
    default_topic: str
    history_file: str
    """File name of its events in a history directory (proto3 JSON, one per line)."""


INPUTS: tuple[Input, ...] = (
    Input(DriverRated, "topic_driver_rated", "input/driver_rated", "driver_rated.jsonl"),
    Input(DriverTipped, "topic_driver_tipped", "input/driver_tipped", "driver_tipped.jsonl"),
    Input(JourneyFinished, "topic_journey_finished", "input/journey_finished", "journey_finished.jsonl"),
)
INPUT_OF: dict[type, Input] = {row.event_type: row for row in INPUTS}

STATS_TOPIC = "output/driver_stats"
"""Default topic of the stats records."""
REJECTED_PREFIX = "rejected/"
"""Default prefix of the rejected topics: ``rejected/<source topic>``."""


def reasons_prefix(rejected_prefix: str) -> str:
    """Where a 3.1.1 output puts each rejection's envelope (reason, detail, bytes): ``rejected-reasons/<source topic>``.

    >>> reasons_prefix("rejected/"), reasons_prefix("dead")
    ('rejected-reasons/', 'dead-reasons/')
    """
    return rejected_prefix.rstrip("/") + "-reasons/"

INPUT_SHARDS = 64
"""Shard topics per input topic: fixed, since producers compute the shard too. It
bounds the useful input partitions (``DRIVER_STATS_PARTITIONS_PER_TOPIC``)."""


def input_shard(driver_id: str) -> int:
    """The shard of ``driver_id``'s events: CRC-32 (zlib, IEEE) of its UTF-8 bytes, modulo :data:`INPUT_SHARDS`."""
    return zlib.crc32(driver_id.encode("utf-8", "surrogatepass")) % INPUT_SHARDS


def sharded_topic(topic: str, driver_id: str) -> str:
    """Where a producer publishes ``driver_id``'s event of input ``topic``: ``<topic>/<shard>``."""
    return f"{topic}/{input_shard(driver_id)}"
