"""The contract's protobuf code, structs and codecs."""

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from driver_stats.contract import (
    DecodeError,
    DriverRated,
    DriverStats,
    DriverTipped,
    EventDecoder,
    FinishReason,
    JourneyFinished,
    decode_stats,
    encode_event,
    encode_stats,
    float32,
    stats_interval_end,
    to_json,
)
from driver_stats.contract import events_pb2, stats_pb2
from driver_stats.core.intake import Intake
from driver_stats.settings import Settings
from tests.support import T0, at, finished, rated, tipped

CONTRACT_DIR = Path(__file__).parents[2] / "driver_stats" / "contract"


@pytest.mark.parametrize("proto, generated", [
    ("poc/input/events.proto", "events_pb2"),
    ("poc/output/stats.proto", "stats_pb2"),
])
def test_generated_code_matches_the_proto_files(tmp_path, proto, generated):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{CONTRACT_DIR / 'proto'}",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", proto],
        check=True,
    )
    for suffix in (".py", ".pyi"):
        fresh = (tmp_path / Path(proto).parent / (generated + suffix)).read_text()
        committed = (CONTRACT_DIR / (generated + suffix)).read_text()
        assert fresh == committed, f"{generated}{suffix} drifted from {proto}: regenerate it (README)"


def test_proto_field_numbers_and_types_follow_the_contract():
    def fields(message):
        return {f.name: (f.number, f.type) for f in message.DESCRIPTOR.fields}

    F = events_pb2.DriverRated.DESCRIPTOR.fields[0]
    STRING, UINT32, MESSAGE, ENUM, FLOAT = F.TYPE_STRING, F.TYPE_UINT32, F.TYPE_MESSAGE, F.TYPE_ENUM, F.TYPE_FLOAT
    assert events_pb2.DESCRIPTOR.package == "poc.input"
    assert stats_pb2.DESCRIPTOR.package == "poc.output"
    assert fields(events_pb2.DriverRated) == {
        "driver_id": (1, STRING), "rider_id": (2, STRING), "journey_id": (3, STRING),
        "rated_at": (4, MESSAGE), "rating": (5, UINT32)}
    assert fields(events_pb2.DriverTipped) == {
        "driver_id": (1, STRING), "rider_id": (2, STRING), "journey_id": (3, STRING),
        "tipped_at": (4, MESSAGE), "amount": (5, UINT32)}
    assert fields(events_pb2.JourneyFinished) == {
        "journey_id": (1, STRING), "driver_id": (2, STRING), "rider_id": (3, STRING),
        "finish_reason": (4, ENUM), "started_at": (5, MESSAGE), "ended_at": (6, MESSAGE),
        "distance": (7, UINT32), "price": (8, UINT32)}
    assert fields(stats_pb2.DriverStats) == {
        "driver_id": (1, STRING), "interval_start": (2, MESSAGE), "interval_end": (3, MESSAGE),
        "total_drop_offs": (4, UINT32), "total_driver_cancels": (5, UINT32), "total_distance": (6, UINT32),
        "total_price": (7, UINT32), "total_tips": (8, UINT32), "avg_rating": (9, FLOAT)}
    assert {v.name: v.number for v in events_pb2.FinishReason.DESCRIPTOR.values} == {
        "DROP_OFF": 0, "RIDER_CANCEL": 1, "DRIVER_CANCEL": 2, "ADMIN_CANCEL": 3}


@pytest.mark.parametrize("event", [
    rated("d1", "j1", 1.5, 4),
    tipped("d1", "j1", 2, 250),
    finished("d1", "j1", 3, FinishReason.DRIVER_CANCEL, distance=5, price=7),
])
def test_events_round_trip_through_protobuf_and_json(event):
    decoder = EventDecoder(type(event))
    assert decoder.decode(encode_event(event)) == event
    assert decoder.decode(to_json(event)) == event


def test_json_is_the_proto3_mapping():
    event = finished("d1", "j1", 0.25, FinishReason.ADMIN_CANCEL, distance=3)
    ours = to_json(event)
    reference = json_format.Parse(ours, events_pb2.JourneyFinished())
    assert reference.SerializeToString(deterministic=True) == encode_event(event)
    assert b'"finishReason":"ADMIN_CANCEL"' in ours
    assert b'"endedAt":"2024-01-01T12:00:00.250Z"' in ours.replace(b"250000Z", b"250Z")


