"""Shared pytest fixtures. MQTT: a plain mosquitto broker, a factory for custom ones, a throwaway PKI."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, TestPki, make_test_pki


def _require_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto on 127.0.0.1 that allows anonymous clients."""
    _require_mosquitto()
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Call with ``Mosquitto`` options (users, acl, pki, persistence, ...) to get a started broker."""
    _require_mosquitto()
    brokers: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(brokers)}", **options)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A throwaway CA, broker certificate (127.0.0.1) and client certificate; skips without openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed; TLS tests need it to make throwaway certificates")
    return make_test_pki(tmp_path_factory.mktemp("pki"))
