"""MQTT publisher (paho-mqtt 2.x): every message goes through the on-disk spool, delivered at least once.

Threads: the asyncio caller only encodes a message and hands it to a queue (``publish()`` never blocks).
One sender thread owns the spool: it appends new messages, hands at most ``spool.inflight`` of them to
paho, and deletes a message when its PUBACK arrives (``on_publish``). paho's network thread
(``loop_start``) connects, reconnects with exponential backoff, and re-sends its unacknowledged messages
in order on each new connection; the sender sends nothing new until those are acknowledged, so messages
reach the broker in spool order (duplicates are possible after a reconnect; consumers de-duplicate by the
event id in the payload).

Availability: the will is ``<prefix>/<device>/availability`` = "offline" (retained, QoS 1); "online" is
published (retained) on every connect, and "offline" explicitly on a graceful ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edge_ser.publish.base import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
    EncodedMessage,
    MessageEncoder,
    OutboundMessage,
    Publisher,
    check_caller_kind,
    resolve_threadsafe,
)
from edge_ser.publish.credentials import resolve_secret
from edge_ser.publish.homeassistant import HomeAssistantConfig, discovery_messages
from edge_ser.publish.spool import DropReporter, SendWindow, Spool
from edge_ser.publish.topics import availability_topic, validate_id, validate_prefix

logger = logging.getLogger(__name__)

DEFAULT_SPOOL_NAME = "mqtt-spool.sqlite3"

_T = TypeVar("_T")

_Waiter = tuple[int, "asyncio.Future[bool]", asyncio.AbstractEventLoop]
"""A pending drain(): the newest spool seq it waits for, its future, the future's event loop."""


class _DebugOnly(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho logs transient trouble (e.g. a reconnect in progress) as errors; ours are the useful warnings."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


class MqttTlsConfig(BaseModel):
    """TLS to the broker. Present means TLS is on; the broker certificate is always verified."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = Field(
        None, description="PEM CA bundle that signed the broker certificate; None: the system trust store.")
    cert_file: Path | None = Field(None, description="PEM client certificate, for brokers that require one.")
    key_file: Path | None = Field(
        None, description="PEM private key of cert_file; None when the key is inside cert_file.")
    insecure: bool = Field(
        False, description="Skip the broker hostname check (the chain is still verified). Testing only.")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> MqttTlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError(f"tls.key_file is {str(self.key_file)!r} but tls.cert_file is not set; "
                             "expected both for client-certificate authentication")
        return self

    def check_files(self) -> None:
        """Raise ``ValueError`` naming the field if a configured file does not exist."""
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"mqtt.tls.{name}: {str(path)!r} does not exist or is not a file")


class SpoolConfig(BaseModel):
    """The on-disk spool every MQTT message passes through (see edge_ser.publish.spool)."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(
        None, description=f"SQLite spool file. None: $STATE_DIRECTORY/{DEFAULT_SPOOL_NAME} under systemd "
        f"(StateDirectory=), else ./{DEFAULT_SPOOL_NAME}.")
    max_messages: int = Field(10_000, ge=1, description="Most messages kept; beyond, the oldest states go first.")
    max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Most bytes (topic + payload) kept; beyond, oldest states go first.")
    inflight: int = Field(
        20, ge=1, le=1000, description="Most messages sent to the broker and not yet acknowledged.")

    def resolved_path(self) -> Path:
        if self.path is not None:
            return self.path
        state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(state_dir or ".") / DEFAULT_SPOOL_NAME