def test_stats_encode_deterministically_and_decode_back():
    stats = DriverStats(driver_id="d1", interval_start=T0, interval_end=at(600), total_drop_offs=2,
                        total_distance=3, total_price=30, total_tips=6, avg_rating=float32(7 / 3))
    assert encode_stats(stats) == encode_stats(stats)
    assert decode_stats(encode_stats(stats)) == stats
    assert decode_stats(to_json(stats)) == stats
    parsed = json_format.Parse(to_json(stats), stats_pb2.DriverStats())
    assert parsed.SerializeToString(deterministic=True) == encode_stats(stats)


def test_float32_gives_the_shortest_decimal_of_the_protobuf_float():
    assert float32(7 / 3) == 2.3333333
    assert float32(3.0) == 3.0
    assert float32(0.1) == 0.1


@pytest.mark.parametrize("payload, reason", [
    (b"\xff\xff\xff", "undecodable"),
    (b"{not json", "undecodable"),
    (b'{"rating": "five"}', "undecodable"),
    (events_pb2.JourneyFinished(finish_reason=9).SerializeToString(), "invalid: finish_reason"),
])
def test_decoding_bad_bytes_raises_with_a_reason(payload, reason):
    event_type = JourneyFinished if b"finish" in payload or payload[:1] == b"\x20" else DriverRated
    with pytest.raises(DecodeError) as err:
        EventDecoder(event_type).decode(payload)
    assert err.value.reason == reason


# --- the JSON mapping enforces protobuf's ranges -----------------------------------

NOW = 1e12  # beyond year 9999: no event is "future" in these tests


def verdict(topic: str, payload: bytes) -> str:
    """``accepted`` or the rejection reason the intake gives ``payload``."""
    result = Intake(Settings())(topic, payload, now=NOW)
    return getattr(result, "reason", "accepted")


def tip_json(**fields) -> bytes:
    values = {"driverId": "d1", "journeyId": "j1", "tippedAt": "2024-01-01T12:00:00Z", "amount": 5}
    values.update(fields)
    return json.dumps(values).encode()


@pytest.mark.parametrize("fields, reason", [
    ({"amount": -1}, "invalid: amount"),
    ({"amount": 2**32}, "invalid: amount"),
    ({"amount": 2**32 - 1}, "accepted"),
    ({"amount": "5"}, "undecodable"),
    ({"amount": 5.5}, "undecodable"),
    ({"tippedAt": "0000-12-31T23:59:59Z"}, "invalid: tipped_at"),
    ({"tippedAt": "10000-01-01T00:00:00Z"}, "invalid: tipped_at"),
    ({"tippedAt": "9999-12-31T23:49:59.999999999Z"}, "accepted"),  # the last 600 s interval that ends by 9999
    ({"tippedAt": "9999-12-31T23:59:59.999999999Z"}, "invalid: tipped_at"),  # its interval would end in 10000
    ({"tippedAt": "9999-12-31T23:59:59-00:01"}, "invalid: tipped_at"),
    ({"tippedAt": "0001-01-01T00:00:00+00:01"}, "invalid: tipped_at"),
    ({"tippedAt": "2024-02-30T00:00:00Z"}, "undecodable"),
    ({"tippedAt": "yesterday"}, "undecodable"),
    ({"tippedAt": None}, "invalid: tipped_at"),
])
def test_json_values_outside_the_protobuf_types_are_invalid(fields, reason):
    assert verdict("input/driver_tipped", tip_json(**fields)) == reason


@pytest.mark.parametrize("reason_value, verdict_", [
    ("DRIVER_CANCEL", "accepted"), (2, "accepted"), (0, "accepted"), (3, "accepted"),
    (4, "invalid: finish_reason"), (-1, "invalid: finish_reason"), ("driver_cancel", "invalid: finish_reason"),
    (True, "undecodable"),
])
def test_json_finish_reason_is_a_contract_name_or_number(reason_value, verdict_):
    payload = json.dumps({"driverId": "d1", "journeyId": "j1", "startedAt": "2024-01-01T11:00:00Z",
                          "endedAt": "2024-01-01T12:00:00Z", "finishReason": reason_value}).encode()
    assert verdict("input/journey_finished", payload) == verdict_


