"""The agent's configuration: one YAML file validated by pydantic v2 (unknown keys are errors).

``load_config(path)`` raises ``ConfigError`` whose message lists every problem with its field path, the
value found, what was expected and, when it can be found, the YAML line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_ser.backends import Ct2EngineConfig, EngineConfig
from edge_ser.batching import BatchingConfig
from edge_ser.centring import CentringConfig
from edge_ser.memory import MemoryConfig
from edge_ser.publish import PublisherConfig, StdoutPublisherConfig
from edge_ser.publish.topics import validate_id
from edge_ser.smoothing import SmootherConfig
from edge_ser.sources import SourceConfig
from edge_ser.vad import VadConfig
from edge_ser.windows import WindowConfig

REPO_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


class ConfigError(ValueError):
    """The configuration is invalid; ``str()`` lists each problem on its own line."""


class ModelConfig(BaseModel):
    """Which trained emotion model to run and on which Whisper base weights."""

    model_config = ConfigDict(extra="forbid")
    path: Path | None = Field(
        None, description="Checkpoint folder (model.json + model.safetensors). Default: $EDGE_SER_MODEL, else "
        "the model shipped in the repository (models/default).")
    base_dir: Path | None = Field(
        None, description="A CTranslate2 Whisper folder to use instead of the packaged whisper-base weights.")
    prosody: bool = Field(
        False, description="Add the model's prosody term (openSMILE functionals of each window, edge_ser.prosody) "
        "when it has one. Off by default: the term lifts whole clips (the shipped model: 0.663 -> 0.673 LOCO UA) "
        "but not the utterances the agent reports from its windows (-0.005 on the shift streams), and it costs "
        "about 3.8x the encoder's CPU per window (docs/ablations.md, stop 31). true needs openSMILE "
        "(pip install 'edge-ser[prosody]', research licence).")
    stats: bool = Field(
        False, description="Add the model's window-statistics term (a classifier of each window's feature mean and "
        "standard deviation, edge_ser.window_stats) when it has one. Off by default: the term lifts whole clips "
        "(the shipped model: 0.673 -> 0.684 LOCO UA) but not the utterances the agent reports from its windows "
        "(-0.005 and +0.004 on the shift streams in 4 classes, -0.018 and -0.003 over the model's labels; "
        "docs/ablations.md, stop 32). Its cost is negligible.")

    def resolved_path(self) -> Path:
        if self.path is not None:
            return self.path
        env = os.environ.get("EDGE_SER_MODEL")
        return Path(env) if env else REPO_MODEL


class StatsConfig(BaseModel):
    """Periodic statistics and Prometheus metrics."""

    model_config = ConfigDict(extra="forbid")
    interval_s: float = Field(30.0, gt=0, le=3600, description="Seconds between messages on the stats topic.")
    prometheus_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on 127.0.0.1:PORT (None: off).")


class AgentConfig(BaseModel):
    """Top-level configuration of one agent process."""

    model_config = ConfigDict(extra="forbid")
    device_id: str = Field("edge-ser", description="This device's id: a topic segment, no + # / or NUL.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The emotion model.")
    engine: EngineConfig = Field(default_factory=Ct2EngineConfig, description="Inference backend.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Dynamic batching.")
    vad: VadConfig = Field(default_factory=VadConfig, description="Voice activity detection.")
    windows: WindowConfig = Field(default_factory=WindowConfig, description="Sliding windows over speech.")
    smoothing: SmootherConfig = Field(default_factory=lambda: _default_smoother(), description="Smoother.")
    centring: CentringConfig = Field(default_factory=CentringConfig, description="Stream adaptation: centre "
                                     "each stream's features on its own running mean (edge_ser.centring).")
    sources: list[SourceConfig] = Field(description="Audio sources; each stream id must be unique.")
    publisher: PublisherConfig = Field(default_factory=StdoutPublisherConfig, description="Where events go.")
    stats: StatsConfig = Field(default_factory=StatsConfig, description="Statistics and metrics.")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, description="C allocator settings (glibc).")
    shutdown_timeout_s: float = Field(5.0, gt=0, le=120, description="Grace period to drain on SIGTERM.")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Logging level.")

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return validate_id(value, "device_id")

    @model_validator(mode="after")
    def _unique_streams(self) -> AgentConfig:
        ids = [getattr(s, "id", None) for s in self.sources]
        dupes = sorted({i for i in ids if i is not None and ids.count(i) > 1})
        if dupes:
            raise ValueError(f"stream ids must be unique, repeated: {dupes}")
        return self


def _default_smoother() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(SmootherConfig).validate_python({"type": "segment"})


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in the YAML text to its line number (1-based), for error messages."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                sub = (*path, str(index))
                lines[sub] = value.start_mark.line + 1
                walk(value, sub)

    if root is not None:
        walk(root, ())
    return lines


_TAGS = {"file", "mic", "stdin", "network", "mqtt", "stdout", "ctranslate2", "torch", "ema", "hmm", "median"}


def _is_tag(part: str) -> bool:
    return part in _TAGS or part.startswith(("function-", "tagged-union["))


def format_errors(exc: ValidationError, source: str, text: str = "") -> str:
    lines = _yaml_lines(text)
    out = []
    for err in exc.errors():
        # pydantic puts union tags (e.g. 'file' in sources.0.file.path) into the location: drop the parts
        # that are not keys of the YAML, except the last one (a missing field has no line of its own)
        loc = [str(p) for p in err["loc"]]
        key: tuple[str, ...] = ()
        shown: list[str] = []
        for index, part in enumerate(loc):
            if (*key, part) in lines or (not lines and not _is_tag(part)):
                key = (*key, part)
                shown.append(part)
            elif index == len(loc) - 1:
                shown.append(part)
        line = lines.get(key) if key else None
        where = f"{source}:{line}" if line else source
        value = err.get("input")
        value_text = "" if isinstance(value, dict) else f" (got {value!r})"
        out.append(f"{where}: {'.'.join(shown) or '<root>'}: {err['msg']}{value_text}")
    return "\n".join(out)


def parse_config(data: Any, source: str = "<config>", text: str = "") -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, text)) from None


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path), text)
