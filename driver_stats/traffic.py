"""Realistic driver traffic, as plain Python: deterministic for a seed and a start time.

>>> traffic = Traffic(seed=1, drivers=3, start=1_704_110_400.0, rate=10)
>>> [g.kind.value for g in traffic.events(3)]
['valid', 'valid', 'valid']

Message ``i`` is due at ``start + i / rate`` (Unix seconds): the publisher
paces them on the wall clock, so with ``start`` = now event times are the
wall-clock time of publishing. A journey is a :class:`JourneyFinished`
(``started_at`` before ``ended_at``; mostly ``DROP_OFF`` with distance and
price, some cancels with 0) and riders rate and tip some drop-offs a little
later (:class:`DriverRated`, :class:`DriverTipped` with the same journey).
:class:`Journeys` makes these events; :class:`Traffic` paces them, encodes
them and mixes in the knobs below.

Knobs (fractions of all messages, drawn independently per message):

* ``duplicates``: the exact bytes of a recent valid message again, while its
  interval is still open (the flow counts it once; it is in the truth).
* ``late``: an event older than window + allowed lateness for a driver that
  already had accepted events: the flow rejects it as ``late``.
* ``invalid``: undecodable bytes, empty driver_id or journey_id, rating 0 or
  6, a missing event time, started_at after ended_at, an unknown finish
  reason; ``why`` is the reason the flow gives.
* ``out_of_order``: a valid event whose time is earlier than the previous
  ones by less than half the allowed lateness (still accepted).

Each message is a :class:`Generated` whose first three fields are
``(topic, payload, kind)``; kinds are ``valid``, ``out_of_order``,
``duplicate`` (all counted: the truth), ``late`` and ``invalid`` (rejected).
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from datetime import datetime, timezone
from enum import StrEnum
from typing import Iterator, NamedTuple, Optional

import msgspec

from driver_stats.contract import (
    INPUTS,
    DriverRated,
    DriverTipped,
    Event,
    FinishReason,
    JourneyFinished,
    Reason,
    encode_event,
    sharded_topic,
    to_json,
)

UTC = timezone.utc
INPUT_TOPICS = tuple(row.default_topic for row in INPUTS)


class Kind(StrEnum):
    """What a generated message is, so what the flow must do with it."""

    VALID = "valid"
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE = "duplicate"
    LATE = "late"
    INVALID = "invalid"


COUNTED_KINDS = frozenset({Kind.VALID, Kind.OUT_OF_ORDER, Kind.DUPLICATE})

_REASONS = (FinishReason.DROP_OFF, FinishReason.RIDER_CANCEL, FinishReason.DRIVER_CANCEL, FinishReason.ADMIN_CANCEL)
_REASON_WEIGHTS = (85, 7, 5, 3)
_RATINGS = (1, 2, 3, 4, 5)
_RATING_WEIGHTS = (3, 4, 10, 28, 55)
_INVALID_VARIANTS = (
    "undecodable_protobuf",
    "undecodable_json",
    "empty_driver_id",
    "empty_journey_id",
    "rating_out_of_range",
    "missing_event_time",
    "started_after_ended",
    "unknown_finish_reason",
)


class Generated(NamedTuple):
    """One message to publish.

    ``event`` is the decoded event (None for undecodable bytes), ``at`` the
    Unix time the message is due, ``why`` the expected rejection reason
    (``late``, ``invalid: rating``, ``undecodable``...) or ``""``.
    """

    topic: str
    payload: bytes
    kind: Kind
    event: Optional[Event] = None
    at: float = 0.0
    why: str = ""

    @property
    def shard_topic(self) -> str:
        """Where a sharding producer publishes it: ``<topic>/<shard of its driver>``; the plain topic without one."""
        driver = self.event.driver_id if self.event is not None else ""
        return sharded_topic(self.topic, driver) if driver else self.topic


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(round(seconds, 6), UTC)


def _check_knobs(fractions: dict[str, float], drivers: int, rate: float, payload_format: str) -> None:
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a fraction from 0 to 1, not {value}")
    if sum(fractions.values()) > 1.0:
        raise ValueError("duplicates + late + invalid + out_of_order must not exceed 1")
    if drivers < 1:
        raise ValueError("drivers must be at least 1")
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if payload_format not in ("protobuf", "json"):
        raise ValueError("payload_format: protobuf or json")


class Journeys:
    """What happens on the road: drivers (some busier than others), riders,
    journeys, and the ratings and tips riders give a little after drop-offs.

    ``rng`` is shared with :class:`Traffic`, which draws from it in between:
    one seed gives one stream.
    """

    def __init__(self, rng: random.Random, drivers: int, window: float):
        self.rng = rng
        width = max(3, len(str(drivers)))
        self.drivers = [f"driver-{i:0{width}d}" for i in range(1, drivers + 1)]
        self._weights = [rng.paretovariate(2.0) for _ in self.drivers]
        self._prefix = f"{rng.getrandbits(32):08x}"
        self._delay_scale = max(0.5, min(20.0, window / 3))  # seconds from drop-off to rating or tip
        self._journeys = 0
        self._pending: list[tuple[float, int, Event]] = []  # (due, seq, follow-up with no time yet)
        self._seq = 0

    def driver(self) -> str:
        return self.rng.choices(self.drivers, self._weights)[0]

    def journey_id(self) -> str:
        self._journeys += 1
        return f"j-{self._prefix}-{self._journeys:07d}"

    def rider(self) -> str:
        return f"rider-{self.rng.randrange(100000):05d}"

    def next_event(self, now: float, at: float) -> Event:
        """The next event, with event time ``at``: a rating or tip due by ``now``, else a new journey."""
        if self._pending and self._pending[0][0] <= now:
            _, _, template = heapq.heappop(self._pending)
            field = "rated_at" if isinstance(template, DriverRated) else "tipped_at"
            return _replace(template, **{field: _dt(at)})
        journey = self.journey(at)
        self._follow_ups(journey, at)
        return journey

    def journey(self, ended: float, driver: Optional[str] = None) -> JourneyFinished:
        rng = self.rng
        reason = rng.choices(_REASONS, _REASON_WEIGHTS)[0]
        if reason is FinishReason.DROP_OFF:
            minutes = rng.uniform(3, 45)
            distance = int(minutes * rng.uniform(250, 700))
            price = int(250 + distance * 0.11 + minutes * 18)
        else:
            minutes = rng.uniform(0.2, 6)
            distance = price = 0
        return JourneyFinished(
            journey_id=self.journey_id(),
            driver_id=driver or self.driver(),
            rider_id=self.rider(),
            finish_reason=reason,
            started_at=_dt(ended - minutes * 60),
            ended_at=_dt(ended),
            distance=distance,
            price=price,
        )

    def _follow_ups(self, journey: JourneyFinished, ended: float) -> None:
        # Riders rate most drop-offs and tip some.
        if journey.finish_reason is not FinishReason.DROP_OFF:
            return
        common = dict(driver_id=journey.driver_id, rider_id=journey.rider_id, journey_id=journey.journey_id)
        if self.rng.random() < 0.7:
            rating = self.rng.choices(_RATINGS, _RATING_WEIGHTS)[0]
            self._push(ended + self.rng.expovariate(1 / self._delay_scale), DriverRated(rating=rating, **common))
        if self.rng.random() < 0.35:
            amount = self.rng.randrange(50, 1001, 50)
            self._push(ended + self.rng.expovariate(1 / self._delay_scale), DriverTipped(amount=amount, **common))

    def _push(self, due: float, event: Event) -> None:
        self._seq += 1
        heapq.heappush(self._pending, (due, self._seq, event))


class Traffic:
    """Deterministic traffic for ``drivers`` drivers at ``rate`` messages/s.

    ``start`` is the Unix time of the first message (default: now, which makes
    the output depend on when it runs); ``window``/``lateness`` are the flow's
    interval length and allowed lateness, which ``late``, ``duplicates`` and
    ``out_of_order`` need to land on the right side of the lateness bound;
    ``topics`` are the input topics in the order of ``INPUTS``.
    """

    def __init__(
        self,
        seed: int,
        drivers: int = 10,
        *,
        start: Optional[float] = None,
        rate: float = 20.0,
        window: float = 600,
        lateness: float = 30,
        duplicates: float = 0.0,
        late: float = 0.0,
        invalid: float = 0.0,
        out_of_order: float = 0.0,
        topics: tuple[str, ...] = INPUT_TOPICS,
        payload_format: str = "protobuf",
    ):
        fractions = {"duplicates": duplicates, "late": late, "invalid": invalid, "out_of_order": out_of_order}
        _check_knobs(fractions, drivers, rate, payload_format)
        self.seed = seed
        self.rng = random.Random(seed)
        self.start = time.time() if start is None else float(start)
        self.rate = float(rate)
        self.window = float(window)
        self.lateness = float(lateness)
        self.fractions = (duplicates, late, invalid, out_of_order)
        self._topic_of = {row.event_type: topic for row, topic in zip(INPUTS, topics)}
        self._topics = tuple(topics)
        self._encode = encode_event if payload_format == "protobuf" else to_json
        self.journeys = Journeys(self.rng, drivers, self.window)
        self._index = 0
        self._recent: deque[Generated] = deque(maxlen=64)
        self._first_seen: dict[str, float] = {}  # driver -> time of its first counted event

    # -- the stream ---------------------------------------------------------

    def events(self, n: Optional[int] = None) -> Iterator[Generated]:
        """The next ``n`` messages (forever if None); successive calls continue the stream."""
        produced = 0
        while n is None or produced < n:
            yield self.next()
            produced += 1

    def next(self) -> Generated:
        now = round(self.start + self._index / self.rate, 3)
        self._index += 1
        duplicates, late, invalid, out_of_order = self.fractions
        r = self.rng.random()
        generated = None
        if r < invalid:
            generated = self._invalid(now)
        elif r < invalid + late:
            generated = self._late(now)
        elif r < invalid + late + duplicates:
            generated = self._duplicate(now)
        elif r < invalid + late + duplicates + out_of_order:
            generated = self._valid(now, Kind.OUT_OF_ORDER)
        if generated is None:
            generated = self._valid(now, Kind.VALID)
        if generated.kind in (Kind.VALID, Kind.OUT_OF_ORDER):
            self._recent.append(generated)
            self._first_seen.setdefault(generated.event.driver_id, now)
        return generated

    def _emit(self, event: Event, kind: Kind, now: float, why: str = "") -> Generated:
        return Generated(self._topic_of[type(event)], self._encode(event), kind, event, now, why)

    # -- counted traffic ------------------------------------------------------

    def _valid(self, now: float, kind: Kind) -> Generated:
        at = now
        if kind == Kind.OUT_OF_ORDER:
            bound = self.lateness * 0.5 if self.lateness > 0 else (now % self.window) * 0.5
            at = round(now - self.rng.uniform(0, bound), 3)
        return self._emit(self.journeys.next_event(now, at), kind, now)

    def _duplicate(self, now: float) -> Optional[Generated]:
        # Only while the original's interval stays open (with a margin for
        # delivery): later, the flow would call the repeat late.
        for original in reversed(self._recent):
            start = (original.event.event_time.timestamp() // self.window) * self.window
            if start + self.window > now - self.lateness + 2.0:
                return original._replace(kind=Kind.DUPLICATE, at=now)
        return None

    # -- rejected traffic -----------------------------------------------------

    def _late(self, now: float) -> Optional[Generated]:
        # A driver whose clock is surely past the event's interval: it had a
        # counted event a while ago, so its clock is at about now - lateness.
        eligible = [d for d, first in self._first_seen.items() if first <= now - 2.0]
        if not eligible:
            return None
        driver = self.rng.choice(sorted(eligible))
        at = round(now - self.window - self.lateness - self.rng.uniform(1.0, max(1.0, self.window)), 3)
        kind = self.rng.randrange(3)
        common = dict(driver_id=driver, rider_id=self.journeys.rider(), journey_id=self.journeys.journey_id())
        if kind == 0:
            event: Event = DriverRated(rated_at=_dt(at), rating=self.rng.choice(_RATINGS), **common)
        elif kind == 1:
            event = DriverTipped(tipped_at=_dt(at), amount=self.rng.randrange(50, 1001, 50), **common)
        else:
            event = self.journeys.journey(at, driver)
        return self._emit(event, Kind.LATE, now, Reason.LATE)

    def _invalid(self, now: float) -> Generated:
        rng = self.rng
        variant = rng.choice(_INVALID_VARIANTS)
        driver, rider, journey = self.journeys.driver(), self.journeys.rider(), self.journeys.journey_id()
        when = _dt(now)
        rated = DriverRated(driver_id=driver, rider_id=rider, journey_id=journey, rated_at=when, rating=5)
        if variant == "undecodable_protobuf":
            # Field 1 announcing far more bytes than follow: truncated.
            payload = b"\x0a\xff\xff\xff\x0f" + rng.randbytes(rng.randrange(1, 40))
            topic = rng.choice(self._topics)
            return Generated(topic, payload, Kind.INVALID, None, now, Reason.UNDECODABLE)
        if variant == "undecodable_json":
            topic = rng.choice(self._topics)
            return Generated(topic, b'{"driverId": "' + driver.encode(), Kind.INVALID, None, now, Reason.UNDECODABLE)
        if variant == "empty_driver_id":
            return self._emit(_replace(rated, driver_id=""), Kind.INVALID, now, Reason.INVALID.of("driver_id"))
        if variant == "empty_journey_id":
            tipped = DriverTipped(driver_id=driver, rider_id=rider, journey_id="", tipped_at=when, amount=100)
            return self._emit(tipped, Kind.INVALID, now, Reason.INVALID.of("journey_id"))
        if variant == "rating_out_of_range":
            bad_rating = _replace(rated, rating=rng.choice((0, 6)))
            return self._emit(bad_rating, Kind.INVALID, now, Reason.INVALID.of("rating"))
        if variant == "missing_event_time":
            return self._emit(_replace(rated, rated_at=None), Kind.INVALID, now, Reason.INVALID.of("rated_at"))
        finished = self.journeys.journey(now, driver)
        if variant == "started_after_ended":
            bad = _replace(finished, started_at=_dt(now + rng.uniform(1, 600)))
            return self._emit(bad, Kind.INVALID, now, Reason.INVALID.of("started_at"))
        # unknown_finish_reason: a number the contract does not know, appended
        # so it overrides whatever reason the encoded event had.
        bad = _replace(finished, finish_reason=FinishReason.DROP_OFF)
        payload = encode_event(bad) + bytes([0x20, rng.randrange(4, 100)])
        topic = self._topic_of[JourneyFinished]
        return Generated(topic, payload, Kind.INVALID, None, now, Reason.INVALID.of("finish_reason"))


def _replace(event: Event, **changes) -> Event:
    return msgspec.structs.replace(event, **changes)


__all__ = ["Generated", "Kind", "Traffic", "COUNTED_KINDS"]
