"""The traffic model (:mod:`driver_stats.traffic`): determinism, realism, knobs."""

from __future__ import annotations

from collections import Counter

import pytest

from driver_stats.contract import DriverRated, DriverTipped, EventDecoder, FinishReason, JourneyFinished
from driver_stats.core.intake import Accepted, Intake
from driver_stats.core.windows import COUNTED, DUPLICATE, LATE, DriverWindows, Refused
from driver_stats.settings import Settings
from driver_stats.traffic import Traffic
from tests.support import T0

START = T0.timestamp()
KNOBS = dict(duplicates=0.1, late=0.1, invalid=0.1, out_of_order=0.1)


def traffic(seed=7, **kw):
    options = dict(drivers=10, start=START, rate=50, window=10, lateness=2)
    options.update(kw)
    return Traffic(seed, **options)


def test_same_seed_and_start_give_the_same_messages():
    a = [(g.topic, g.payload, g.kind) for g in traffic(**KNOBS).events(2000)]
    b = [(g.topic, g.payload, g.kind) for g in traffic(**KNOBS).events(2000)]
    assert a == b
    c = [(g.topic, g.payload, g.kind) for g in traffic(seed=8, **KNOBS).events(2000)]
    assert a != c


def test_events_continue_the_stream_across_calls():
    t = traffic(**KNOBS)
    first = list(t.events(300)) + list(t.events(300))
    assert [g.payload for g in first] == [g.payload for g in traffic(**KNOBS).events(600)]


def test_clean_traffic_is_realistic():
    generated = list(traffic().events(3000))
    assert {g.kind for g in generated} == {"valid"}
    events = [g.event for g in generated]
    journeys = [e for e in events if isinstance(e, JourneyFinished)]
    reasons = Counter(j.finish_reason for j in journeys)
    assert reasons[FinishReason.DROP_OFF] > 0.75 * len(journeys)
    assert reasons[FinishReason.DRIVER_CANCEL] > 0 and reasons[FinishReason.RIDER_CANCEL] > 0
    for j in journeys:
        assert j.started_at < j.ended_at
        if j.finish_reason is FinishReason.DROP_OFF:
            assert j.distance > 0 and j.price > 0
        else:
            assert j.distance == 0 and j.price == 0
    ended = {j.journey_id: j for j in journeys}
    follow_ups = [e for e in events if isinstance(e, (DriverRated, DriverTipped))]
    assert len(follow_ups) > 0.3 * len(journeys)
    for e in follow_ups:
        journey = ended[e.journey_id]  # a rating or tip follows a journey of the same driver
        assert journey.driver_id == e.driver_id and journey.finish_reason is FinishReason.DROP_OFF
        assert e.event_time >= journey.ended_at
        if isinstance(e, DriverRated):
            assert 1 <= e.rating <= 5
    assert len({e.driver_id for e in events}) == 10
    # Event times follow the publishing pace: message i at start + i / rate.
    assert [g.at for g in generated[:3]] == [START, START + 0.02, START + 0.04]
    assert all(g.event.event_time.timestamp() == pytest.approx(g.at, abs=1e-3) for g in generated)


def test_the_fractions_are_roughly_honoured():
    kinds = Counter(g.kind for g in traffic(**KNOBS).events(5000))
    for kind in ("duplicate", "late", "invalid", "out_of_order"):
        assert 0.07 * 5000 < kinds[kind] < 0.13 * 5000, kinds


def test_invalid_messages_are_rejected_by_the_intake_with_the_reason_given():
    settings = Settings(window_seconds=10, allowed_lateness_seconds=2)
    invalid = [g for g in traffic(invalid=1.0).events(400)]
    assert {g.kind for g in invalid} == {"invalid"}
    assert len({g.why for g in invalid}) >= 7
    for g in invalid:
        verdict = Intake(settings, clock=lambda g=g: g.at)(g.topic, g.payload)
        assert not isinstance(verdict, Accepted), g
        assert verdict.reason == g.why


def test_late_messages_are_late_and_the_rest_is_counted():
    """Feed everything, in publishing order, to per-driver windows at the wall-clock of publishing."""
    settings = Settings(window_seconds=10, allowed_lateness_seconds=2)
    intake = Intake(settings, clock=lambda: START + 10**6)
    windows: dict[str, DriverWindows] = {}
    verdicts = Counter()
    for g in traffic(**KNOBS).events(5000):
        if g.kind == "invalid":
            continue
        accepted = intake(g.topic, g.payload)
        assert isinstance(accepted, Accepted), g
        w = windows.setdefault(accepted.event.driver_id, DriverWindows(10, 2))
        verdict = w.add(accepted.event, accepted.event_time, stream_time=g.at)
        w.close_due(g.at)
        verdicts[g.kind, verdict.reason if isinstance(verdict, Refused) else verdict] += 1
    assert set(verdicts) == {("valid", COUNTED), ("out_of_order", COUNTED), ("duplicate", DUPLICATE), ("late", LATE)}


def test_json_payloads_decode_to_the_same_events():
    for g in traffic(payload_format="json").events(200):
        assert g.payload.startswith(b"{")
        decoder = EventDecoder(type(g.event))
        assert decoder.decode(g.payload) == g.event


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="must not exceed 1"):
        traffic(late=0.6, invalid=0.6)
    with pytest.raises(ValueError, match="fraction"):
        traffic(late=-0.1)
