"""Audio sources: where streams come from (file replay, microphone, stdin PCM, network calls).

Each kind has a pydantic config with a ``type`` discriminator and a ``Source`` class; ``make_source`` builds
the source a config describes. The microphone module imports PortAudio only when a mic source is built.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from edge_ser.sources.base import AudioSink, BlockAssembler, Source, SourceConfigBase, SourceError, StreamId
from edge_ser.sources.file import FileSource, FileSourceConfig
from edge_ser.sources.mic import MicSourceConfig
from edge_ser.sources.network import NetworkSource, NetworkSourceConfig
from edge_ser.sources.stdin import StdinSource, StdinSourceConfig

SourceConfig = Annotated[
    FileSourceConfig | MicSourceConfig | StdinSourceConfig | NetworkSourceConfig,
    Field(discriminator="type"),
]
"""Any source config, chosen by its ``type`` field."""


def make_source(config: SourceConfig) -> Source:
    """The ``Source`` for ``config`` (raises ``SourceError`` if its native library is missing)."""
    if isinstance(config, FileSourceConfig):
        return FileSource(config)
    if isinstance(config, MicSourceConfig):
        from edge_ser.sources.mic import MicSource

        return MicSource(config)
    if isinstance(config, StdinSourceConfig):
        return StdinSource(config)
    if isinstance(config, NetworkSourceConfig):
        return NetworkSource(config)
    raise TypeError(f"unknown source config {type(config).__name__}; expected one of file, mic, stdin, network")


__all__ = [
    "AudioSink",
    "BlockAssembler",
    "FileSource",
    "FileSourceConfig",
    "MicSourceConfig",
    "NetworkSource",
    "NetworkSourceConfig",
    "Source",
    "SourceConfig",
    "SourceConfigBase",
    "SourceError",
    "StdinSource",
    "StdinSourceConfig",
    "StreamId",
    "make_source",
]
