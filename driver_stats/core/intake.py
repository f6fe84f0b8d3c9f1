"""First step of the flow: a message's bytes become a valid event or a rejection.

Nothing here raises into the dataflow, whatever the bytes: every input
message leaves as exactly one :class:`Accepted` or one
:class:`~driver_stats.contract.Rejection` carrying the source topic, the
original bytes and the reason. Limits are explicit: at most
``max_message_bytes`` per payload (``too large``), JSON nested at most
:data:`~driver_stats.contract.json_mapping.MAX_JSON_DEPTH` levels
(``undecodable``), values within their protobuf types (``invalid: <field>``).
"""

from __future__ import annotations

from typing import Callable

import msgspec

from ..contract import EVENT_TYPES, DecodeError, Event, EventDecoder, Reason, Rejection
from ..settings import Settings
from . import wall_clock
from .validation import problem


class Accepted(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A valid event on its way to its driver's intervals.

    The source topic and original bytes ride along so that an event found
    late further on can still be republished unchanged; the input partition
    that read it, so that the window step knows how far it has processed
    each partition (:class:`~driver_stats.core.stream_clock.ProcessedPositions`).
    """

    event: Event
    event_time: float  # Unix seconds
    source_topic: str
    payload: bytes
    partition: int = 0

    def __reduce__(self):
        # Bytewax pickles every item that crosses to another process (the
        # window step is keyed by driver): the payload it was decoded from
        # travels several times cheaper than the struct with its datetimes,
        # and decodes back to the same event.
        return _from_payload, (type(self.event), self.payload, self.event_time, self.source_topic, self.partition)


_DECODERS = {event_type: EventDecoder(event_type) for event_type in EVENT_TYPES}


def _from_payload(event_type: type, payload: bytes, event_time: float, source_topic: str,
                  partition: int) -> Accepted:
    """An :class:`Accepted` back from what its ``__reduce__`` sent (the payload decoded once already)."""
    return Accepted(_DECODERS[event_type].decode(payload), event_time, source_topic, payload, partition)


class Intake:
    """Decodes and validates messages of the three input topics.

    >>> from driver_stats.contract import DriverRated, encode_event
    >>> from datetime import datetime, timezone
    >>> intake = Intake(Settings())
    >>> rated = DriverRated(driver_id="d1", journey_id="j1", rating=9,
    ...                     rated_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
    >>> intake("input/driver_rated", encode_event(rated)).reason
    'invalid: rating'
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = wall_clock.now):
        self._decoders = {
            topic: EventDecoder(event_type) for topic, event_type in settings.input_topic_types().items()
        }
        self._max_bytes = settings.max_message_bytes
        self._max_future = settings.max_future_seconds
        self._window = settings.window_seconds
        self._clock = clock

    def __call__(self, topic: str, payload: bytes, now: float | None = None, partition: int = 0
                 ) -> Accepted | Rejection:
        """One message; ``now`` (wall clock, for the ``future`` rule) defaults to the clock.

        ``partition``: the input partition that read it, which the accepted event carries.
        """
        decoder = self._decoders.get(topic)
        if decoder is None:
            return Rejection(topic, payload, Reason.UNKNOWN_TOPIC, f"{topic!r} is not an input topic")
        if len(payload) > self._max_bytes:
            return Rejection(
                topic, payload, Reason.TOO_LARGE, f"{len(payload)} bytes, at most {self._max_bytes}"
            )
        if now is None:
            now = self._clock()
        try:
            event = decoder.decode(payload)
            found = problem(event, now=now, max_future_seconds=self._max_future, window_seconds=self._window)
            if found:
                return Rejection(topic, payload, *found)
            return Accepted(event, event.event_time.timestamp(), topic, payload, partition)
        except DecodeError as err:
            return Rejection(topic, payload, err.reason, str(err))
        except Exception as err:  # noqa: BLE001 - whatever the bytes, a rejection, never a crash
            return Rejection(topic, payload, Reason.UNDECODABLE, f"{type(err).__name__}: {str(err)[:200]}")

    def newest_event_time(self, messages: list) -> float | None:
        """The newest plausible event time among ``messages`` (with ``.topic`` and ``.payload``), or None.

        For the input's watermark, so it reads as little as it can: an event
        time more than ``max_future_seconds`` ahead (it will be rejected as
        ``future``), or none at all, does not count.
        """
        limit = self._clock() + self._max_future  # once per batch, not per message
        decoders, max_bytes, newest = self._decoders, self._max_bytes, None
        for message in messages:
            decoder = decoders.get(message.topic)
            if decoder is None or len(message.payload) > max_bytes:
                continue
            seconds = decoder.event_seconds(message.payload)
            if seconds is not None and seconds <= limit and (newest is None or seconds > newest):
                newest = seconds
        return None if newest is None else float(newest)

    def batch(self, messages: list) -> list[Accepted | Rejection]:
        """:meth:`__call__` over a batch of messages with ``.topic``, ``.payload`` (and ``.partition``: else 0)."""
        now = self._clock()  # once per batch, not per message
        return [self(message.topic, message.payload, now, getattr(message, "partition", 0)) for message in messages]
