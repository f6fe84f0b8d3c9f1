"""Settings from the environment: defaults, conversion, one-line errors."""

import subprocess
import sys

import pytest

from driver_stats.settings import Settings, SettingsError


def test_defaults_are_the_contracts():
    s = Settings.from_env({})
    assert (s.mqtt_url, s.window_seconds, s.allowed_lateness_seconds, s.client_id) == (
        "mqtt://localhost:1883", 600, 30, "driver-stats")
    assert s.input_topics == ("input/driver_rated", "input/driver_tipped", "input/journey_finished")
    assert s.topic_driver_stats == "output/driver_stats"
    assert s.child_silent_seconds == 10


def test_values_are_converted_from_strings():
    s = Settings.from_env({"DRIVER_STATS_WINDOW_SECONDS": "10", "DRIVER_STATS_MQTT_URL": "mqtts://b:8884"})
    assert s.window_seconds == 10
    assert (s.mqtt_host, s.mqtt_port, s.mqtt_tls) == ("b", 8884, True)


@pytest.mark.parametrize("name, value, accepts", [
    ("WINDOW_SECONDS", "ten", "seconds > 0"),
    ("WINDOW_SECONDS", "0", "seconds > 0"),
    ("ALLOWED_LATENESS_SECONDS", "-1", ">= 0"),
    ("MQTT_URL", "http://broker", "mqtt://HOST"),
    ("OUTPUT_FORMAT", "xml", "protobuf or json"),
    ("CLIENT_ID", "has space", "characters"),
    ("MQTT_CA_FILE", "/no/such/file", "readable PEM"),
    ("TOPIC_DRIVER_RATED", "input/#", "valid value"),
    ("METRICS_ADDRESS", "localhost", "an IP address"),
    ("METRICS_ADDRESS", "10.0.0.300", "an IP address"),
    ("CHILD_SILENT_SECONDS", "0", "seconds > 0"),
    ("CHILD_SILENT_SECONDS", "soon", "seconds > 0"),
])
def test_a_wrong_value_names_the_variable_and_what_it_accepts(name, value, accepts):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({f"DRIVER_STATS_{name}": value})
    message = str(err.value)
    assert message.startswith(f"DRIVER_STATS_{name}=") and accepts in message
    assert "\n" not in message


def test_an_unknown_variable_is_refused_so_a_typo_cannot_pass_silently():
    with pytest.raises(SettingsError, match="DRIVER_STATS_WINDOW_SECOND is not a setting"):
        Settings.from_env({"DRIVER_STATS_WINDOW_SECOND": "10"})


def test_the_password_never_shows():
    s = Settings.from_env({"DRIVER_STATS_MQTT_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)


def test_the_flow_stops_at_start_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.driver_stats"],
        env={"PATH": "/usr/bin:/bin", "DRIVER_STATS_WINDOW_SECONDS": "abc"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "driver-stats: DRIVER_STATS_WINDOW_SECONDS='abc' is invalid: expected a whole number of seconds > 0")
