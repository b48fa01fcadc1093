"""Test helpers for MQTT: a real mosquitto on a free loopback port, a throwaway PKI, and a subscriber.

``Mosquitto`` writes a config into a directory and runs ``mosquitto -c`` on 127.0.0.1; it can ``stop()``,
``kill()`` (SIGKILL, no clean shutdown), ``pause()`` (SIGSTOP) and ``restart()`` on the same port.
Options: a password file (made with ``mosquitto_passwd -b``), an ACL file, a TLS listener (certificates
from :func:`make_test_pki`, which uses the ``openssl`` CLI), and persistence (so a persistent subscriber
session survives a restart).
``Subscriber`` is a paho client that records every message it receives.
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it is true (returns True) or ``timeout`` seconds pass (returns False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@dataclass(frozen=True)
class TestPki:
    """Files of a throwaway certificate authority, a broker certificate for 127.0.0.1 and a client certificate."""

    __test__ = False  # not a pytest test class

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def make_test_pki(directory: Path) -> TestPki:
    """A CA, a server certificate (SAN IP:127.0.0.1, DNS:localhost) and a client certificate (EC P-256)."""
    if shutil.which("openssl") is None:
        raise FileNotFoundError("openssl CLI not found")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=edge-ser test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    for name, usage, san in (("server", "serverAuth", "IP:127.0.0.1,DNS:localhost"),
                             ("client", "clientAuth", "DNS:edge-ser-test-client")):
        (directory / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            f"subjectAltName={san}\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
                 cwd=directory)
    return TestPki(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                   directory / "client.crt", directory / "client.key")


class Mosquitto:
    """A mosquitto broker process on 127.0.0.1:<free port>, configured from the constructor's options."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        pki: TestPki | None = None,
        require_client_cert: bool = False,
        allow_anonymous: bool | None = None,
        persistence: bool = False,
        port: int | None = None,
    ) -> None:
        if shutil.which("mosquitto") is None:
            raise FileNotFoundError("mosquitto binary not found")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.pki = pki
        self.log_file = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'true' if (allow_anonymous if allow_anonymous is not None else not users) else 'false'}",
            f"user {getpass.getuser()}",  # when root: do not drop privileges (files are in a private tmp dir)
            f"log_dest file {self.log_file}",
            "log_type all",
            "max_queued_messages 10000",
        ]
        if users:
            passwd = workdir / "passwd"
            passwd.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True,
                               capture_output=True)
            lines.append(f"password_file {passwd}")
        if acl is not None:
            (workdir / "acl").write_text(acl)
            lines.append(f"acl_file {workdir / 'acl'}")
        if pki is not None:
            lines += [f"cafile {pki.ca_file}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
                      f"require_certificate {'true' if require_client_cert else 'false'}"]
        if persistence:
            lines += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1",
                      "autosave_on_changes true", "queue_qos0_messages true"]
        else:
            lines.append("persistence false")
        self.config_file = workdir / "mosquitto.conf"
        self.config_file.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return self
        self._proc = subprocess.Popen(["mosquitto", "-c", str(self.config_file)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {err}\n{self.log()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {HOST}:{self.port} within {timeout} s\n{self.log()}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): clients see a closed connection, persistence is saved."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        """Kill with SIGKILL (no clean shutdown, nothing flushed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_pipes()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is read or acknowledged."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)
            stat = Path(f"/proc/{self._proc.pid}/stat")
            if stat.exists():  # Linux: wait until it is really stopped
                wait_until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "T", 2.0, 0.001)
            else:
                time.sleep(0.05)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or kill, when ``hard``) and start again on the same port."""
        (self.kill if hard else self.stop)()
        self.start()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A paho client subscribed to ``topic``; every received message is appended to ``messages``."""

    def __init__(self, broker: Mosquitto, topic: str = "#", *, username: str | None = None,
                 password: str | None = None, client_id: str = "", clean_session: bool = True,
                 qos: int = 1) -> None:
        self.broker = broker
        self.topic = topic
        self.qos = qos
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                                  protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.pki is not None:
            self.client.tls_set(ca_certs=str(broker.pki.ca_file), certfile=str(broker.pki.client_cert),
                                keyfile=str(broker.pki.client_key), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = 5.0) -> Subscriber:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=60)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"subscriber to {self.topic!r} not subscribed within {timeout} s\n{self.broker.log()}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def received(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.received(topic)]

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        return wait_until(lambda: condition(self.received()), timeout)

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: paho.ReasonCode,
                    properties: object) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=self.qos)

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, reasons: object,
                      properties: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain)))


async def async_wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """``wait_until`` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval)
    return condition()
