"""`driver-stats replay` over hand-built history files, and the file connector."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.files import CollectSink, FileMessage, FileSource
from cli import main
from driver_stats.contract import DriverStats, FinishReason, to_json
from driver_stats.contract import INPUTS
from tests.support import at, finished, rated, seed_events, tipped

FILE_OF = {row.event_type: row.history_file for row in INPUTS}


def write_history(directory: Path, events, *, extra_lines: dict[str, list[bytes]] | None = None) -> None:
    lines: dict[str, list[bytes]] = {}
    for event in events:
        lines.setdefault(FILE_OF[type(event)], []).append(to_json(event))
    for name, more in (extra_lines or {}).items():
        lines.setdefault(name, []).extend(more)
    for name, content in lines.items():
        (directory / name).write_bytes(b"".join(line + b"\n" for line in content))


def replay(directory: Path, *args: str, window: int = 10, monkeypatch=None) -> int:
    monkeypatch.setenv("DRIVER_STATS_WINDOW_SECONDS", str(window))
    return main(["replay", str(directory), "--quiet", *args])


def records(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "driver_stats.jsonl").read_text().splitlines()]


def stats(driver, start, **totals) -> dict:
    record = DriverStats(driver_id=driver, interval_start=at(start), interval_end=at(start + 10), **totals)
    return json.loads(to_json(record))


def test_the_seed_scenario_as_history(tmp_path, monkeypatch):
    write_history(tmp_path, seed_events())
    assert replay(tmp_path, monkeypatch=monkeypatch) == 0
    assert records(tmp_path) == [
        stats("driver-1", 0, total_drop_offs=2, total_driver_cancels=1, total_distance=3, total_price=30,
              total_tips=6, avg_rating=3.0),
        stats("driver-2", 0, avg_rating=5.0),
        stats("driver-1", 10, total_drop_offs=1, total_distance=1, total_price=10),
    ]
    assert (tmp_path / "rejected.jsonl").read_text() == ""


def test_shuffled_history_with_duplicates_gives_exactly_the_expected_records(tmp_path, monkeypatch):
    events = []
    for d in range(3):
        driver = f"d{d}"
        for i in range(30):  # three intervals of 10 s per driver
            t = i + d * 0.1
            j = f"{driver}-j{i}"
            reason = FinishReason.DRIVER_CANCEL if i % 7 == 0 else FinishReason.DROP_OFF
            events.append(finished(driver, j, t, reason, distance=100 * i, price=10 * i))
            events.append(rated(driver, j, t + 0.5, 1 + i % 5))
            if i % 3 == 0:
                events.append(tipped(driver, j, t + 0.5, 50))
    expected = []
    for start in (0, 10, 20):  # a rating or tip at i + 0.5..0.7 s is in the interval of journey i
        for d in range(3):
            journeys = range(start, start + 10)
            drop = [i for i in journeys if i % 7 != 0]
            ratings = [1 + i % 5 for i in journeys]
            expected.append(stats(
                f"d{d}", start, total_drop_offs=len(drop), total_driver_cancels=10 - len(drop),
                # Distance and price count for every journey ended in the interval.
                total_distance=sum(100 * i for i in journeys), total_price=sum(10 * i for i in journeys),
                total_tips=50 * len([i for i in journeys if i % 3 == 0]),
                avg_rating=float(f"{sum(ratings) / len(ratings):.7g}"),
            ))
    shuffled = events + random.Random(1).sample(events, 40)  # repeats, counted once
    random.Random(2).shuffle(shuffled)
    write_history(tmp_path, shuffled)
    assert replay(tmp_path, monkeypatch=monkeypatch) == 0
    got = records(tmp_path)
    assert [(r["intervalStart"], r["driverId"]) for r in got] == sorted((r["intervalStart"], r["driverId"]) for r in got)
    assert got == expected


def test_invalid_lines_go_to_rejected_jsonl(tmp_path, monkeypatch):
    good = tipped("d1", "j1", 1, 5)
    bad_rating = to_json(rated("d1", "j2", 2, 6))
    write_history(tmp_path, [good], extra_lines={
        "driver_rated.jsonl": [bad_rating, b'{"driverId": "d1", "journeyId": ', b"   "],
        "journey_finished.jsonl": [to_json(finished("", "j3", 3))],
    })
    assert replay(tmp_path, monkeypatch=monkeypatch) == 0
    assert records(tmp_path) == [stats("d1", 0, total_tips=5)]
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    by_reason = {r["reason"]: r for r in rejected}
    assert set(by_reason) == {"invalid: rating", "undecodable", "invalid: driver_id"}  # the blank line is skipped
    assert by_reason["invalid: rating"]["line"] == bad_rating.decode()
    assert by_reason["invalid: rating"]["topic"] == "input/driver_rated"
    assert by_reason["invalid: driver_id"]["topic"] == "input/journey_finished"
    assert all(r["detail"] for r in rejected)


def test_missing_files_are_fine_and_output_is_replaced(tmp_path, monkeypatch):
    (tmp_path / "driver_stats.jsonl").write_text("stale\n")
    write_history(tmp_path, [tipped("d1", "j1", 1, 5)])
    assert not (tmp_path / "driver_rated.jsonl").exists()
    assert replay(tmp_path, monkeypatch=monkeypatch) == 0
    assert records(tmp_path) == [stats("d1", 0, total_tips=5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver_stats.jsonl", "driver_tipped.jsonl", "rejected.jsonl"]


def test_an_empty_directory_gives_empty_output(tmp_path, monkeypatch):
    assert replay(tmp_path, monkeypatch=monkeypatch) == 0
    assert (tmp_path / "driver_stats.jsonl").read_text() == ""


def test_window_option_and_workers(tmp_path, monkeypatch):
    write_history(tmp_path, seed_events())
    assert replay(tmp_path, "--window", "600", "--workers", "2", monkeypatch=monkeypatch) == 0
    got = records(tmp_path)
    assert {r["driverId"] for r in got} == {"driver-1", "driver-2"}
    assert all(r["intervalEnd"] == "2024-01-01T12:10:00Z" for r in got)


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "cli", "replay", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "is not a directory" in run.stderr
    run = subprocess.run([sys.executable, "-m", "cli", "replay", str(tmp_path)],
                         capture_output=True, text=True, timeout=60,
                         env={"DRIVER_STATS_WINDOW_SECONDS": "zero", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "DRIVER_STATS_WINDOW_SECONDS='zero' is invalid" in run.stderr


def test_progress_goes_to_stderr(tmp_path):
    write_history(tmp_path, seed_events())
    run = subprocess.run([sys.executable, "-m", "cli", "replay", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env={"DRIVER_STATS_WINDOW_SECONDS": "10",
                                                                          "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert "9 events read" in run.stderr and "wrote 3 records" in run.stderr


# -- the file connector ---------------------------------------------------------


def test_file_source_resumes_from_its_snapshot_offset(tmp_path):
    path = tmp_path / "driver_tipped.jsonl"
    lines = [to_json(tipped("d1", f"j{i}", i, 1)) for i in range(5)]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    source = FileSource([(path, "input/driver_tipped")], batch_size=2)
    assert source.list_parts() == [str(path)]
    part = source.build_part("in", str(path), None)
    first = part.next_batch()
    assert first == [FileMessage("input/driver_tipped", lines[0]), FileMessage("input/driver_tipped", lines[1])]
    offset = part.snapshot()
    part.close()
    resumed = source.build_part("in", str(path), offset)
    rest = resumed.next_batch() + resumed.next_batch()
    assert [m.payload for m in rest] == lines[2:]
    with pytest.raises(StopIteration):
        resumed.next_batch()
    resumed.close()


def test_the_flow_over_file_partitions_and_the_collect_sink(tmp_path):
    from bytewax.testing import run_main

    from driver_stats.settings import Settings
    from flows.driver_stats import build_flow

    write_history(tmp_path, seed_events())
    files = [(tmp_path / row.history_file, topic) for row, topic in zip(INPUTS, Settings().input_topics)]
    out: list = []
    run_main(build_flow(Settings(window_seconds=10), FileSource(files), CollectSink(out), complete_input=True))
    assert len(out) == 3 and {m.topic for m in out} == {"output/driver_stats"}
