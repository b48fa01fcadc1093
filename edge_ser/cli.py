"""Command line: ``edge-ser run | replay | validate-config | devices``.

    edge-ser run --config configs/kiosk.yaml          the daemon (systemd/edge-ser.service runs this)
    edge-ser replay AUDIO [--plot out.png]            a readable timeline of one file through the real pipeline
    edge-ser validate-config FILE                     every problem with its field path and YAML line
    edge-ser devices                                  audio input devices PortAudio can see
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from edge_ser.config import ConfigError, load_config, parse_config

log = logging.getLogger("edge_ser")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_run(args: argparse.Namespace) -> int:
    from edge_ser.agent import run_agent

    config = load_config(args.config)
    _setup_logging(args.log_level or config.log_level)
    return asyncio.run(run_agent(config, config_path=Path(args.config)))


def cmd_replay(args: argparse.Namespace) -> int:
    from edge_ser.agent import build_engine, run_agent
    from edge_ser.replay import RecordingPublisher, print_summary

    audio = Path(args.audio)
    if not audio.is_file():
        print(f"edge-ser replay: {audio}: no such file", file=sys.stderr)
        return 2
    base: dict = {} if args.config is None else _raw_yaml(args.config)
    base["sources"] = [{"type": "file", "id": args.stream_id, "path": str(audio), "realtime": args.realtime}]
    base.setdefault("stats", {})["interval_s"] = 3600
    config = parse_config(base, args.config or "<replay>")
    _setup_logging(args.log_level or "WARNING")
    engine = build_engine(config)
    recorder = RecordingPublisher(echo=None if args.json else sys.stdout)
    asyncio.run(run_agent(config, engine=engine, publisher=recorder))
    failed = [p for p in recorder.payloads("stream_status") if p["status"] == "error"]
    for status in failed:
        print(f"edge-ser replay: {audio}: {status.get('detail') or 'stream failed'}", file=sys.stderr)
    if args.json:
        for msg in recorder.messages:
            print(json.dumps({"kind": msg.kind, "payload": msg.payload}))
    else:
        print_summary(recorder)
    if args.plot:
        from edge_ser.plot import plot_timeline

        truth = json.loads(Path(args.truth).read_text())["intervals"] if args.truth else None
        out = plot_timeline(recorder.payloads("state"), recorder.payloads("event"), args.plot, truth=truth,
                            segments=recorder.payloads("segment"), title=f"{audio.name} ({engine.model_id})")
        print(f"timeline written to {out}", file=sys.stderr)
    return 1 if failed else 0


def _raw_yaml(path: str) -> dict:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: OK ({len(config.sources)} source(s), engine {config.engine.type}, "
          f"publisher {config.publisher.type})")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from edge_ser.sources.base import SourceError
    from edge_ser.sources.mic import list_devices

    try:
        devices = [d for d in list_devices() if d["max_input_channels"] > 0]
    except SourceError as exc:
        print(f"edge-ser devices: {exc}", file=sys.stderr)
        return 1
    if not devices:
        print("no audio input devices found (PortAudio lists none with input channels)")
    for dev in devices:
        print(f"#{dev['index']:<3} {dev['name']!r}  {dev['max_input_channels']} ch  "
              f"{dev['default_samplerate']:g} Hz{'  (default)' if dev.get('is_default_input') else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-ser", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (overrides config)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", required=True, help="YAML configuration (see configs/)")
    run.set_defaults(func=cmd_run)
    replay = sub.add_parser("replay", help="print the emotion timeline of one audio file")
    replay.add_argument("audio", help="WAV, FLAC or Ogg/Opus file")
    replay.add_argument("--config", default=None, help="agent YAML to take model/engine/vad/smoothing from")
    replay.add_argument("--realtime", action="store_true", help="replay on the real clock instead of at full speed")
    replay.add_argument("--plot", default=None, help="write a PNG timeline here")
    replay.add_argument("--truth", default=None, help="ground-truth JSON of a shift stream, drawn in the plot")
    replay.add_argument("--json", action="store_true", help="print the published messages as JSON lines")
    replay.add_argument("--stream-id", default="replay", help="stream id used in the payloads")
    replay.set_defaults(func=cmd_replay)
    validate = sub.add_parser("validate-config", help="check a configuration file")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)
    devices = sub.add_parser("devices", help="list audio input devices (use the index or a name part as mic.device)")
    devices.set_defaults(func=cmd_devices)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"edge-ser: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # ModelMissingError, missing optional packages, unsupported compute type
        print(f"edge-ser: {exc}", file=sys.stderr)
        return 1


def run() -> None:
    raise SystemExit(main())
