"""What on-call relies on, checked against a real Prometheus (issue 14).

The alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``). A real flow, with recovery and traffic, is
scraped by a real Prometheus (Debian's ``prometheus`` package, installed by
``./dev.py test``) that also loads the alert rules; every query of the
Grafana dashboard must then return data through Prometheus' HTTP API.
``/readyz`` follows the broker going away and coming back, and SIGTERM and
Ctrl-C leave exactly the promised log lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from connectors.mqtt.testing import Publisher, free_port, wait_for, wait_listening
from driver_stats.testing.live_flow import LiveFlow
from driver_stats.testing.paced import PacedTraffic
from tests.support import http_get, rated, wire

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "driver-stats.json"
NOT_FOUND = "prometheus/promtool not found: install them with `apt-get install -y prometheus` (./dev.py test does)"
WINDOW, LATENESS = 2, 1
# What /metrics may label our series with: never a driver id, a payload or the broker.
# (prometheus-client adds python_info and the process and GC gauges.)
ALLOWED_LABELS = {"topic", "reason", "kind", "client", "worker", "le"}


def tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found is None:
        pytest.fail(NOT_FOUND, pytrace=False)
    return found


def run(*command: str, cwd: Path = REPO) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    promtool = tool("promtool")
    assert "SUCCESS" in run(promtool, "check", "rules", "alerts.yml", cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts.test.yml", cwd=PROMETHEUS_DIR)
    run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    # Every alert has a unit test.
    alerts = set(re.findall(r"^\s+- alert: (\w+)", (PROMETHEUS_DIR / "alerts.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "alerts.test.yml").read_text()))
    assert alerts and alerts == tested


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            queries.append((panel["title"], target["expr"]))
    return queries


def test_the_dashboard_shows_what_on_call_asks():
    titles = " / ".join(title for title, _ in dashboard_queries()).lower()
    for needed in ("throughput", "lag", "rejections by reason", "duplicates", "publish latency", "reconnects",
                   "buffered and unacknowledged", "records per interval"):
        assert needed in titles, needed


# --------------------------------------------------------------------------
# a live flow under a real Prometheus


class Prometheus:
    """A prometheus process scraping ``target`` every second and evaluating the alert rules."""

    def __init__(self, workdir: Path, target: str):
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", workdir / "alerts.yml")
        (workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n"
            f"  - {{job_name: driver-stats, static_configs: [{{targets: ['{target}']}}]}}\n"
        )
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        assert wait_listening(self.port, self.proc, 30), (workdir / "prometheus.log").read_text()

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def health(port: int, path: str) -> tuple[int, dict]:
    status, body = http_get(port, path)
    assert body.endswith("\n") and body.count("\n") == 1, body  # one line of JSON
    return status, json.loads(body)


def assert_quiet_stop(logs: str, signal_name: str) -> None:
    """Nothing but JSON log lines (stdout and stderr of the whole run), ending with the two promised ones."""
    lines = logs.splitlines()
    assert "panicked" not in logs and "backtrace" not in logs and "Traceback" not in logs, logs[-3000:]
    parsed = [json.loads(line) for line in lines]  # raises on any line that is not a log line
    messages = [entry["message"] for entry in parsed]
    start = messages.index(f"stopping on {signal_name}")
    assert messages[-1] == "stopped" and "stopped" not in messages[:start], messages[start:]


@pytest.mark.mqtt
@pytest.mark.timeout(120)
def test_a_real_prometheus_scrapes_a_live_flow(mosquitto, tmp_path):
    port = free_port()
    flow = LiveFlow(mosquitto, tmp_path / "flow", client_id="observed", window=WINDOW, lateness=LATENESS,
                    recovery=True, epoch_seconds=1, metrics_port=port, metrics_address="127.0.0.1")
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{port}")
    publisher = Publisher(mosquitto, client_id="observed-publisher")
    try:
        flow.start()
        wait_for(lambda: health(port, "/readyz")[0] == 200, 20, "/readyz to answer ready")
        status, answer = health(port, "/livez")
        assert status == 200 and answer["live"] is True and answer["reason"].startswith("ok"), answer

        # Traffic with repeats, plus messages the flow rejects.
        traffic = PacedTraffic(publisher, count=900, rate=60, drivers=20, window=WINDOW, lateness=LATENESS)
        traffic.start()
        publisher.publish("input/driver_rated", [b"\xff not protobuf"] * 3)
        topic, invalid = wire(rated("d-1", "j-1", 0, rating=9))
        publisher.publish(topic, [invalid])
        time.sleep(3)

        # The broker goes away: not ready within seconds (but alive), ready again once it is back.
        mosquitto.stop()
        started = time.monotonic()
        wait_for(lambda: health(port, "/readyz")[0] == 503, 10, "/readyz to answer not ready")
        went_down = time.monotonic() - started
        status, answer = health(port, "/readyz")
        assert status == 503 and answer["ready"] is False and "disconnected" in answer["reason"], answer
        assert health(port, "/livez")[0] == 200
        time.sleep(1)
        mosquitto.start()
        started = time.monotonic()
        wait_for(lambda: health(port, "/readyz")[0] == 200, 30, "/readyz to answer ready again")
        came_back = time.monotonic() - started
        print(f"/readyz: not ready {went_down:.1f}s after the broker stopped, ready {came_back:.1f}s after it returned")
        assert went_down < 5

        # Every dashboard query returns data once traffic went through.
        queries = dashboard_queries()
        missing = queries

        def all_answer():
            nonlocal missing
            missing = [(t, e) for t, e in missing if not prometheus.query(e.replace("$__rate_interval", "15s"))]
            return not missing

        try:
            wait_for(all_answer, 45, "every dashboard query to return data")
        except AssertionError:
            raise AssertionError(f"no data for: {missing}") from None

        # The real Prometheus loaded and evaluates the alert rules without errors.
        rules = [r for group in prometheus.api("rules")["groups"] for r in group["rules"]]
        assert len(rules) == 8 and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        try:
            wait_for(lambda: [r["value"][1] for r in prometheus.query("driver_stats_ready")] == ["1"], 15,
                     "Prometheus to see the flow ready")
        except AssertionError:
            raise AssertionError(f"/readyz: {http_get(port, '/readyz')}; {flow.logs()[-3000:]}") from None

        # What /metrics reveals: counts and sizes by topic, reason, kind, client and worker.
        _, text = http_get(port, "/metrics")
        ours = "\n".join(line for line in text.splitlines() if line.startswith("driver_stats_"))
        labels = set(re.findall(r"[{,](\w+)=\"", ours))
        assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS
        assert str(mosquitto.port) not in text and "driver-0" not in text
        assert http_get(port, "/nothing-here")[0] == 404

        # SIGTERM: two log lines and exit code 0, nothing else on stderr.
        traffic.join()
        assert flow.kill(signal.SIGTERM) == [0]
        assert_quiet_stop(flow.logs(), "SIGTERM")
    finally:
        publisher.close()
        flow.kill()
        prometheus.stop()

    # Ctrl-C (SIGINT) after resuming from the recovery store: the same.
    flow.log_path(0).unlink()
    flow.start()
    wait_for(lambda: health(port, "/readyz")[0] == 200, 20, "/readyz to answer ready after resuming")
    assert flow.kill(signal.SIGINT) == [0]
    assert_quiet_stop(flow.logs(), "SIGINT")
