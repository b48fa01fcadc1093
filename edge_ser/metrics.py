"""Prometheus metrics on a local HTTP port (``stats.prometheus_port``), read from the live pipeline.

Per stream: audio and speech seconds, windows scored / failed, states, shifts, and a latency histogram
(last sample of a window available -> its result smoothed and handed to the publisher). Per agent: windows
waiting for the engine (queue depth), batches, engine busy seconds, and the publisher's counters (queued,
delivered, dropped states / events, spool bytes, reconnects, connected) and its memory (RSS, C heap in
use and free).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edge_ser.pipeline import Pipeline

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
_STREAM_COUNTERS = {
    "audio_s": ("edge_ser_stream_audio_seconds", "Seconds of audio received"),
    "windows": ("edge_ser_stream_windows", "Windows scored"),
    "windows_failed": ("edge_ser_stream_windows_failed", "Windows whose inference failed"),
    "states": ("edge_ser_stream_states", "State messages produced"),
    "shifts": ("edge_ser_stream_shifts", "Emotion shifts reported"),
}
_PUBLISHER = {
    "queued": ("edge_ser_publisher_queued", "Messages accepted and not yet delivered (spool)", "gauge"),
    "spool_bytes": ("edge_ser_publisher_spool_bytes", "Bytes held in the on-disk spool", "gauge"),
    "connected": ("edge_ser_publisher_connected", "1 while connected to the broker", "gauge"),
    "delivered": ("edge_ser_publisher_delivered", "Messages acknowledged by the broker", "counter"),
    "dropped_states": ("edge_ser_publisher_dropped_states", "State messages dropped (spool full)", "counter"),
    "dropped_events": ("edge_ser_publisher_dropped_events", "Events dropped (spool full)", "counter"),
    "reconnects": ("edge_ser_publisher_reconnects", "Broker reconnections", "counter"),
}

_MEMORY = {
    "rss_mb": ("edge_ser_memory_resident_bytes", "Resident set size of the agent process"),
    "heap_in_use_mb": ("edge_ser_memory_heap_in_use_bytes", "C heap bytes in use (glibc mallinfo2)"),
    "heap_free_mb": ("edge_ser_memory_heap_free_bytes", "C heap bytes freed but still mapped (glibc mallinfo2)"),
}


class PipelineCollector(Collector):
    """Reads ``Pipeline.stats()`` at scrape time: no bookkeeping on the audio path."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.pipeline.stats()
        streams = stats["streams"]
        for key, (name, doc) in _STREAM_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["stream"])
            for stream_id, values in streams.items():
                family.add_metric([stream_id], float(values[key]))
            yield family
        ratio = GaugeMetricFamily("edge_ser_stream_speech_ratio", "Fraction of the audio that was speech",
                                  labels=["stream"])
        for stream_id, values in streams.items():
            ratio.add_metric([stream_id], float(values["speech_ratio"]))
        yield ratio
        adapted = GaugeMetricFamily("edge_ser_stream_adapted_seconds", "Speech in the stream's adaptation mean "
                                    "(edge_ser.centring; absent when stream adaptation is off)", labels=["stream"])
        for stream_id, values in streams.items():
            if values["adapted_s"] is not None:
                adapted.add_metric([stream_id], float(values["adapted_s"]))
        yield adapted
        yield GaugeMetricFamily("edge_ser_streams_live", "Streams currently open", value=stats["streams_live"])
        yield GaugeMetricFamily("edge_ser_engine_queue_depth", "Windows waiting for the engine",
                                value=stats["pending_windows"])
        yield CounterMetricFamily("edge_ser_engine_batches", "Engine calls", value=stats["batches"])
        yield CounterMetricFamily("edge_ser_engine_busy_seconds", "Seconds spent in the engine",
                                  value=stats["engine_busy_s"])
        for key, (name, doc) in _MEMORY.items():
            if stats["memory"][key] is not None:
                yield GaugeMetricFamily(name, doc, value=stats["memory"][key] * 1024 * 1024)
        for key, (name, doc, kind) in _PUBLISHER.items():
            if key in stats["publisher"]:
                cls = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
                yield cls(name, doc, value=float(stats["publisher"][key]))


class Metrics:
    """The registry, the latency histogram the pipeline feeds, and the HTTP endpoint."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PipelineCollector(pipeline))
        self.latency = Histogram("edge_ser_window_latency_seconds",
                                 "Last sample of a window available -> its result handed to the publisher",
                                 ["stream"], buckets=LATENCY_BUCKETS, registry=self.registry)
        pipeline.on_latency = self.observe

    def observe(self, stream_id: str, seconds: float) -> None:
        self.latency.labels(stream_id).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
