"""The CLI against a private mosquitto: tail, generate, live flow = replay (parity), demo."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from driver_stats.contract import DriverStats, EventDecoder, decode_stats, encode_stats, to_json
from driver_stats.contract import INPUTS
from cli.demo import flow_subscribed
from tests.support import at, rated, stop_process_groups

pytestmark = pytest.mark.mqtt

CLI = [sys.executable, "-m", "cli"]
TOPICS = ("input/driver_rated", "input/driver_tipped", "input/journey_finished")


def clean_env(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIVER_STATS_")}
    env.update({f"DRIVER_STATS_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Collector:
    """A v5 subscriber that keeps every message it receives."""

    def __init__(self, broker, topics: list[str]):
        self.messages: list[tuple[str, bytes, tuple]] = []
        self.last = time.monotonic()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, msg):
        props = tuple(tuple(p) for p in (getattr(msg.properties, "UserProperty", None) or ()))
        self.messages.append((msg.topic, bytes(msg.payload), props))
        self.last = time.monotonic()

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - self.last < quiet:
            time.sleep(0.1)

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish_v5(broker, items: list[tuple[str, bytes, tuple]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload, user_properties in items:
            props = None
            if user_properties:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = list(user_properties)
            client.publish(topic, payload, qos=1, properties=props).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def read_stderr_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """Read proc.stderr lines (in a thread) until one contains ``needle``."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen within {timeout}s: {seen}")


# -- tail -------------------------------------------------------------------------


