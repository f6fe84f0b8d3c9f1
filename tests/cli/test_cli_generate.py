"""``driver-stats generate`` without a broker: truth files, --start times."""

from __future__ import annotations

import base64
import json
from collections import Counter

from cli.generate import TruthWriter, parse_time
from driver_stats.contract import INPUTS, EventDecoder
from driver_stats.settings import Settings
from driver_stats.traffic import COUNTED_KINDS, Traffic
from tests.support import T0

START = T0.timestamp()
KNOBS = dict(duplicates=0.1, late=0.1, invalid=0.1, out_of_order=0.1)


def test_truth_files_are_proto3_json_that_the_decoder_reads_back(tmp_path):
    traffic = Traffic(7, drivers=10, start=START, rate=50, window=10, lateness=2, payload_format="protobuf", **KNOBS)
    generated = list(traffic.events(1000))
    writer = TruthWriter(tmp_path, Settings().input_topics)
    for g in generated:
        writer.write(g, g.topic)
    writer.close()
    expected = Counter(g.kind for g in generated)
    read_back = []
    for (name, event_type), topic in zip(((r.history_file, r.event_type) for r in INPUTS), Settings().input_topics):
        decoder = EventDecoder(event_type)
        for line in (tmp_path / name).read_bytes().splitlines():
            assert line.startswith(b"{") and b"_" not in line.split(b":")[0]  # lowerCamelCase keys
            read_back.append((topic, decoder.decode(line)))
    counted = [(g.topic, g.event) for g in generated if g.kind in COUNTED_KINDS]
    assert sorted(map(repr, read_back)) == sorted(map(repr, counted))
    line = (tmp_path / "journey_finished.jsonl").read_text().splitlines()[0]
    assert '"finishReason":"' in line and '"endedAt":"2024-01-01T' in line and line.count("Z\"") == 2
    for name, kind in (("late.jsonl", "late"), ("invalid.jsonl", "invalid")):
        records = [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
        assert len(records) == expected[kind]
        wire = [(g.topic, g.payload, g.why) for g in generated if g.kind == kind]
        assert [(r["topic"], base64.b64decode(r["payload"]), r["why"]) for r in records] == wire


def test_parse_time():
    assert parse_time("2024-01-01T12:00:00Z") == START
    assert parse_time("2024-01-01T12:00:00") == START
    assert parse_time(str(START)) == START