class MqttPublisherConfig(BaseModel):
    """Publish to an MQTT broker (``type: mqtt``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["mqtt"] = Field("mqtt", description="Publisher backend: MQTT.")
    host: str = Field("localhost", min_length=1, description="Broker host name or IP address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (usually 1883, or 8883 with TLS).")
    client_id: str | None = Field(
        None, description="MQTT client id; None: 'edge-ser-<device id>'. Must be unique on the broker.")
    prefix: str = Field("edge-ser", description="Topic prefix, one or more levels (e.g. 'site-3/edge-ser').")
    device_id: str | None = Field(
        None, description="Device id used in topics; None: the agent's device id.")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect delay (seconds); doubles per attempt.")
    reconnect_max_s: float = Field(60.0, gt=0, description="Longest reconnect delay (seconds).")
    username: str | None = Field(None, description="Broker user name; None: connect anonymously.")
    password: SecretStr | None = Field(
        None, description="Broker password inline (prefer password_env / password_credential / password_file).")
    password_env: str | None = Field(None, description="Name of the environment variable holding the password.")
    password_credential: str | None = Field(
        None, description="systemd credential name (LoadCredential=) read from $CREDENTIALS_DIRECTORY.")
    password_file: Path | None = Field(None, description="Path of a file holding the password.")
    tls: MqttTlsConfig | None = Field(None, description="TLS settings; None: plain TCP.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="On-disk spool settings.")
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig,
                                                description="Home Assistant MQTT discovery of each stream.")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return validate_prefix(value)

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_id(value, "device_id")

    @model_validator(mode="after")
    def _check_cross_fields(self) -> MqttPublisherConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) is below reconnect_min_s "
                             f"({self.reconnect_min_s}); expected max >= min")
        sources = [n for n in ("password", "password_env", "password_credential", "password_file")
                   if getattr(self, n) is not None]
        if len(sources) > 1:
            raise ValueError(f"{' and '.join(sources)} are set; expected at most one password source")
        if sources and self.username is None:
            raise ValueError(f"{sources[0]} is set but username is not; expected a username with a password")
        return self

    def resolve_password(self) -> SecretStr | None:
        """The password from whichever source is configured (reads the environment or a file)."""
        return resolve_secret(inline=self.password, env=self.password_env, credential=self.password_credential,
                              path=self.password_file, prefix="mqtt.")


class MqttPublisher(Publisher):
    """``Publisher`` that spools every message on disk and delivers it to an MQTT broker at least once."""

    def __init__(self, config: MqttPublisherConfig, device_id: str) -> None:
        self._config = config
        device = config.device_id or device_id
        self._encoder = MessageEncoder(config.prefix, device)
        self._device = device
        self._announced: set[str] = set()  # streams whose Home Assistant entities were announced this run
        self._availability = availability_topic(config.prefix, device)
        self._client_id = config.client_id or f"edge-ser-{device}"
        self._password = config.resolve_password()  # fail at start on a missing secret, not at connect
        if config.tls is not None:
            config.tls.check_files()
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._window = SendWindow(config.spool.inflight)
        self._drops = DropReporter()
        self._client: paho.Client | None = None
        self._spool: Spool | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._connected = False
        # The sender may hand new messages to paho only while _link_up. on_disconnect clears it at once (so
        # nothing new is queued ahead of paho's re-sends on the next connection); the sender sets it again
        # when it handles the matching connect, after the window has put itself on hold.
        self._send_lock = threading.Lock()
        self._link_up = False
        self._link_gen = 0
        self._ever_connected = False
        self._failing = False
        self._submitted = 0  # written by the caller's thread only
        self._dropped_after_close = 0  # likewise
        self._processed = 0  # written by the sender thread only
        self._last_error_log = -1e9
        self._stats_lock = threading.Lock()
        self._counters: dict[str, int] = {"delivered": 0, "reconnects": 0, "refused": 0}
        self._snapshot: dict[str, int] = {"spool_messages": 0, "spool_bytes": 0, "inflight": 0,
                                          "dropped_states": 0, "dropped_events": 0}

    # ----------------------------------------------------------------------------------- Publisher API
    async def start(self) -> None:
        if self._thread is not None:
            return
        spool_cfg = self._config.spool
        self._spool = await asyncio.to_thread(
            Spool, spool_cfg.resolved_path(), spool_cfg.max_messages, spool_cfg.max_bytes)
        self._drops.add(self._spool.startup_drops)
        try:
            self._client = self._make_client()
        except Exception:
            self._spool.close()
            raise
        cfg = self._config
        logger.info("MQTT publisher: broker %s:%d, user %s, TLS %s, client id %s, topics under %s/%s/, "
                    "spool %s (%d messages pending)", cfg.host, cfg.port, cfg.username or "(anonymous)",
                    "on" if cfg.tls else "off", self._client_id, self._encoder.prefix, self._encoder.device_id,
                    self._spool.path, len(self._spool))
        self._update_snapshot()
        self._thread = threading.Thread(target=self._run_sender, name="edge-ser-mqtt-sender", daemon=True)
        self._thread.start()
        self._client.connect_async(cfg.host, cfg.port, cfg.keepalive)
        self._client.loop_start()

    def publish(self, msg: OutboundMessage) -> None:
        check_caller_kind(msg)
        encoded = self._encoder.encode(msg)
        if self._closed:
            self._dropped_after_close += 1
            logger.debug("MQTT publisher closed; dropped %s message for %s", msg.kind, encoded.topic)
            return
        if self._config.home_assistant.enabled and msg.kind == "stream_status" and msg.stream_id is not None:
            self._announce(msg)
        self._submitted += 1
        self._inbox.put(("msg", encoded))

    def _announce(self, msg: OutboundMessage) -> None:
        """Home Assistant discovery for a stream coming online (once per stream and run), ahead of its status."""
        assert msg.stream_id is not None
        if msg.payload.get("status") != "online" or msg.stream_id in self._announced:
            return
        if len(self._announced) >= 4096:  # streams come and go (calls): re-announcing is harmless
            self._announced.clear()
        self._announced.add(msg.stream_id)
        cfg = self._config
        for discovery in discovery_messages(cfg.home_assistant, cfg.prefix, self._device, msg.stream_id,
                                            str(msg.payload.get("model", "unknown"))):
            self._submitted += 1
            self._inbox.put(("msg", discovery))

    async def drain(self, timeout: float) -> bool:
        if self._thread is None or not self._thread.is_alive():
            return self._submitted == 0
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        self._inbox.put(("drain", done, loop))
        try:
            return await asyncio.wait_for(done, timeout)
        except TimeoutError:
            return False

    async def close(self, timeout: float) -> None:
        if self._closed:
            return
        if self._thread is None:  # never started
            self._closed = True
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self.drain(timeout):
            logger.warning("MQTT publisher closing with %d messages not yet acknowledged; they stay in the "
                           "spool %s and are sent at the next start", self.stats()["queued"],
                           self._config.spool.resolved_path())
        self._closed = True
        await asyncio.to_thread(self._shutdown, max(0.2, deadline - loop.time()))

    def stats(self) -> dict[str, int | float]:
        with self._stats_lock:
            snap = dict(self._snapshot)
            counters = dict(self._counters)
        pending_handoff = max(0, self._submitted - self._processed)
        return {
            "queued": snap["spool_messages"] + pending_handoff,
            "delivered": counters["delivered"],
            "dropped_states": snap["dropped_states"],
            "dropped_events": snap["dropped_events"],
            "reconnects": counters["reconnects"],
            "spool_bytes": snap["spool_bytes"],
            "inflight": snap["inflight"],
            "connected": int(self._connected),
            "refused": counters["refused"],
            "dropped_after_close": self._dropped_after_close,
        }

    # ------------------------------------------------------------------------------------ paho client
    def _make_client(self) -> paho.Client:
        cfg = self._config
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id,
                             protocol=paho.MQTTv311, clean_session=True)
        client.enable_logger(_DebugOnly(logging.getLogger(f"{__name__}.paho")))  # type: ignore[arg-type]
        client.max_inflight_messages_set(cfg.spool.inflight + 10)  # + room for availability messages
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        client.will_set(self._availability, AVAILABILITY_OFFLINE, qos=1, retain=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username,
                                   self._password.get_secret_value() if self._password is not None else None)
        if cfg.tls is not None:
            try:
                client.tls_set(
                    ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                    certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                    keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError) as err:
                raise ValueError(f"mqtt.tls: cannot load certificates or key: {err}") from err
            client.tls_insecure_set(cfg.tls.insecure)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _on_connect(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
                    reason: paho.ReasonCode, properties: object) -> None:
        if reason.is_failure:
            with self._stats_lock:
                self._counters["refused"] += 1
            logger.warning("MQTT broker %s:%d refused the connection (user %s): %s; retrying",
                           self._config.host, self._config.port, self._config.username or "(anonymous)", reason)
            return
        client.publish(self._availability, AVAILABILITY_ONLINE, qos=1, retain=True)
        with self._stats_lock:
            if self._ever_connected:
                self._counters["reconnects"] += 1
        logger.info("MQTT %s to %s:%d", "reconnected" if self._ever_connected else "connected",
                    self._config.host, self._config.port)
        self._ever_connected = True
        self._connected = True
        self._failing = False
        with self._send_lock:
            generation = self._link_gen
        self._inbox.put(("conn", True, generation))

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        log = logger.debug if self._failing else logger.warning
        log("MQTT broker %s:%d unreachable; retrying in the background (every %g to %g s)",
            self._config.host, self._config.port, self._config.reconnect_min_s, self._config.reconnect_max_s)
        self._failing = True

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: paho.DisconnectFlags,
                       reason: paho.ReasonCode, properties: object) -> None:
        was_connected, self._connected = self._connected, False
        with self._send_lock:
            self._link_up = False
            self._link_gen += 1
        if was_connected and not self._closed:
            logger.warning("MQTT connection to %s:%d lost (%s); spooling until it is back",
                           self._config.host, self._config.port, reason)
        self._inbox.put(("conn", False))

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason: paho.ReasonCode,
                    properties: object) -> None:
        self._inbox.put(("ack", mid))

    def _shutdown(self, timeout: float) -> None:
        client = self._client
        assert client is not None
        if self._connected:
            info = client.publish(self._availability, AVAILABILITY_OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (ValueError, RuntimeError) as err:
                logger.debug("MQTT availability 'offline' not confirmed: %s", err)
        client.disconnect()
        client.loop_stop()
        self._inbox.put(("stop",))
        if self._thread is not None:
            self._thread.join()
        logger.info("MQTT publisher closed (%s)", self.stats())

    # ---------------------------------------------------------------------------------- sender thread
    def _run_sender(self) -> None:
        spool = self._spool
        assert spool is not None
        waiters: list[_Waiter] = []
        stopping = False
        while not stopping:
            commands = [self._inbox.get()]
            while True:
                try:
                    commands.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            fresh: list[EncodedMessage] = []
            for command in commands:
                tag = command[0]
                if tag == "msg":
                    fresh.append(command[1])
                elif tag == "ack":
                    self._guarded("acknowledging a message", self._handle_ack, spool, command[1])
                elif tag == "conn":
                    self._handle_link(command[1], command[2] if command[1] else None)
                elif tag == "drain":
                    self._append(spool, fresh)
                    fresh = []
                    waiters.append((spool.last_seq, command[1], command[2]))
                elif tag == "stop":
                    stopping = True
            self._append(spool, fresh)
            if not stopping:
                self._guarded("sending", self._send, spool)
            self._update_snapshot()  # before waking drain(): stats() must agree with it
            waiters = self._guarded("checking drain", self._resolve_waiters, spool, waiters) or waiters
            self._report_drops()
        for _, fut, loop in waiters:
            resolve_threadsafe(fut, loop, False)
        self._guarded("closing the spool", spool.close)

    def _guarded(self, what: str, fn: Callable[..., _T], *args: Any) -> _T | None:
        """Run ``fn``; log (at most once a minute) instead of raising: the sender thread must stay alive."""
        try:
            return fn(*args)
        except Exception:
            now = time.monotonic()
            if now - self._last_error_log >= 60.0:
                self._last_error_log = now
                logger.exception("MQTT sender: error while %s (spool %s)", what, self._config.spool.path)
            return None

    def _append(self, spool: Spool, fresh: list[EncodedMessage]) -> None:
        if not fresh:
            return
        self._processed += len(fresh)
        dropped = self._guarded("writing to the spool", spool.append_many, fresh)
        self._drops.add(dropped if dropped is not None else [m.kind for m in fresh])

    def _handle_link(self, up: bool, generation: int | None) -> None:
        if not up:
            self._window.on_disconnect()
            return
        self._window.on_connect()
        with self._send_lock:
            if generation == self._link_gen:  # else a disconnect came after this connect
                self._link_up = True

    def _handle_ack(self, spool: Spool, mid: int) -> None:
        seq = self._window.acked(mid)
        if seq is not None and spool.ack(seq):
            with self._stats_lock:
                self._counters["delivered"] += 1

    def _send(self, spool: Spool) -> None:
        client = self._client
        assert client is not None
        wanted = self._window.wanted()
        if wanted <= 0:
            return
        for item in spool.peek(self._window.last_sent, wanted):
            m = item.message
            with self._send_lock:
                if not self._link_up:
                    break
                info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
                break  # paho refused it (message id clash); retried on the next wake-up
            if m.qos == 0:  # at most once: leaves the spool once handed to paho
                self._window.sent(info.mid, item.seq)
                self._window.acked(info.mid)
                if spool.ack(item.seq):
                    with self._stats_lock:
                        self._counters["delivered"] += 1
            else:
                self._window.sent(info.mid, item.seq)

    def _resolve_waiters(self, spool: Spool, waiters: list[_Waiter]) -> list[_Waiter]:
        if not waiters:
            return waiters
        oldest = spool.oldest_seq()
        remaining = []
        for target, fut, loop in waiters:
            if fut.done():
                continue  # timed out
            if oldest is None or oldest > target:
                resolve_threadsafe(fut, loop, True)
            else:
                remaining.append((target, fut, loop))
        return remaining

    def _update_snapshot(self) -> None:
        spool = self._spool
        assert spool is not None
        with self._stats_lock:
            self._snapshot = {
                "spool_messages": len(spool),
                "spool_bytes": spool.size_bytes,
                "inflight": self._window.inflight,
                "dropped_states": self._drops.count(drop_first=True),
                "dropped_events": self._drops.count(drop_first=False),
            }

    def _report_drops(self) -> None:
        due = self._drops.due(time.monotonic())
        if due:
            cfg = self._config.spool
            logger.warning("MQTT spool full (max %d messages, %d bytes), dropped (oldest states first): %s",
                           cfg.max_messages, cfg.max_bytes,
                           ", ".join(f"{n} {kind}" for kind, n in sorted(due.items())))

