"""Shared pytest fixtures, and which tests run one at a time."""

from __future__ import annotations

import pytest

from connectors.mqtt.brokers import BROKERS, broker_missing
from connectors.mqtt.testing import NOT_FOUND, Mosquitto, find_mosquitto

# Tests that run whole flows (several processes each, timed against the wall
# clock) run one after the other, in one xdist group, while the others run
# beside them (`./dev.py test` runs three at a time): with two such flows at
# once on 2 cores, a record of the partition-count change came after its
# deadline and a demo did not stop within its 20 s in 3 of 5 suite runs.
ONE_AT_A_TIME = (
    "tests/flow/test_partitions.py",
    "tests/flow/test_event_time.py",
    "tests/flow/test_recovery_and_scale.py",
    "tests/flow/test_end_to_end.py",
    "tests/flow/test_hostile_input.py",
    "tests/cli/test_cli_mqtt.py",
    "tests/connectors/test_commit_ticks.py",
    "tests/flow/test_child_processes.py",
    "tests/flow/test_stream_time.py",
    "tests/flow/test_wall_clock_steps.py",
    "tests/flow/test_start_order.py",
    "tests/flow/test_brokers.py",
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(ONE_AT_A_TIME):
            item.add_marker(pytest.mark.xdist_group("whole-flows"))


@pytest.fixture
def mosquitto(tmp_path_factory):
    """A private, persistent mosquitto on a free 127.0.0.1 port (never the shared one)."""
    if find_mosquitto() is None:
        pytest.fail(NOT_FOUND, pytrace=False)
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


def start_broker(name: str, workdir):
    """A private broker ``name`` (a key of :data:`connectors.mqtt.brokers.BROKERS`), started."""
    missing = NOT_FOUND if name == "mosquitto" and find_mosquitto() is None else broker_missing(name)
    if missing:
        pytest.fail(missing, pytrace=False)
    return BROKERS[name](workdir).start()


@pytest.fixture(scope="module", params=sorted(BROKERS))
def any_broker(request, tmp_path_factory):
    """Each broker in turn (mosquitto, RabbitMQ, NATS, ejabberd), one per test module.

    Module-scoped (RabbitMQ takes about 10 s to start): tests sharing it use
    client ids of their own, and a test that stops it starts it again.
    """
    broker = start_broker(request.param, tmp_path_factory.mktemp(request.param))
    yield broker
    broker.stop()
