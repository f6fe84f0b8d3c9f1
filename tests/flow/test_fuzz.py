"""bench/fuzz.py in the suite: a fixed seed, a few thousand messages, nothing escapes.

The fuzzer runs as a program (the suite never imports bench/): its last line
is ``N cases, E escaped, U unaccounted`` and its exit code is non-zero when
anything escaped, went unaccounted, or contradicted the contract. A second
run plants the bugs issue 9 was about back into the core, in the child
process only, and the fuzzer must catch every one: that keeps the tool honest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "bench" / "fuzz.py"


def fuzz(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """Run bench/fuzz.py with ``args``; ``prelude`` is Python run first in the same process."""
    code = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"{prelude}\n"
        f"sys.argv = [{str(FUZZ)!r}, *{list(args)!r}]\n"
        f"runpy.run_path({str(FUZZ)!r}, run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240
    )


def test_no_message_escapes_or_goes_unaccounted():
    # The contract's settings, and 10 s windows without lateness with JSON output.
    result = fuzz("3000", "--seed", "9", "--flow-cases", "300", "--profiles", "default,small-windows")
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "3000 cases, 0 escaped, 0 unaccounted", report
    assert "dataflow: 3" in result.stdout, report  # some hundreds went through build_flow too
    assert result.returncode == 0, report


def test_no_message_escapes_or_goes_unaccounted_under_extreme_legal_settings():
    # Weekly windows, max_future_seconds and state retention of 10^12 s: all
    # values DRIVER_STATS_* accepts today, so interval bounds and wake-up times
    # reach years 0 and 10000+. (bench/fuzz.py skips a profile the settings refuse.)
    result = fuzz("1500", "--seed", "9", "--flow-cases", "120", "--profiles", "weekly,far-future")
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "1500 cases, 0 escaped, 0 unaccounted", report
    assert result.returncode == 0, report


# The three bugs of issue 9, put back by monkeypatching the child process:
# deep JSON raises RecursionError out of the intake; negative / >= 2^32 JSON
# numbers pass validation; a refused event leaves its (empty) interval behind.
PLANTED = r'''
import msgspec
from driver_stats.core import intake, windows
from driver_stats.contract import EVENT_TYPES

_intake_call = intake.Intake.__call__
_lenient = {topic: msgspec.json.Decoder(t) for topic, t in
            zip(("input/driver_rated", "input/driver_tipped", "input/journey_finished"), EVENT_TYPES)}

def intake_call(self, topic, payload, now=None):
    if payload[:1] == b"{" and payload.count(b"[") + payload.count(b"{") > 900 and len(payload) <= 65536:
        raise RecursionError("maximum recursion depth exceeded")
    result = _intake_call(self, topic, payload, now)
    if getattr(result, "reason", "") in ("invalid: amount", "invalid: distance", "invalid: price") \
            and payload[:1] == b"{":
        try:
            event = _lenient[topic].decode(payload)
        except Exception:
            return result
        if event.driver_id and event.journey_id and event.event_time is not None:
            return intake.Accepted(event, event.event_time.timestamp(), topic, payload)
    return result

intake.Intake.__call__ = intake_call

_add = windows.DriverWindows.add

def add(self, event, event_time, now):
    start = int(event_time // self.window) * self.window
    fresh = start not in self.open
    verdict = _add(self, event, event_time, now)
    if fresh and isinstance(verdict, windows.Refused) and verdict.reason.startswith("overflow"):
        self.open[start] = windows.IntervalTotals()
    return verdict

windows.DriverWindows.add = add
'''


def test_the_fuzzer_catches_the_bugs_of_issue_9():
    result = fuzz("2000", "--seed", "9", "--flow-cases", "0", "--show", "40", prelude=PLANTED)
    out = result.stdout
    last = out.splitlines()[-1]
    assert result.returncode == 1, out[-4000:] + result.stderr[-2000:]
    assert last.startswith("2000 cases, ") and " 0 escaped" not in last and " 0 unaccounted" not in last, last
    assert "intake raised RecursionError" in out, out[-4000:]  # deep JSON
    assert re.search(r"accepted, expected \['invalid: (amount|distance|price)'\]", out), out[-4000:]
    assert re.search(r"encoding DriverStats\(.*raised ValueError", out), out[-4000:]  # a negative total
    assert "that got no accepted event" in out, out[-4000:]  # the all-zero record of a refused event
