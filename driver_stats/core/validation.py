"""What makes a decoded event valid, per the contract's "Valid means" rule.

:func:`problem` returns ``None`` for a valid event, otherwise the
``(reason, detail)`` pair its rejection carries. The reason names the field
(``invalid: rating``) so consumers of ``rejected/...`` can group by it.
"""

from __future__ import annotations

from datetime import datetime

from ..contract import DriverRated, DriverTipped, Event, JourneyFinished, Reason
from ..contract.limits import TIMESTAMP_MAX_SECONDS, TIMESTAMP_MIN_SECONDS, UINT32_MAX, timestamp_parts

# The event-time field of each event type, by its proto field name.
EVENT_TIME_FIELD: dict[type, str] = {
    DriverRated: "rated_at",
    DriverTipped: "tipped_at",
    JourneyFinished: "ended_at",
}


def _invalid(field: str, detail: str) -> tuple[str, str]:
    return Reason.INVALID.of(field), detail


def _time_problem(field: str, value: datetime | None) -> tuple[str, str] | None:
    if value is None:
        return _invalid(field, f"{field} is missing")
    if value.tzinfo is None:
        return _invalid(field, f"{field} has no UTC offset")
    return None


def problem(
    event: Event, *, now: float, max_future_seconds: float, window_seconds: int
) -> tuple[str, str] | None:
    """Why ``event`` cannot be counted, or ``None`` when it can.

    ``now`` is wall-clock time (Unix seconds): an event time more than
    ``max_future_seconds`` ahead of it is rejected as ``future``, so a device
    with a wrong clock cannot push its driver's event-time clock forward.
    An event whose ``window_seconds`` interval would start before year 0001
    or end after 9999 is invalid: its record could not carry the bounds.
    """
    if not event.driver_id:
        return _invalid("driver_id", "driver_id is empty")
    if not event.journey_id:
        return _invalid("journey_id", "journey_id is empty")
    time_field = EVENT_TIME_FIELD[type(event)]
    event_time = event.event_time
    found = _time_problem(time_field, event_time)
    if found:
        return found
    if isinstance(event, DriverRated):
        if not 1 <= event.rating <= 5:
            return _invalid("rating", f"rating {event.rating} is not in 1..5")
    # The codecs already refuse out-of-range numbers; checked again here so
    # that no total can ever hold a value the output's uint32 fields cannot carry.
    elif isinstance(event, DriverTipped):
        if not 0 <= event.amount <= UINT32_MAX:
            return _invalid("amount", f"amount {event.amount} is not a uint32")
    else:
        for field, value in (("distance", event.distance), ("price", event.price)):
            if not 0 <= value <= UINT32_MAX:
                return _invalid(field, f"{field} {value} is not a uint32")
        found = _time_problem("started_at", event.started_at)
        if found:
            return found
        if event.started_at > event_time:
            return _invalid("started_at", "started_at is after ended_at")
    seconds = timestamp_parts(event_time)[0]
    start = seconds // window_seconds * window_seconds
    if start < TIMESTAMP_MIN_SECONDS or start + window_seconds > TIMESTAMP_MAX_SECONDS:
        return _invalid(time_field, f"its {window_seconds}s interval is outside years 0001..9999")
    ahead = event_time.timestamp() - now
    if ahead > max_future_seconds:
        return (
            Reason.FUTURE,
            f"{time_field} is {ahead:.0f}s ahead of wall-clock time (at most {max_future_seconds}s)",
        )
    return None
