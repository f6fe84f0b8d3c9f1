"""`driver-stats --help` and every subcommand's help; one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cli import build_parser

SUBCOMMANDS = ["generate", "tail", "replay", "demo"]


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_top_level_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_of_every_subcommand_is_explained(name, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    sub = parser._subparsers._group_actions[0].choices[name]  # noqa: SLF001
    for action in sub._actions:  # noqa: SLF001
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        for flag in action.option_strings:
            assert re.search(rf"{re.escape(flag)}\b", out), flag


def test_the_console_script_runs():
    run = cli("tail", "--help")
    assert run.returncode == 0 and "--table" in run.stdout


def test_usage_errors_exit_2():
    run = cli("generate", "--late", "2")
    assert run.returncode == 2 and "not a fraction" in run.stderr


def test_a_bad_url_is_one_line_and_exit_2():
    run = cli("tail", "--url", "http://nowhere")
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "driver-stats tail: error: DRIVER_STATS_MQTT_URL='http://nowhere' is invalid: "
        "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    )


def test_an_unreachable_broker_is_one_line_and_exit_2():
    from connectors.mqtt.testing import free_port

    run = cli("generate", "--count", "1", "--url", f"mqtt://127.0.0.1:{free_port()}")
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1
    assert "cannot connect to MQTT broker 127.0.0.1:" in run.stderr and "refused" in run.stderr
