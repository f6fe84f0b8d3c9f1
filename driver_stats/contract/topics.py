"""The inputs and outputs of the contract by name: one row per input topic.

Each input is one event type on one topic. :data:`INPUTS` says, for each,
which :class:`~driver_stats.settings.Settings` attribute names its topic, the
topic's default name and the history file that holds its events (for
``driver-stats generate --truth`` and ``driver-stats replay``). Everything
that needs "the three inputs" reads this table instead of relying on an order.
"""

from __future__ import annotations

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
