"""Shared by the benchmark scripts: a throwaway mosquitto on a free loopback port and a subscriber that
timestamps every message on arrival. (A process's resident memory: ``edge_ser.memory.rss_mb``.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackBroker:
    """``with LoopbackBroker(workdir, topics) as broker:`` runs mosquitto on ``broker.port`` and collects
    (arrival time, JSON payload) for ``topics`` in ``broker.arrivals`` until the block ends."""

    def __init__(self, workdir: Path, topics: list[str]) -> None:
        self.port = free_port()
        self.topics = topics
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             f"max_queued_messages 100000\nuser {os.environ.get('USER', 'root')}\n")
        self._arrivals: list[tuple[float, dict]] = []
        self._lock = threading.Lock()

    @property
    def arrivals(self) -> list[tuple[float, dict]]:
        with self._lock:
            return list(self._arrivals)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        with self._lock:
            self._arrivals.append((now, json.loads(msg.payload)))

    def __enter__(self) -> LoopbackBroker:
        self._broker = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        self._sub = paho.Client(CallbackAPIVersion.VERSION2)
        self._sub.on_message = self._on_message
        self._sub.connect("127.0.0.1", self.port)
        for topic in self.topics:
            self._sub.subscribe(topic, qos=1)
        self._sub.loop_start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._sub.loop_stop()
        self._sub.disconnect()
        self._broker.terminate()
        self._broker.wait()
