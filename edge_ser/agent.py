"""Run one agent process from an ``AgentConfig``: model, engine, publisher, sources, signals, watchdog.

``run_agent`` returns the process exit code: 0 after SIGTERM/SIGINT or when every source is exhausted
(after draining: windows in flight are scored and published, ``offline`` is published last).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from pathlib import Path

import numpy as np

from edge_ser import memory, systemd
from edge_ser.backends import Engine, make_engine
from edge_ser.batching import DynamicBatcher
from edge_ser.checkpoint import CheckpointError, read_meta
from edge_ser.config import AgentConfig, ConfigError, load_config
from edge_ser.features import FeatureParams
from edge_ser.memory import MemoryConfig
from edge_ser.pipeline import Pipeline
from edge_ser.publish import OutboundMessage, Publisher, make_publisher
from edge_ser.supervisor import SourceSet

log = logging.getLogger(__name__)

WATCHDOG_STUCK_S = 30.0


class ModelMissingError(RuntimeError):
    """No trained emotion model where the configuration points: the agent refuses to start."""


def check_model(path: Path, centring: bool = True) -> None:
    """Refuse to start without a usable trained model (``centring``: whether stream adaptation is on)."""
    if not (path / "model.json").is_file():
        raise ModelMissingError(
            f"no trained emotion model at {path} (model.json missing). The agent never runs a random or "
            "placeholder head: train one with `edge-ser-train` (docs/training.md) or set model.path / "
            "$EDGE_SER_MODEL to a checkpoint folder."
        )
    try:
        meta = read_meta(path)
    except CheckpointError as exc:
        raise ModelMissingError(str(exc)) from exc
    if meta.speaker_norm is not None and meta.speaker_norm["trained"] and not centring:
        raise ModelMissingError(
            f"{path}: model {meta.model_id} was trained on speaker-centred features (normalize: speaker) and "
            "scores skewed without stream adaptation: set centring.enabled: true, or use a model trained with "
            "normalize: none."
        )


def centring_reference(engine: Engine, config: AgentConfig) -> np.ndarray | None:
    """The reference stream adaptation centres on, or None (off, with a warning saying why when asked for)."""
    if not config.centring.enabled:
        return None
    reference = engine.centring_reference
    if reference is None:
        log.warning("model %s has no speaker_norm reference: stream adaptation is off (add one with "
                    "`python -m trainer.speaker_norm`, docs/training.md)", engine.model_id)
        return None
    if not engine.supports_offsets:
        if engine.meta.speaker_norm and engine.meta.speaker_norm["trained"]:
            raise ModelMissingError(f"model {engine.model_id} needs stream adaptation, which the "
                                    f"{type(engine).__name__} backend does not support: use ctranslate2 or torch")
        log.warning("%s: stream adaptation is not supported by this backend; windows are scored uncentred",
                    type(engine).__name__)
        return None
    return reference


def prepare_process(memory_config: MemoryConfig | None = None) -> None:
    """Process-wide settings for inference, made before the engine's threads exist. Only the agent's entry
    points (and the benchmarks, to measure what the agent runs) call it, never the library.

    * One BLAS thread for numpy (log-mel, the head): the engine's own thread pool owns the cores. Measured on
      the 2-core box: OpenBLAS's idle threads spin after each small head matmul and slowed the CTranslate2
      encoder that ran next by ~35% (docs/benchmarks.md).
    * The C allocator settings of ``memory_config`` (``edge_ser.memory``; default: ``MemoryConfig()``).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    memory.apply_at_start(memory_config or MemoryConfig())


def build_engine(config: AgentConfig) -> Engine:
    prepare_process(config.memory)
    model_dir = config.model.resolved_path()
    check_model(model_dir, config.centring.enabled)
    engine = make_engine(config.engine, model_dir, config.model.base_dir, prosody=config.model.prosody,
                         stats=config.model.stats)
    engine.warmup((config.windows.window_s, config.windows.min_window_s))
    return engine