def test_a_negative_protobuf_enum_number_is_invalid_not_the_last_value():
    payload = events_pb2.JourneyFinished(finish_reason=-1).SerializeToString()
    with pytest.raises(DecodeError) as err:
        EventDecoder(JourneyFinished).decode(payload)
    assert err.value.reason == "invalid: finish_reason"


@pytest.mark.parametrize("seconds, nanos, reason", [
    (-62_135_596_801, 0, "invalid: tipped_at"),
    (253_402_300_800, 0, "invalid: tipped_at"),
    (2**62, 0, "invalid: tipped_at"),
    (0, -1, "invalid: tipped_at"),
    (0, 1_000_000_000, "invalid: tipped_at"),
    (253_402_300_199, 999_999_999, "accepted"),
    (253_402_300_799, 999_999_999, "invalid: tipped_at"),
])
def test_protobuf_timestamps_outside_the_json_range_are_invalid(seconds, nanos, reason):
    message = events_pb2.DriverTipped(driver_id="d1", journey_id="j1", amount=1)
    message.tipped_at.seconds, message.tipped_at.nanos = seconds, nanos
    assert verdict("input/driver_tipped", message.SerializeToString()) == reason


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deeply_nested_json_is_undecodable_not_a_crash(depth):
    payload = b'{"driverId":"d1","x":' + b"[" * depth + b"]" * depth + b"}"
    result = Intake(Settings(max_message_bytes=10**6))("input/driver_tipped", payload, now=NOW)
    assert (result.reason, result.detail) == ("undecodable", "bad JSON: nested deeper than 32 levels")


def test_brackets_inside_strings_are_not_nesting():
    assert verdict("input/driver_tipped", tip_json(journeyId="[" * 100 + "{" * 100)) == "accepted"


def _rfc3339(value: datetime, nanos: int) -> str:
    return f"{value.year:04d}-" + value.strftime("%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


UINT = st.integers(min_value=-(2**33), max_value=2**33)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    amount=UINT,
    when=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    nanos=st.integers(min_value=0, max_value=999_999_999),
    driver=st.sampled_from(["", "d1"]),
)
def test_protobuf_and_json_of_the_same_event_get_the_same_verdict(amount, when, nanos, driver):
    when = when.replace(microsecond=0, tzinfo=timezone.utc)
    json_payload = tip_json(driverId=driver, amount=amount, tippedAt=_rfc3339(when, nanos))
    json_verdict = verdict("input/driver_tipped", json_payload)
    if not 0 <= amount < 2**32:  # protobuf cannot even carry it
        assert json_verdict == "invalid: amount"
        return
    message = events_pb2.DriverTipped(driver_id=driver, journey_id="j1", amount=amount)
    message.tipped_at.seconds = int(when.timestamp())
    message.tipped_at.nanos = nanos
    protobuf_payload = message.SerializeToString()
    assert verdict("input/driver_tipped", protobuf_payload) == json_verdict
    if json_verdict == "accepted":
        decoder = EventDecoder(DriverTipped)
        assert decoder.decode(json_payload) == decoder.decode(protobuf_payload)  # same instant, same interval


def test_an_interval_whose_end_is_past_year_9999_is_invalid():
    # The record's interval_end must itself be a Timestamp.
    result = Intake(Settings(max_future_seconds=10**12))(
        "input/driver_tipped", tip_json(tippedAt="9999-12-31T23:59:00Z"), now=NOW)
    assert result.reason == "invalid: tipped_at"


def test_the_codec_docstring_examples():
    import doctest

    from driver_stats.contract import codec

    assert doctest.testmod(codec).failed == 0


@given(st.integers(0, 253402300799 - 600), st.integers(0, 999_999))
def test_the_interval_end_read_for_metrics_is_the_decoded_records(seconds, micros):
    end = datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=micros)
    record = DriverStats(driver_id="d", interval_start=end, interval_end=end)
    for payload in (encode_stats(record), to_json(record)):
        assert stats_interval_end(payload) == decode_stats(payload).interval_end.timestamp()
