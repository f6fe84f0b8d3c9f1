"""The contract's protobuf code, structs and codecs."""

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from driver_stats.contract import (
    DecodeError,
    DriverRated,
    DriverStats,
    EventDecoder,
    FinishReason,
    JourneyFinished,
    decode_stats,
    encode_event,
    encode_stats,
    float32,
    to_json,
)
from driver_stats.contract import events_pb2, stats_pb2
from tests.factories import T0, at, finished, rated, tipped

CONTRACT_DIR = Path(__file__).parents[1] / "driver_stats" / "contract"


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