async def _stats_loop(pipeline: Pipeline, publisher: Publisher, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        payload = {"schema_version": 1, "type": "stats", "device_id": pipeline.device_id,
                   "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **pipeline.stats()}
        publisher.publish(OutboundMessage(kind="stats", stream_id=None, payload=payload, retain=False, qos=0))


async def _trim_loop(interval: float) -> None:
    """Hand freed C-heap pages back to the OS now and then (``memory.trim_interval_s``)."""
    while True:
        await asyncio.sleep(interval)
        started = time.perf_counter()
        released = await asyncio.to_thread(memory.trim)
        log.debug("malloc_trim: %s in %.1f ms", "released memory" if released else "nothing to release",
                  (time.perf_counter() - started) * 1000)


async def _watchdog_loop(batcher: DynamicBatcher, interval: float) -> None:
    """Ping systemd only while the loop runs and inference is not stuck with work waiting."""
    while True:
        await asyncio.sleep(interval)
        if batcher.stuck(WATCHDOG_STUCK_S):
            log.error("inference made no progress for %.0f s with windows waiting: watchdog not fed",
                      WATCHDOG_STUCK_S)
            continue
        systemd.notify("WATCHDOG=1")


async def _reload(sources: SourceSet, config_path: Path) -> None:
    """SIGHUP: re-read the configuration and apply its source list; everything else needs a restart."""
    try:
        new = load_config(config_path)
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays:\n%s", exc)
        return
    summary = await sources.apply(new.sources)
    log.info("reloaded sources from %s: %s", config_path, summary)
    systemd.notify(f"STATUS=reloaded: {len(sources.running)} source(s)")


async def run_agent(config: AgentConfig, engine: Engine | None = None, publisher: Publisher | None = None,
                    stop: asyncio.Event | None = None, config_path: Path | None = None) -> int:
    """Run until a signal (or ``stop``) or until every source is exhausted; ``engine`` and ``publisher``
    default to the ones the configuration describes. With ``config_path``, SIGHUP reloads the sources."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    if engine is None:
        systemd.notify("STATUS=loading model")
        engine = await asyncio.to_thread(build_engine, config)
    publisher = publisher or make_publisher(config.publisher, config.device_id)
    await publisher.start()
    batcher = DynamicBatcher(engine, config.batching, FeatureParams(**engine.meta.features))
    batcher.start()
    pipeline = Pipeline(
        device_id=config.device_id, model_id=engine.model_id, labels=engine.labels, run_id=uuid.uuid4().hex[:8],
        batcher=batcher, publisher=publisher, vad_config=config.vad, window_config=config.windows,
        smoother_config=config.smoothing, centring_config=config.centring,
        reference=centring_reference(engine, config),
    )
    if config.stats.prometheus_port is not None:
        from edge_ser.metrics import Metrics

        Metrics(pipeline).serve(config.stats.prometheus_port)
    sources = SourceSet(pipeline)
    for source_config in config.sources:
        sources.start(source_config)
    if config_path is not None:

        def on_hup() -> None:
            task = asyncio.create_task(_reload(sources, config_path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
    helpers = [asyncio.create_task(_stats_loop(pipeline, publisher, config.stats.interval_s))]
    if config.memory.trim_interval_s is not None:
        helpers.append(asyncio.create_task(_trim_loop(config.memory.trim_interval_s)))
    if (interval := systemd.watchdog_interval()) is not None:
        helpers.append(asyncio.create_task(_watchdog_loop(batcher, interval)))
    systemd.notify("READY=1")
    systemd.notify(f"STATUS=running {len(sources.running)} source(s), model {engine.model_id}")
    log.info("agent %s running: %d source(s), model %s", config.device_id, len(sources.running), engine.model_id)

    waiters = [asyncio.create_task(sources.finished.wait()), asyncio.create_task(stop.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in waiters:
        task.cancel()
    systemd.notify("STOPPING=1")
    log.info("stopping: %s", "signal" if stop.is_set() else "all sources finished")
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.remove_signal_handler(signal.SIGHUP)
    # One grace period for draining the streams; the publisher then gets the same again to deliver.
    grace = config.shutdown_timeout_s
    deadline = loop.time() + grace
    try:
        await asyncio.wait_for(sources.stop_all(), grace)
        await asyncio.wait_for(pipeline.close(), max(0.1, deadline - loop.time()))
    except TimeoutError:
        log.warning("streams did not drain within %.1f s: windows still queued are dropped", grace)
        await pipeline.cancel()
    await batcher.close(max(0.1, deadline - loop.time()))
    for task in helpers:
        task.cancel()
    await publisher.close(grace)
    return 0
