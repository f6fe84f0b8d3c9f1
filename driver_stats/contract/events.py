"""Typed contract messages: the three input events and the stats record.

Field names and meanings follow ``../shared/CONTRACT.md`` one to one. The
structs encode to the proto3 JSON mapping with msgspec (lowerCamelCase names
through ``rename="camel"``, RFC 3339 timestamps, enum names), which is the
history-file format and the optional JSON wire format; :mod:`.codec` moves
them to and from protobuf.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Union

import msgspec


class FinishReason(enum.Enum):
    """How a journey ended; the JSON mapping uses the names, protobuf the numbers."""

    DROP_OFF = "DROP_OFF"
    RIDER_CANCEL = "RIDER_CANCEL"
    DRIVER_CANCEL = "DRIVER_CANCEL"
    ADMIN_CANCEL = "ADMIN_CANCEL"


# Protobuf enum numbers, in the order of the contract's table.
FINISH_REASON_BY_NUMBER: tuple[FinishReason, ...] = tuple(FinishReason)
NUMBER_BY_FINISH_REASON: dict[FinishReason, int] = {r: i for i, r in enumerate(FinishReason)}


class _Message(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """Base of the contract messages: immutable, camelCase in JSON."""


class DriverRated(_Message):
    """A rider rated the driver of a journey (topic ``input/driver_rated``)."""

    driver_id: str = ""
    rider_id: str = ""
    journey_id: str = ""
    rated_at: datetime | None = None
    rating: int = 0

    @property
    def event_time(self) -> datetime | None:
        return self.rated_at


class DriverTipped(_Message):
    """A rider tipped the driver of a journey (topic ``input/driver_tipped``)."""

    driver_id: str = ""
    rider_id: str = ""
    journey_id: str = ""
    tipped_at: datetime | None = None
    amount: int = 0  # euro cents

    @property
    def event_time(self) -> datetime | None:
        return self.tipped_at


class JourneyFinished(_Message):
    """A journey ended (topic ``input/journey_finished``); it counts where it ended."""

    journey_id: str = ""
    driver_id: str = ""
    rider_id: str = ""
    finish_reason: FinishReason = FinishReason.DROP_OFF
    started_at: datetime | None = None
    ended_at: datetime | None = None
    distance: int = 0  # metres, DROP_OFF only
    price: int = 0  # euro cents, DROP_OFF only

    @property
    def event_time(self) -> datetime | None:
        return self.ended_at


Event = Union[DriverRated, DriverTipped, JourneyFinished]
EVENT_TYPES: tuple[type[_Message], ...] = (DriverRated, DriverTipped, JourneyFinished)


class DriverStats(_Message):
    """One driver's totals for one interval ``[interval_start, interval_end)``."""

    driver_id: str
    interval_start: datetime
    interval_end: datetime
    total_drop_offs: int = 0
    total_driver_cancels: int = 0
    total_distance: int = 0
    total_price: int = 0
    total_tips: int = 0
    avg_rating: float = 0.0


class Rejection(msgspec.Struct, frozen=True, gc=False):
    """A message that is not counted, bound for ``rejected/<source_topic>``.

    ``payload`` is the original bytes, republished unchanged; ``reason`` is
    short and stable (a :class:`~driver_stats.contract.reasons.Reason`, or
    ``invalid: <field>`` / ``overflow: <total>``) so consumers can filter on
    it; ``detail`` says more for a person.
    """

    source_topic: str
    payload: bytes
    reason: str
    detail: str = ""