def test_tail_prints_stats_and_rejected_messages_as_json_lines(mosquitto):
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    proc = subprocess.Popen([*CLI, "tail", "--count", "2", "--timeout", "20", "--url", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        read_stderr_until(proc, "subscribed to output/driver_stats rejected/#", 15)
        stats = DriverStats(driver_id="d1", interval_start=at(0), interval_end=at(10), total_drop_offs=2,
                            total_distance=1500, total_price=990, total_tips=200, avg_rating=4.5)
        bad = b"\x0a\xff\xff"
        publish_v5(mosquitto, [
            ("output/driver_stats", encode_stats(stats), ()),
            ("rejected/input/driver_rated", bad, (("reason", "undecodable"), ("detail", "bad protobuf: x"))),
        ])
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == {"topic": "output/driver_stats", **json.loads(to_json(stats))}
    assert first["intervalStart"] == "2024-01-01T12:00:00Z" and first["avgRating"] == 4.5
    assert second == {"topic": "rejected/input/driver_rated", "reason": "undecodable",
                      "detail": "bad protobuf: x", "payload": base64.b64encode(bad).decode()}


def test_tail_decodes_input_topics_and_json_payloads(mosquitto):
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    proc = subprocess.Popen([*CLI, "tail", "input/#", "--count", "1", "--timeout", "20", "--url", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        read_stderr_until(proc, "subscribed", 15)
        event = rated("d1", "j1", 3, 4)
        publish_v5(mosquitto, [("input/driver_rated", to_json(event), ())])
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert json.loads(out) == {"topic": "input/driver_rated", **json.loads(to_json(event))}


# -- generate ---------------------------------------------------------------------


def test_generate_publishes_count_messages_and_writes_the_truth(mosquitto, tmp_path):
    collector = Collector(mosquitto, ["input/#"])
    try:
        run = subprocess.run(
            [*CLI, "generate", "--count", "120", "--rate", "400", "--drivers", "4", "--seed", "5",
             "--invalid", "0.1", "--late", "0.1", "--duplicates", "0.1", "--truth", str(tmp_path),
             "--url", f"mqtt://{mosquitto.host}:{mosquitto.port}"],
            capture_output=True, text=True, timeout=60, env=clean_env(window_seconds=10, allowed_lateness_seconds=2),
        )
        assert run.returncode == 0, run.stderr
        assert "published 120 messages" in run.stderr
        deadline = time.monotonic() + 10
        while len(collector.messages) < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        collector.stop()
    assert len(collector.messages) == 120
    received = [(t, p) for t, p, _ in collector.messages]
    decoders = {topic: EventDecoder(row.event_type) for row, topic in zip(INPUTS, TOPICS)}
    truth = [
        repr((topic, decoders[topic].decode(line)))
        for name, topic in zip((row.history_file for row in INPUTS), TOPICS)
        for line in (tmp_path / name).read_bytes().splitlines()
    ]
    rejected = [json.loads(line) for name in ("late.jsonl", "invalid.jsonl")
                for line in (tmp_path / name).read_text().splitlines()]
    assert len(truth) + len(rejected) == 120 and len(rejected) > 5
    # What was published is exactly what the truth files say.
    rejected_wire = {(r["topic"], base64.b64decode(r["payload"])) for r in rejected}
    assert rejected_wire <= set(received)
    # Events go to their drivers' shard topics, <topic>/<shard>.
    assert all(t.rsplit("/", 1)[0] in decoders and t.rsplit("/", 1)[1].isdigit() for t, _ in received
               if (t, _) not in rejected_wire)
    counted = [repr((t.rsplit("/", 1)[0], decoders[t.rsplit("/", 1)[0]].decode(p))) for t, p in received
               if (t, p) not in rejected_wire]
    assert sorted(counted) == sorted(truth)


# -- the live flow against replay ------------------------------------------------------


def test_parity_the_live_flow_publishes_what_replay_computes_from_the_truth(mosquitto, tmp_path):
    window, lateness = 3, 1
    env = clean_env(mqtt_url=f"mqtt://{mosquitto.host}:{mosquitto.port}", window_seconds=window,
                    allowed_lateness_seconds=lateness, client_id=f"parity-{uuid.uuid4().hex[:8]}")
    flow_log = tmp_path / "flow.log"
    with open(flow_log, "wb") as log:
        # -s 1 as the README advises without -r: watermarks move once per epoch.
        flow = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.driver_stats", "-s", "1"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    collector = Collector(mosquitto, ["output/driver_stats", "rejected/#"])
    truth = tmp_path / "truth"
    try:
        # The flow's input session must exist before anything is published.
        deadline = time.monotonic() + 20
        while not flow_subscribed(mosquitto.log_tail(200) + flow_log.read_text(), env["DRIVER_STATS_CLIENT_ID"]):
            assert flow.poll() is None, flow_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the flow did not subscribe: " + flow_log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)  # its SUBACKs
        run = subprocess.run([*CLI, "generate", "--count", "400", "--rate", "100", "--drivers", "10", "--seed", "11",
                              "--duplicates", "0.05", "--truth", str(truth)],
                             capture_output=True, text=True, timeout=60, env=env)
        assert run.returncode == 0, run.stderr
        run = subprocess.run([*CLI, "replay", str(truth), "--quiet"], capture_output=True, text=True, timeout=60,
                             env=env)
        assert run.returncode == 0, run.stderr
        replayed = sorted((truth / "driver_stats.jsonl").read_bytes().splitlines())
        assert len(replayed) >= 10 * 2
        # Every interval closes once the stream passed its end + lateness: the
        # last ones when the idle input's watermarks move on.
        deadline = time.monotonic() + 60
        while len(collector.messages) < len(replayed) and time.monotonic() < deadline:
            time.sleep(0.2)
        collector.wait_quiet(1.5, 10)
    finally:
        collector.stop()
        stop_process_groups(flow)
    assert not [m for m in collector.messages if m[0] != "output/driver_stats"], "nothing may be rejected"
    live = sorted(to_json(decode_stats(p)) for t, p, _ in collector.messages)
    assert live == replayed


# -- demo ---------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_shows_stats_for_several_drivers_and_ctrl_c_leaves_no_process(tmp_path, broker):
    # amqtt is the pure-Python broker used where mosquitto is not installed.
    proc = subprocess.Popen([*CLI, "demo", "--no-table", "--duration", "60", "--window", "3", "--lateness", "1",
                             "--rate", "40", "--drivers", "5", "--broker", broker],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
                            start_new_session=True)
    drivers: set[str] = set()
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 40
        while len(drivers) < 3 and time.monotonic() < deadline:
            try:
                record = json.loads(lines.get(timeout=0.5))
            except queue.Empty:
                assert proc.poll() is None, proc.stderr.read()
                continue
            if record["topic"] == "output/driver_stats":
                drivers.add(record["driverId"])
        assert len(drivers) >= 3, f"stats for {drivers} only"
        family = _descendants(proc.pid)
        assert len(family) >= 3  # broker, flow, generator
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
    finally:
        stuck = _descendants(proc.pid) if proc.poll() is None else None
        if stuck is not None:
            # The demo's children run in sessions of their own: a failed
            # stop must not leave a broker, flow or generator behind.
            for pid in stuck:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read()
    # Killed, the demo keeps its work folder: its logs say where it hung.
    if stuck is not None:
        logs = [log for folder in re.findall(r"logs in (\S+);", err) for log in sorted(Path(folder).glob("*.log"))]
        pytest.fail(f"no stop within 20 s of Ctrl-C ({len(stuck)} processes left); stderr:\n{err[-3000:]}"
                    + "".join(f"\n--- {log}:\n{log.read_text(errors='replace')[-2000:]}" for log in logs))
    assert proc.returncode == 0, err
    assert "stop with Ctrl-C" in err and "Traceback" not in err
    assert [pid for pid in family if _alive(pid)] == []
