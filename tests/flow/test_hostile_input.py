"""Hostile input must never stop the flow (issue 9, the live "Done when").

The real flow (``python -m bytewax.run flows.driver_stats``, with and without
recovery) gets valid events interleaved with hostile payloads on all three
topics: JSON nested thousands of levels deep, negative and overflowing
numbers, timestamps outside years 0001..9999, unknown enum values, 10 MB
payloads, invalid UTF-8 and random bytes. It must stay up, republish every
hostile payload unchanged on ``rejected/<topic>`` with a ``reason`` of the
contract's class and a ``detail``, and publish exactly the stats of the valid
events: no record with an empty driver_id, none for an interval without an
accepted event. With recovery it must restart from its store after that
traffic and keep counting.

``driver-stats replay`` gets the same kind of lines in history files: exit 0,
each hostile line in ``rejected.jsonl`` with its reason, the valid lines'
stats in ``driver_stats.jsonl``.

Two single-message checks close the file: a 64 KiB message must be decided in
linear time (the worker holds the GIL while it decodes, so one slow message
stalls every driver), and a JSON integer too long for Python's int parser is
still ``invalid: <field>``, like any other value that does not fit.

Expected reasons follow ../shared/CONTRACT.md: a JSON value that does not fit
its protobuf type (negative or > 2^32-1 for uint32, a timestamp outside years
0001..9999, an unknown enum value) is ``invalid: <field>`` "exactly as the
same event in protobuf would be"; bytes that are no message (random, invalid
UTF-8, JSON nested too deep to be read) are ``undecodable``; anything over
DRIVER_STATS_MAX_MESSAGE_BYTES (64 KiB) is ``too large``; a uint32 total that
would wrap is ``overflow: <total>``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from driver_stats.contract import FinishReason, encode_event, events_pb2, to_json
from driver_stats.core.windows import close_order
from tests.support import FINISHED, RATED, T0, TIPPED, finished, rated, tipped, wire
from driver_stats.testing.live_flow import ROOT, LiveFlow, expected_stats, published_stats
from connectors.mqtt.testing import Collector, Publisher

WINDOW, LATENESS = 10, 2
MAX_BYTES = 65536  # DRIVER_STATS_MAX_MESSAGE_BYTES default
TEN_MB = 10 * 1024 * 1024
UINT32_OVER = 2**32  # 4294967296: one more than a uint32 holds
YEAR_10000 = 253402300800  # 10000-01-01T00:00:00Z in Unix seconds
BEFORE_YEAR_1 = -62135596801  # 0000-12-31T23:59:59Z
BIG_TIP = 4_000_000_000  # fits a uint32; two of them in one interval do not

RANDOM = "undecodable or invalid: <field>"  # random bytes: no telling which check catches them first


def reason_ok(expected: str, got: str | None) -> bool:
    if expected == RANDOM:
        return got == "undecodable" or (got or "").startswith("invalid: ") and len(got) > len("invalid: ")
    return got == expected


# -- payload builders -------------------------------------------------------------


def json_with(event, **changes) -> bytes:
    """The event's proto3 JSON mapping with some values replaced (raw Python values)."""
    fields = json.loads(to_json(event))
    fields.update(changes)
    return json.dumps(fields, separators=(",", ":")).encode()


def pb_with(event, edit) -> bytes:
    """The event's protobuf bytes after ``edit(message)`` set values the structs cannot hold."""
    message = {RATED: events_pb2.DriverRated, TIPPED: events_pb2.DriverTipped,
               FINISHED: events_pb2.JourneyFinished}[wire(event)[0]]()
    message.ParseFromString(encode_event(event))
    edit(message)
    return message.SerializeToString()


def set_time(field: str, seconds: int | None = None, nanos: int | None = None):
    def edit(message):
        ts = getattr(message, field)
        if seconds is not None:
            ts.seconds = seconds
        if nanos is not None:
            ts.nanos = nanos
    return edit


