"""MQTT publisher against a real mosquitto: order, outages, restarts, last will, TLS, passwords, ACLs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Subscriber, TestPki, async_wait_until, wait_until

from edge_ser.publish import (
    MqttPublisherConfig,
    MqttTlsConfig,
    OutboundMessage,
    SpoolConfig,
    availability_topic,
    event_topic,
    make_publisher,
)
from edge_ser.publish.spool import Spool

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE = "pi-1"
EVENTS = event_topic("edge-ser", DEVICE, "mic0")
AVAILABILITY = availability_topic("edge-ser", DEVICE)


def config(broker: Mosquitto, spool_path: Path, **overrides: Any) -> MqttPublisherConfig:
    fields: dict[str, Any] = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.05,
                              "reconnect_max_s": 0.5, "spool": SpoolConfig(path=spool_path)}
    fields.update(overrides)
    return MqttPublisherConfig(**fields)


def event(n: int) -> OutboundMessage:
    return OutboundMessage("event", "mic0", {"schema_version": 1, "event_id": f"ev-{n}", "n": n})


def numbers(subscriber: Subscriber, topic: str = EVENTS) -> list[int]:
    return [json.loads(p)["n"] for p in subscriber.payloads(topic)]


def test_delivers_200_messages_in_order(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto, "edge-ser/#").start()

    async def scenario() -> dict[str, int | float]:
        pub = make_publisher(config(mosquitto, tmp_path / "spool.sqlite3"), DEVICE)
        await pub.start()
        for n in range(200):
            pub.publish(event(n))
        assert await pub.drain(10.0)
        stats = pub.stats()
        await pub.close(5.0)
        return stats

    try:
        stats = asyncio.run(scenario())
        assert sub.wait_for(lambda _: len(numbers(sub)) >= 200 and len(sub.payloads(AVAILABILITY)) >= 2)
    finally:
        sub.stop()
    assert numbers(sub) == list(range(200))
    assert sub.payloads(AVAILABILITY) == [b"online", b"offline"]
    assert stats["delivered"] == 200 and stats["queued"] == 0 and stats["spool_bytes"] == 0
    assert stats["dropped_states"] == 0 and stats["dropped_events"] == 0


def test_broker_killed_mid_stream_loses_nothing(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    broker = mosquitto_factory(persistence=True)
    # A persistent QoS 0 session (queued while offline) so the subscriber misses nothing across the restart.
    sub = Subscriber(broker, EVENTS, client_id="watcher", clean_session=False, qos=0).start()
    assert wait_until(lambda: (broker.workdir / "mosquitto.db").exists(), 5.0), "session not persisted"
    window = 10

    async def scenario() -> dict[str, int | float]:
        spool = SpoolConfig(path=tmp_path / "spool.sqlite3", inflight=window)
        pub = make_publisher(config(broker, spool.path, spool=spool), DEVICE)  # type: ignore[arg-type]
        await pub.start()
        for n in range(200):
            if n == 60:  # freeze the broker: what is sent now is never acknowledged
                assert await async_wait_until(lambda: pub.stats()["inflight"] == 0), pub.stats()
                broker.pause()
            if n == 65:  # 5 messages in flight (half the window), then the broker dies without a trace
                assert await async_wait_until(lambda: pub.stats()["inflight"] == 5), pub.stats()
                broker.kill()
            if n == 140:
                await asyncio.to_thread(broker.start)
            pub.publish(event(n))
            await asyncio.sleep(0.002)
        assert await pub.drain(15.0), pub.stats()
        stats = pub.stats()
        await pub.close(5.0)
        return stats

    try:
        stats = asyncio.run(scenario())
        assert sub.wait_for(lambda _: set(numbers(sub)) >= set(range(200)), 10.0), sorted(set(numbers(sub)))
    finally:
        sub.stop()
    received = numbers(sub)
    first_seen = list(dict.fromkeys(received))
    assert first_seen == list(range(200))  # in order; a re-sent message may repeat, never overtake
    record_property("duplicates", len(received) - 200)
    assert stats["reconnects"] >= 1
    assert stats["delivered"] == 200 and stats["queued"] == 0


def test_spool_survives_publisher_restart_while_broker_down(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    broker = mosquitto_factory()
    broker.stop()
    cfg = config(broker, tmp_path / "spool.sqlite3")

    async def first_run() -> dict[str, int | float]:
        pub = make_publisher(cfg, DEVICE)
        await pub.start()
        for n in range(20):
            pub.publish(event(n))
        assert not await pub.drain(0.3)  # broker down: nothing can be acknowledged
        stats = pub.stats()
        await pub.close(0.2)
        return stats

    stats = asyncio.run(first_run())
    assert stats["queued"] == 20 and stats["delivered"] == 0 and stats["spool_bytes"] > 0

    broker.start()
    sub = Subscriber(broker, EVENTS).start()

    async def second_run() -> dict[str, int | float]:
        pub = make_publisher(cfg, DEVICE)
        await pub.start()
        assert await pub.drain(10.0)
        stats = pub.stats()
        await pub.close(5.0)
        return stats

    try:
        stats = asyncio.run(second_run())
        assert sub.wait_for(lambda _: len(numbers(sub)) >= 20)
    finally:
        sub.stop()
    assert numbers(sub) == list(range(20))
    assert stats["delivered"] == 20 and stats["queued"] == 0


def test_full_spool_drops_states_first_and_warns(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory()
    broker.stop()  # nothing is delivered, so the spool fills up
    cfg = config(broker, tmp_path / "spool.sqlite3",
                 spool=SpoolConfig(path=tmp_path / "spool.sqlite3", max_messages=5))

    async def scenario() -> dict[str, int | float]:
        pub = make_publisher(cfg, DEVICE)
        await pub.start()
        for n in range(3):
            pub.publish(OutboundMessage("state", "mic0", {"n": n}, retain=True))
        for n in range(5):
            pub.publish(event(n))
        await pub.drain(0.2)
        stats = pub.stats()
        await pub.close(0.1)
        return stats

    with caplog.at_level(logging.WARNING, logger="edge_ser.publish"):
        stats = asyncio.run(scenario())
    assert stats["dropped_states"] == 3 and stats["dropped_events"] == 0 and stats["queued"] == 5
    assert "spool full" in caplog.text and "3 state" in caplog.text


def test_last_will_offline_when_agent_dies_and_online_retained(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topic = availability_topic("edge-ser", "pi-will")
    script = (
        "import asyncio, sys\n"
        "from edge_ser.publish import MqttPublisherConfig, SpoolConfig, make_publisher\n"
        "async def main():\n"
        f"    cfg = MqttPublisherConfig(host={mosquitto.host!r}, port={mosquitto.port}, "
        f"spool=SpoolConfig(path={str(tmp_path / 'spool.sqlite3')!r}))\n"
        "    pub = make_publisher(cfg, 'pi-will')\n"
        "    await pub.start()\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    agent = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        live = Subscriber(mosquitto, topic).start()
        try:
            assert live.wait_for(lambda _: b"online" in live.payloads(topic), 20.0), agent.stderr
            late = Subscriber(mosquitto, topic).start()  # subscribes after the fact: gets the retained value
            assert late.wait_for(lambda msgs: len(msgs) >= 1, 5.0)
            late.stop()
            assert late.received()[0].payload == b"online" and late.received()[0].retain
            agent.kill()  # SIGKILL: no DISCONNECT, so the broker publishes the will
            agent.wait()
            assert live.wait_for(lambda _: b"offline" in live.payloads(topic), 10.0)
        finally:
            live.stop()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stderr:
            agent.stderr.close()
    assert live.payloads(topic) == [b"online", b"offline"]


def test_tls_with_password(
    mosquitto_factory: Callable[..., Mosquitto], test_pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = mosquitto_factory(users={"agent": "agent-secret-1", "watcher": "watcher-secret-2"}, pki=test_pki,
                               require_client_cert=True)
    tls = MqttTlsConfig(ca_file=test_pki.ca_file, cert_file=test_pki.client_cert, key_file=test_pki.client_key)
    monkeypatch.setenv("EDGE_SER_TEST_MQTT_PASSWORD", "agent-secret-1")
    good = config(broker, tmp_path / "good.sqlite3", tls=tls, username="agent",
                  password_env="EDGE_SER_TEST_MQTT_PASSWORD")
    wrong = config(broker, tmp_path / "wrong.sqlite3", tls=tls, username="agent", password="not-it",
                   client_id="wrong")
    anonymous = config(broker, tmp_path / "anon.sqlite3", tls=tls, client_id="anonymous")
    sub = Subscriber(broker, EVENTS, username="watcher", password="watcher-secret-2").start()

    async def connect(cfg: MqttPublisherConfig, send: bool) -> dict[str, int | float]:
        pub = make_publisher(cfg, DEVICE)
        await pub.start()
        await async_wait_until(lambda: pub.stats()["connected"] == 1 or pub.stats()["refused"] >= 1, 10.0)
        if send:
            pub.publish(event(1))
            assert await pub.drain(5.0)
        stats = pub.stats()
        await pub.close(0.5)
        return stats

    try:
        ok = asyncio.run(connect(good, send=True))
        assert sub.wait_for(lambda _: numbers(sub) == [1], 5.0)
    finally:
        sub.stop()
    assert ok["connected"] == 1 and ok["refused"] == 0 and ok["delivered"] == 1
    for refused in (asyncio.run(connect(wrong, send=False)), asyncio.run(connect(anonymous, send=False))):
        assert refused["connected"] == 0 and refused["refused"] >= 1


def test_acl_keeps_agent_inside_its_prefix(mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> None:
    acl = "user agent\ntopic readwrite edge-ser/#\n\nuser watcher\ntopic read #\n"
    broker = mosquitto_factory(users={"agent": "agent-pw", "watcher": "watcher-pw"}, acl=acl)
    sub = Subscriber(broker, "#", username="watcher", password="watcher-pw").start()
    inside = config(broker, tmp_path / "in.sqlite3", username="agent", password="agent-pw")
    outside = config(broker, tmp_path / "out.sqlite3", username="agent", password="agent-pw", prefix="rogue",
                     client_id="rogue")

    async def scenario() -> None:
        rogue = make_publisher(outside, DEVICE)
        await rogue.start()
        rogue.publish(event(666))
        assert await rogue.drain(5.0)  # the broker acknowledges and silently discards it (MQTT 3.1.1)
        await rogue.close(1.0)
        agent = make_publisher(inside, DEVICE)
        await agent.start()
        agent.publish(event(1))
        assert await agent.drain(5.0)
        await agent.close(1.0)

    try:
        asyncio.run(scenario())
        assert sub.wait_for(lambda _: numbers(sub) == [1], 5.0)
    finally:
        sub.stop()
    assert [m.topic for m in sub.received() if not m.topic.startswith("edge-ser/")] == []
    assert "denied publish from rogue" in broker.log().lower()  # the broker saw it and refused it


def test_secrets_never_logged(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Sup3r-Secret-Pa55"
    broker = mosquitto_factory(users={"agent": secret})
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text(secret + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    good = config(broker, tmp_path / "a.sqlite3", username="agent", password_credential="mqtt-password")
    bad = config(broker, tmp_path / "b.sqlite3", username="agent", password=secret + "-wrong", client_id="bad")

    async def run(cfg: MqttPublisherConfig) -> dict[str, int | float]:
        pub = make_publisher(cfg, DEVICE)
        await pub.start()
        await async_wait_until(lambda: pub.stats()["connected"] == 1 or pub.stats()["refused"] >= 1, 10.0)
        if pub.stats()["connected"]:
            pub.publish(event(1))
            await pub.drain(5.0)
        stats = pub.stats()
        await pub.close(0.5)
        return stats

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(run(good))["delivered"] == 1
        assert asyncio.run(run(bad))["refused"] >= 1
    assert "agent" in caplog.text and f"{broker.port}" in caplog.text  # host, port and user are logged
    assert "refused" in caplog.text
    assert secret not in caplog.text
    assert secret not in repr(bad) and secret not in bad.model_dump_json()


def test_sender_survives_a_spool_write_error(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failures = iter([True])
    real_append = Spool.append_many

    def flaky_append(self: Spool, messages: list[Any]) -> list[str]:
        if next(failures, False):
            raise sqlite3.OperationalError("disk I/O error")
        return real_append(self, messages)

    monkeypatch.setattr(Spool, "append_many", flaky_append)
    sub = Subscriber(mosquitto, EVENTS).start()

    async def scenario() -> dict[str, int | float]:
        pub = make_publisher(config(mosquitto, tmp_path / "spool.sqlite3"), DEVICE)
        await pub.start()
        pub.publish(event(1))  # lost: the disk "fails"
        await async_wait_until(lambda: pub.stats()["dropped_events"] == 1, 5.0)
        pub.publish(event(2))
        assert await pub.drain(5.0)
        stats = pub.stats()
        await pub.close(2.0)
        return stats

    try:
        with caplog.at_level(logging.ERROR, logger="edge_ser.publish"):
            stats = asyncio.run(scenario())
        assert sub.wait_for(lambda _: numbers(sub) == [2], 5.0)
    finally:
        sub.stop()
    assert stats["dropped_events"] == 1 and stats["delivered"] == 1
    assert "error while writing to the spool" in caplog.text
