"""The live flow's MQTT partition processes: /readyz sees them, and one that dies ends the flow cleanly.

The real flow (``python -m bytewax.run flows.driver_stats``, recovery on)
against a private mosquitto, with paced traffic whose valid events are the
ground truth. The reader child (``mqtt-in-0``) and the sink child
(``mqtt-out-0``) are stopped (SIGSTOP) or killed (SIGKILL) in turn, found by
their start lines in the flow's log (``LiveFlow.child_pids``).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from connectors.mqtt.testing import Collector, Publisher, free_port, process_alive, wait_for
from driver_stats.testing.live_flow import LiveFlow, wait_for_records
from driver_stats.testing.paced import PacedTraffic, compare
from flows.live import CHILD_DIED_EXIT_CODE
from tests.support import http_get

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]

WINDOW, LATENESS = 4, 2
SILENT = 2  # DRIVER_STATS_CHILD_SILENT_SECONDS for these flows: 10 s by default
CHILDREN = {"mqtt-in-0": "input", "mqtt-out-0": "output"}


def health(port: int, path: str) -> tuple[int, str]:
    status, body = http_get(port, path)
    return status, json.loads(body)["reason"]


def assert_nothing_lost_or_repeated(traffic: PacedTraffic, collector: Collector, flow: LiveFlow) -> None:
    traffic.join()
    expected = traffic.expected()
    wait_for_records(collector, expected, timeout=WINDOW + LATENESS + 40)
    counts = compare(expected, list(collector.messages))
    assert counts == {"lost": 0, "wrong": 0, "conflicting": 0, "duplicate_records": 0}, (
        counts, flow.logs()[-3000:])


@pytest.mark.parametrize("label", list(CHILDREN))
def test_a_stopped_child_process_makes_readyz_503_naming_it_until_it_answers_again(mosquitto, tmp_path, label):
    name = f"silent-{label.split('-')[1]}"
    port = free_port()
    collector = Collector(mosquitto, "output/driver_stats", client_id=f"{name}-collector")
    publisher = Publisher(mosquitto, client_id=f"{name}-publisher")
    flow = LiveFlow(mosquitto, tmp_path, client_id=name, window=WINDOW, lateness=LATENESS, recovery=True,
                    metrics_port=port, metrics_address="127.0.0.1", child_silent_seconds=SILENT).start()
    try:
        wait_for(lambda: health(port, "/readyz")[0] == 200, 20, "/readyz ready")
        traffic = PacedTraffic(publisher, count=240, rate=30, drivers=6, window=WINDOW, lateness=LATENESS)
        traffic.start()
        time.sleep(1.5)
        pid = flow.child_pids()[label]
        os.kill(pid, signal.SIGSTOP)  # the child stands still; the worker's calls into it wait
        try:
            stopped = time.monotonic()
            try:
                wait_for(lambda: health(port, "/readyz")[0] == 503, SILENT + 8, "/readyz 503")
            except AssertionError:
                raise AssertionError(f"/readyz {health(port, '/readyz')} with {label} stopped "
                                     f"{time.monotonic() - stopped:.0f}s") from None
            status, reason = health(port, "/readyz")
            assert reason.startswith(f"{CHILDREN[label]} child {label} (pid {pid}) silent for "), reason
            assert health(port, "/livez")[0] == 200  # stopped for seconds: not wedged
            time.sleep(1.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: health(port, "/readyz")[0] == 200, 15, "/readyz ready again")
        assert_nothing_lost_or_repeated(traffic, collector, flow)
        assert all(proc.poll() is None for proc in flow.procs)
    finally:
        flow.kill()
        publisher.close()
        collector.close()


@pytest.mark.parametrize("label", list(CHILDREN))
def test_a_killed_child_process_ends_the_flow_with_one_line_and_a_restart_loses_nothing(mosquitto, tmp_path, label):
    name = f"dead-{label.split('-')[1]}"
    collector = Collector(mosquitto, "output/driver_stats", client_id=f"{name}-collector")
    publisher = Publisher(mosquitto, client_id=f"{name}-publisher")
    flow = LiveFlow(mosquitto, tmp_path, client_id=name, window=WINDOW, lateness=LATENESS, recovery=True).start()
    try:
        traffic = PacedTraffic(publisher, count=240, rate=30, drivers=6, window=WINDOW, lateness=LATENESS)
        traffic.start()
        time.sleep(2.5)  # a few epochs committed, records published
        pids = flow.child_pids()
        os.kill(pids[label], signal.SIGKILL)
        code = flow.procs[0].wait(20)
        log = flow.logs()
        died = [line for line in log.splitlines() if " died: " in line]
        assert code == CHILD_DIED_EXIT_CODE and len(died) == 1, (code, log[-3000:])
        line = json.loads(died[0])
        assert line["level"] == "ERROR" and line["message"] == (
            f"{CHILDREN[label]} child {label} (pid {pids[label]}) died: killed by SIGKILL; "
            f"exiting with code {CHILD_DIED_EXIT_CODE}")
        assert "panic" not in log.lower() and "Traceback" not in log, log[-3000:]
        # The other child goes with its worker's process, as if killed.
        wait_for(lambda: not any(process_alive(pid) for pid in pids.values()), 5, "the children gone")
        flow.kill()
        flow.start()  # from recovery
        assert_nothing_lost_or_repeated(traffic, collector, flow)
    finally:
        flow.kill()
        publisher.close()
        collector.close()