def deep_json(event, depth: int) -> bytes:
    """A valid event plus an unknown field holding arrays nested ``depth`` levels deep."""
    return to_json(event)[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"


def deep_object(event, depth: int) -> bytes:
    """A valid event plus an unknown field holding objects nested ``depth`` levels deep."""
    return to_json(event)[:-1] + b',"extra":' + b'{"a":' * depth + b"0" + b"}" * depth + b"}"


def random_bytes(rng: random.Random, size: int, first: int | None = None, line: bool = False) -> bytes:
    """Seeded random bytes; ``line=True`` leaves out line ends (one history line)."""
    out = bytearray(rng.randrange(256) for _ in range(size))
    if line:
        out = bytearray(b if b not in (10, 13) else 0x80 for b in out)
    if first is not None:
        out[0] = first
    elif out[0] == ord("{"):
        out[0] = 0xFF  # protobuf path; JSON-looking junk is its own case
    return bytes(out)


def hostile_traffic(seed: int = 7, *, huge: int = TEN_MB, offset: float = 0.0):
    """(valid events, hostile list, publish order) for the three topics.

    Valid events: drivers d1..d3 and dbig in intervals [0,10), [10,20), [20,30)
    after T0 + ``offset`` seconds (a multiple of the window). Hostile payloads
    carry new journey ids of the same drivers at the same times, so any one
    wrongly accepted changes a record. ``dlonely`` has
    only hostile events: it must get no record. ``dbig``'s FIRST event is a
    uint32 overflow in [0,10) and its only valid event is in [10,20): it must get
    no record for [0,10).

    Returns ``valid``, ``hostile`` = [(time after the offset, topic, payload, expected reason)],
    ``order`` = [(topic, payload)] in event-time order.
    """
    rng = random.Random(seed)
    valid = []
    for i in range(30):
        driver, t, j = f"d{i % 3 + 1}", offset + i + 0.5, f"v{i}"
        kind = (i // 3) % 3
        if kind == 0:
            reason = FinishReason.DRIVER_CANCEL if i % 4 == 0 else FinishReason.DROP_OFF
            valid.append(finished(driver, j, t, reason, distance=100 + i, price=10 + i))
        elif kind == 1:
            valid.append(rated(driver, j, t, 1 + i % 5))
        else:
            valid.append(tipped(driver, j, t, 5 + i))
    valid.append(tipped("d1", "v-big-tip", offset + 2.0, BIG_TIP))  # fits; a second one would wrap the total
    valid.append(finished("dbig", "v-dbig", offset + 15.0, distance=7, price=70))

    def r(t, j, driver="d2", rating=4):
        return rated(driver, j, offset + t, rating)

    def tp(t, j, driver="d2", amount=9):
        return tipped(driver, j, offset + t, amount)

    def fn(t, j, driver="d3"):
        return finished(driver, j, offset + t, distance=11, price=22)

    h: list[tuple[float, str, bytes, str]] = []

    def add(t, event_or_topic, payload: bytes, reason: str):
        topic = event_or_topic if isinstance(event_or_topic, str) else wire(event_or_topic)[0]
        h.append((t, topic, payload, reason))

    # -- input/driver_tipped
    add(1.0, TIPPED, json_with(tp(1.0, "h-big-first", "dbig"), amount=UINT32_OVER), "invalid: amount")
    add(1.2, TIPPED, json_with(tp(1.2, "h-lonely-1", "dlonely"), amount=UINT32_OVER), "invalid: amount")
    add(2.5, TIPPED, to_json(tp(2.5, "h-wraps", "d1", BIG_TIP)), "overflow: total_tips")
    add(3.1, TIPPED, json_with(tp(3.1, "h-neg-amount"), amount=-5), "invalid: amount")
    add(4.1, TIPPED, json_with(tp(4.1, "h-huge-amount"), amount=10**25), "invalid: amount")
    add(5.1, TIPPED, json_with(tp(5.1, "h-year-10000"), tippedAt="10000-01-01T00:00:00Z"), "invalid: tipped_at")
    add(6.1, TIPPED, pb_with(tp(6.1, "h-pb-before-1"), set_time("tipped_at", BEFORE_YEAR_1)), "invalid: tipped_at")
    add(7.1, TIPPED, pb_with(tp(7.1, "h-pb-neg-nanos"), set_time("tipped_at", nanos=-1)), "invalid: tipped_at")
    add(8.1, TIPPED, deep_json(tp(8.1, "h-deep"), 30000), "undecodable")
    add(12.1, TIPPED, json_with(tp(12.1, "h-10mb"), riderId="x" * huge), "too large")
    add(13.1, TIPPED, random_bytes(rng, 64), RANDOM)
    add(14.1, TIPPED, random_bytes(rng, 300, first=ord("{")), "undecodable")
    add(15.1, TIPPED, json_with(tp(15.1, "h-lonely-2", "dlonely"), amount=-1), "invalid: amount")
    # -- input/driver_rated
    add(1.3, RATED, deep_json(r(1.3, "h-deep-1000"), 1000), "undecodable")
    add(2.3, RATED, deep_object(r(2.3, "h-deep-obj"), 10000), "undecodable")
    add(3.3, RATED, json_with(r(3.3, "h-neg-rating"), rating=-1), "invalid: rating")
    add(4.3, RATED, json_with(r(4.3, "h-huge-rating"), rating=UINT32_OVER), "invalid: rating")
    add(5.3, RATED, json_with(r(5.3, "h-year-0"), ratedAt="0000-01-01T00:00:00Z"), "invalid: rated_at")
    add(6.3, RATED, pb_with(r(6.3, "h-pb-year-10000"), set_time("rated_at", YEAR_10000)), "invalid: rated_at")
    add(7.3, RATED, pb_with(r(7.3, "h-pb-nanos"), set_time("rated_at", nanos=1_000_000_000)), "invalid: rated_at")
    add(11.3, RATED, b'{"driverId":"d2","journeyId":"h-utf8","ratedAt":"2024-01-01T12:00:11Z",'
        b'"rating":3,"riderId":"\xff\xfe"}', "undecodable")
    add(16.3, RATED, encode_event(rated("d2", "h-10mb", offset + 16.3, 3, rider="r" * huge)), "too large")
    add(17.3, RATED, random_bytes(rng, 200), RANDOM)
    add(18.3, RATED, json_with(r(18.3, "h-lonely-3", "dlonely"), rating=0), "invalid: rating")
    # -- input/journey_finished
    add(1.6, FINISHED, json_with(fn(1.6, "h-neg-distance"), distance=-3), "invalid: distance")
    add(2.6, FINISHED, json_with(fn(2.6, "h-neg-price"), price=-1), "invalid: price")
    add(3.6, FINISHED, json_with(fn(3.6, "h-huge-distance"), distance=UINT32_OVER), "invalid: distance")
    add(4.6, FINISHED, json_with(fn(4.6, "h-lonely-4", "dlonely"), price=UINT32_OVER), "invalid: price")
    add(5.6, FINISHED, json_with(fn(5.6, "h-enum-name"), finishReason="TELEPORTED"), "invalid: finish_reason")
    add(6.6, FINISHED, json_with(fn(6.6, "h-enum-json-7"), finishReason=7), "invalid: finish_reason")
    add(7.6, FINISHED, pb_with(fn(7.6, "h-enum-7"), lambda m: setattr(m, "finish_reason", 7)),
        "invalid: finish_reason")
    add(8.6, FINISHED, pb_with(fn(8.6, "h-enum-neg"), lambda m: setattr(m, "finish_reason", -1)),
        "invalid: finish_reason")
    add(11.6, FINISHED, json_with(fn(11.6, "h-end-year-0"), endedAt="0000-01-01T00:00:00Z"), "invalid: ended_at")
    add(12.6, FINISHED, json_with(fn(12.6, "h-start-year-10000"), startedAt="10000-01-01T00:00:00Z"),
        "invalid: started_at")
    add(13.6, FINISHED, pb_with(fn(13.6, "h-pb-end-2^62"), set_time("ended_at", 2**62)), "invalid: ended_at")
    add(14.6, FINISHED, deep_json(fn(14.6, "h-deep"), 5000), "undecodable")
    add(21.6, FINISHED, random_bytes(rng, huge), "too large")
    add(22.6, FINISHED, random_bytes(rng, 1000), RANDOM)
    add(23.6, FINISHED, random_bytes(rng, 1), RANDOM)

    keys = [(topic, payload) for _, topic, payload, _ in h]
    assert len(set(keys)) == len(keys), "hostile payloads must be distinct"
    assert all(len(p) <= MAX_BYTES for _, _, p, reason in h if reason != "too large")
    timeline = [((e.event_time - T0).total_seconds() - offset, *wire(e)) for e in valid]
    timeline += [(t, topic, payload) for t, topic, payload, _ in h]
    timeline.sort(key=lambda item: item[0])  # stable: event-time order, so nothing valid is late
    return valid, h, [(topic, payload) for _, topic, payload in timeline]


# -- live -------------------------------------------------------------------------


def arrived(collector, expected: dict, wanted: set) -> bool:
    """Every expected record and every wanted rejection has been published."""
    with collector.lock:
        messages = list(collector.messages)
    got, _, _ = published_stats(messages)
    return set(expected) <= set(got) and wanted <= set(rejected_by_key(collector))


def wait_alive(flow: LiveFlow, predicate, timeout: float, what: str) -> None:
    """Wait for ``predicate``; fail at once, with the log tail, if the flow died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p.returncode for p in flow.procs if p.poll() is not None]
        assert not dead, f"the flow exited ({dead}) while waiting for {what}:\n{flow.logs()[-3000:]}"
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{flow.logs()[-3000:]}")


def publish_all(publisher: Publisher, order) -> None:
    for topic, payload in order:
        publisher.client.publish(topic, payload, qos=1)
    publisher.client.publish("sync", b"", qos=1).wait_for_publish(60)


def rejected_by_key(collector: Collector) -> dict[tuple[str, bytes], list[dict]]:
    out: dict[tuple[str, bytes], list[dict]] = {}
    with collector.lock:
        messages = list(collector.messages)
    for m in messages:
        if m.topic.startswith("rejected/"):
            out.setdefault((m.topic[len("rejected/"):], m.payload), []).append(dict(m.user_properties))
    return out


def short(payload: bytes) -> str:
    return repr(payload[:80]) + (f"...({len(payload)} bytes)" if len(payload) > 80 else "")


def check_rejections(got: dict, hostile, *, exactly_once: bool) -> None:
    problems = []
    for t, topic, payload, reason in hostile:
        props = got.get((topic, payload), [])
        if not props:
            problems.append(f"not rejected: {topic} t={t} {short(payload)}")
            continue
        if exactly_once and len(props) != 1:
            problems.append(f"rejected {len(props)} times: {topic} {short(payload)}")
        for p in props:
            if not reason_ok(reason, p.get("reason")):
                problems.append(f"reason {p.get('reason')!r}, expected {reason!r}: {topic} {short(payload)}")
            if not p.get("detail"):
                problems.append(f"empty detail (reason {p.get('reason')!r}): {topic} {short(payload)}")
    extra = set(got) - {(topic, payload) for _, topic, payload, _ in hostile}
    for topic, payload in sorted(extra)[:10]:
        problems.append(f"a valid event was rejected: {topic} {short(payload)} {got[(topic, payload)]}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def check_records(collector: Collector, valid, *, repeats_allowed: bool) -> None:
    with collector.lock:
        messages = list(collector.messages)
    got, repeats, conflicts = published_stats(messages)
    assert all(s.driver_id for s in got.values()), [s for s in got.values() if not s.driver_id]
    windows_with_events = {(e.driver_id, e.event_time.timestamp() // WINDOW) for e in valid}
    empty = [s for (d, start), s in got.items() if (d, start.timestamp() // WINDOW) not in windows_with_events]
    assert not empty, f"records for intervals without an accepted event: {empty}"
    expected = expected_stats(valid, WINDOW)
    wrong = {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected) if got.get(k) != expected.get(k)}
    assert not wrong, f"records differ (got, expected): {wrong}"
    assert conflicts == 0 and (repeats_allowed or repeats == 0), (repeats, conflicts)


@pytest.mark.mqtt
@pytest.mark.timeout(150)
@pytest.mark.parametrize("recovery", [False, True], ids=["no-recovery", "recovery"])
def test_live_flow_survives_hostile_input_on_all_topics(mosquitto, tmp_path, recovery):
    # Event times at the wall clock, as live traffic is: the flow treats events
    # older than DRIVER_STATS_STATE_RETENTION_SECONDS as late for every driver.
    start = int(time.time()) // WINDOW * WINDOW
    offset = start - T0.timestamp()
    valid, hostile, order = hostile_traffic(offset=offset)
    name = f"hostile-{'r' if recovery else 'n'}"
    collector = Collector(mosquitto, "output/#", "rejected/#", client_id=f"{name}-collector")
    publisher = Publisher(mosquitto, client_id=f"{name}-publisher")
    flow = LiveFlow(mosquitto, tmp_path, client_id=name, window=WINDOW, lateness=LATENESS,
                    recovery=recovery, epoch_seconds=1).start()
    try:
        publish_all(publisher, order)
        expected = expected_stats(valid, WINDOW)
        wanted = {(topic, payload) for _, topic, payload, _ in hostile}

        wait_alive(flow, lambda: arrived(collector, expected, wanted), 60, f"{len(expected)} records and {len(hostile)} rejections")
        time.sleep(1.0)  # let wrong extra records or rejections show up too
        assert all(p.poll() is None for p in flow.procs), flow.logs()[-3000:]
        check_rejections(rejected_by_key(collector), hostile, exactly_once=True)
        check_records(collector, valid, repeats_allowed=False)
        assert "Traceback" not in flow.logs(), flow.logs()[-3000:]

        if recovery:
            time.sleep(3 * flow.epoch_seconds)  # everything committed and acknowledged
            flow.kill(signal.SIGKILL)
            flow.start()
            # Ahead of every driver's clock after ~a minute of traffic and restart,
            # within MAX_FUTURE_SECONDS (300) of the wall clock.
            def after(t):
                return offset + 120 + t

            more = [tipped("d1", "after-1", after(1), 12), rated("d2", "after-2", after(2), 5),
                    finished("dbig", "after-3", after(3), distance=300, price=40),
                    finished("d4", "after-4", after(4), FinishReason.DRIVER_CANCEL, distance=1, price=2),
                    tipped("d4", "after-5", after(8), 3)]
            after_hostile = [
                (125, TIPPED, json_with(tipped("d4", "after-h1", after(5), 1), amount=-7), "invalid: amount"),
                (126, RATED, deep_json(rated("d4", "after-h2", after(6), 2), 20000), "undecodable"),
            ]
            for event in more[:4]:
                publisher.client.publish(*wire(event), qos=1)
            for _, topic, payload, _ in after_hostile:
                publisher.client.publish(topic, payload, qos=1)
            publish_all(publisher, [wire(more[4])])
            all_valid, all_hostile = valid + more, hostile + after_hostile
            expected_all = expected_stats(all_valid, WINDOW)
            wanted_all = {(topic, payload) for _, topic, payload, _ in all_hostile}

            wait_alive(flow, lambda: arrived(collector, expected_all, wanted_all), 40, "the restarted flow's records for the new events")
            time.sleep(1.0)
            # A crash may repeat output since the last snapshot, byte-identical: repeats allowed.
            check_rejections(rejected_by_key(collector), all_hostile, exactly_once=False)
            check_records(collector, all_valid, repeats_allowed=True)
            assert "Traceback" not in flow.logs(), flow.logs()[-3000:]
    finally:
        flow.kill()
        collector.close(), publisher.close()


# -- replay -----------------------------------------------------------------------

FILE_OF = {RATED: "driver_rated.jsonl", TIPPED: "driver_tipped.jsonl", FINISHED: "journey_finished.jsonl"}


def test_replay_survives_hostile_history_lines(tmp_path):
    valid, hostile, _ = hostile_traffic(seed=11, huge=2 * 1024 * 1024)
    rng = random.Random(12)
    hostile += [
        (30.0, RATED, random_bytes(rng, 500, line=True), RANDOM),
        (30.0, TIPPED, random_bytes(rng, 77, first=ord("{"), line=True), "undecodable"),
        (30.0, FINISHED, b"\x00\x01\x02\xc3\x28 junk \xa0\xa1", RANDOM),
        (30.0, TIPPED, random_bytes(rng, 3 * 1024 * 1024, line=True), "too large"),
    ]
    # History files hold the JSON mapping, one message a line: protobuf payloads
    # (and random bytes) with a line end in them cannot be a line; the junk
    # above stands in for binary lines.
    hostile = [h for h in hostile if b"\n" not in h[2] and b"\r" not in h[2]]
    assert len([h for h in hostile if h[3] == RANDOM]) >= 2
    lines: dict[str, list[bytes]] = {}
    for event in valid:
        lines.setdefault(FILE_OF[wire(event)[0]], []).append(to_json(event))
    for _, topic, payload, _ in hostile:
        lines[FILE_OF[topic]].append(payload)
    for name, content in lines.items():
        random.Random(name).shuffle(content)  # history order is free: the input is complete
        (tmp_path / name).write_bytes(b"".join(line + b"\n" for line in content))
    # The overflow case needs the fitting big tip first in its file.
    tips = (tmp_path / FILE_OF[TIPPED]).read_bytes().split(b"\n")[:-1]
    first = to_json(tipped("d1", "v-big-tip", 2.0, BIG_TIP))
    wraps = next(p for _, topic, p, reason in hostile if reason == "overflow: total_tips")
    tips = [first] + [t for t in tips if t not in (first, wraps)] + [wraps]
    (tmp_path / FILE_OF[TIPPED]).write_bytes(b"".join(line + b"\n" for line in tips))

    env = dict(os.environ, PYTHONPATH=str(ROOT), DRIVER_STATS_WINDOW_SECONDS=str(WINDOW))
    run = subprocess.run([sys.executable, "-m", "cli", "replay", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]

    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    got: dict[tuple[str, bytes], list[dict]] = {}
    for record in rejected:
        line = record["line"].encode() if "line" in record else base64.b64decode(record["line_base64"])
        got.setdefault((record["topic"], line), []).append(record)
    check_rejections(got, hostile, exactly_once=True)

    records = [json.loads(line) for line in (tmp_path / "driver_stats.jsonl").read_text().splitlines()]
    assert all(r.get("driverId") for r in records), [r for r in records if not r.get("driverId")]
    expected = [json.loads(to_json(s)) for s in close_order(expected_stats(valid, WINDOW).values())]
    extra = [r for r in records if r not in expected]
    missing = [r for r in expected if r not in records]
    assert records == expected, f"extra records: {extra}\nmissing records: {missing}"
    counts = Counter(r["reason"] for r in rejected)
    print("replay rejected by reason:", dict(counts))


# -- single messages that must stay cheap or keep their reason class ----------------

# Under 64 KiB, more than 32 brackets, then thousands of escaped quotes and no
# closing one: a string-skipping scan that restarts at every quote is quadratic.
ESCAPED_QUOTES = (b"{" * 33 + b'"' + b'\\"' * 32_700)[:MAX_BYTES]
DECODE_ONE = """
import sys, time
from driver_stats.core.intake import Intake
from driver_stats.settings import Settings
payload = sys.stdin.buffer.read()
intake = Intake(Settings())
started = time.perf_counter()
result = intake(sys.argv[1], payload)
print(getattr(result, "reason", "accepted"), round(time.perf_counter() - started, 3))
"""


def test_one_message_under_the_size_limit_is_rejected_in_linear_time():
    """A 64 KiB message must cost the flow milliseconds, not seconds: its worker
    holds the GIL while it decodes, so a slow message stalls every driver."""
    payload = ESCAPED_QUOTES
    assert len(payload) <= MAX_BYTES
    try:  # in a subprocess: a quadratic decoder would hold this test for minutes
        run = subprocess.run([sys.executable, "-c", DECODE_ONE, RATED], input=payload, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=8)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"deciding on one {len(payload)}-byte message took more than 8 s") from None
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    reason, seconds = run.stdout.decode().split()
    assert reason == "undecodable"
    assert float(seconds) < 2.0, f"one {len(payload)}-byte message took {seconds}s to decode"


@pytest.mark.parametrize("digits", [4300, 5000, 60_000])
def test_a_json_integer_of_any_length_that_does_not_fit_is_invalid_field(digits):
    """CONTRACT: a JSON value that does not fit its uint32 is ``invalid: <field>``,
    however many digits it has (Python's int parser stops at 4300 by default)."""
    from driver_stats.core.intake import Intake
    from driver_stats.settings import Settings

    intake = Intake(Settings())
    for sign in ("", "-"):
        payload = json_with(tipped("d1", "j1", 1, 5), amount=0).replace(
            b'"amount":0', b'"amount":' + sign.encode() + b"9" * digits)
        assert len(payload) <= MAX_BYTES
        result = intake(TIPPED, payload)
        assert getattr(result, "reason", "accepted") == "invalid: amount", \
            (sign, digits, getattr(result, "detail", "")[:200])
