"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from connectors.mqtt.testing import NOT_FOUND, Mosquitto, find_mosquitto


@pytest.fixture
def mosquitto(tmp_path_factory):
    """A private, persistent mosquitto on a free 127.0.0.1 port (never the shared one)."""
    if find_mosquitto() is None:
        pytest.fail(NOT_FOUND, pytrace=False)
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()
