"""``edge-ser-eval``: score a trained model on any manifest and write EVAL.md's JSON + confusion PNGs.

    edge-ser-eval --model models/default --manifest ../shared/data/manifest.csv --protocol 4class \\
        --out results.json [--calm-as-neutral] [--skip-bad]
    edge-ser-eval --streams --model DIR (--stream-dir DIR | --manifest M --n 10) --out tracking.json

``--streams`` scores temporal tracking on shift streams instead (``trainer.stream_eval``).

The model runs on the CPU (or ``--device cuda``) with the PyTorch ``EmotionModel`` rebuilt from the
checkpoint folder, or with ``--engine ctranslate2 --compute-type int8|float32|...`` (options shared with
``--streams``; clip scoring defaults to torch) through the runtime's CTranslate2 backend (one window per clip,
the agent's exact computation) to measure what a compute type costs. Nothing about corpus names or
languages is assumed: corpora come from the manifest. A model with a prosody classifier
(edge_ser/prosody.py) gets its term from each clip's scored samples, as the agent's batcher adds it per window.
``predict_cached`` gives the same clip logits from the trainer's frozen-layer cache (LOCO, dev checks); the
prosody term is added there from cached functionals (``RunData.prosody_bias``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edge_ser.audio import AudioError
from edge_ser.backends.base import Engine
from edge_ser.checkpoint import ModelMeta
from edge_ser.features import DEFAULT_PARAMS, FeatureParams
from edge_ser.model import EmotionModel, load_emotion_model
from edge_ser.prosody import ProsodyScorer, load_prosody
from edge_ser.types import SAMPLE_RATE
from trainer import stream_eval
from trainer.cache import CachedView, pad_mels, prepare_mel, valid_mask
from trainer.data import Clip, ManifestError, Problem, crop, load_manifest, read_clip
from trainer.metrics import PROTOCOLS, mean_over_corpora, score
from trainer.plots import plot_confusion, safe_name
from trainer.speaker_norm import stream_offsets

log = logging.getLogger(__name__)


def build_model_from_checkpoint(folder: str | Path, base_dir: str | Path | None = None
                                ) -> tuple[EmotionModel, ModelMeta]:
    """The trained ``EmotionModel`` (eval mode) and its metadata; see ``edge_ser.model.load_emotion_model``."""
    return load_emotion_model(folder, base_dir)


def _length_batches(lengths: Sequence[int], batch_frames: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * max(lengths[i], 1) > batch_frames:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def predict_cached(model: EmotionModel, view: CachedView, indices: Sequence[int], start_layer: int,
                   batch_frames: int = 8192, device: str | torch.device = "cpu", frame_mean: bool = False,
                   offsets: np.ndarray | None = None) -> np.ndarray:
    """Clip logits (N, C), prior-corrected, for cached states entering ``start_layer``. ``frame_mean`` pools
    with the plain mean of frame logits (what per-second scores average) instead of the head's weights;
    ``offsets`` (N, D): per-speaker centring of each clip (trainer/speaker_norm.py)."""
    model.eval()
    lengths = [int(view.length[i]) for i in indices]
    out = np.zeros((len(indices), model.head.config.n_classes), dtype=np.float32)
    for batch in _length_batches(lengths, batch_frames):
        longest = max(lengths[b] for b in batch)
        states = np.zeros((len(batch), longest, view.width), dtype=np.float32)
        for row, b in enumerate(batch):
            states[row, : lengths[b]] = view.get(indices[b])
        frames = torch.tensor([lengths[b] for b in batch], device=device)
        valid = valid_mask(frames, longest)
        x = torch.from_numpy(states).to(device)
        offset = None if offsets is None else torch.from_numpy(offsets[batch]).to(device)
        feats = model.features(x, start_layer=start_layer, hidden=x, key_padding=~valid, offset=offset)
        frame_logits, clip_logits = model.head(feats, valid)
        if frame_mean:
            mask = valid.unsqueeze(-1).to(frame_logits.dtype)
            clip_logits = (frame_logits * mask).sum(dim=1) / mask.sum(dim=1)
        out[batch] = (clip_logits - model.log_prior).float().cpu().numpy()
    return out


@torch.no_grad()
def predict_mels(model: EmotionModel, mels: Sequence[np.ndarray], batch_frames: int = 8192,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """Clip logits (N, C), prior-corrected, for log-mels of any even lengths (zero-padded, masked)."""
    model.eval()
    out = np.zeros((len(mels), model.head.config.n_classes), dtype=np.float32)
    for batch in _length_batches([m.shape[1] // 2 for m in mels], batch_frames):
        x, frames = pad_mels([mels[b] for b in batch])
        x, frames = x.to(device), frames.to(device)
        valid = valid_mask(frames, x.shape[-1] // 2)
        feats = model.features(x, key_padding=~valid)
        _, clip_logits = model.head(feats, valid)
        out[batch] = (clip_logits - model.log_prior).float().cpu().numpy()
    return out


def predict_engine(engine: Engine, mels: Sequence[np.ndarray], offsets: Sequence[np.ndarray | None] | None = None,
                   means: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Clip logits (N, C), prior-corrected, from a runtime ``Engine`` (it batches equal lengths itself);
    ``offsets``: stream adaptation per clip; ``means`` gets each clip's feature mean (edge_ser.centring)."""
    scores = engine.infer(mels, offsets)
    if means is not None:
        means.extend(s.feature_mean for s in scores)
    return np.stack([s.clip_logits() for s in scores]).astype(np.float32)


def predict_clips(model: EmotionModel | Engine, clips: Sequence[Clip], max_clip_s: float = 30.0, chunk: int = 256,
                  batch_frames: int = 8192, device: str | torch.device = "cpu",
                  params: FeatureParams = DEFAULT_PARAMS, offsets: np.ndarray | None = None,
                  measured: dict[int, tuple[np.ndarray, int]] | None = None, prosody: ProsodyScorer | None = None
                  ) -> tuple[np.ndarray, list[Problem]]:
    """Clip logits for decodable clips (rows of bad clips are NaN) and the problems met while decoding;
    ``params`` are the model's feature parameters (``FeatureParams(**meta.features)``); ``prosody``: the
    model's prosody term (``edge_ser.prosody.load_prosody``), added from each clip's scored samples;
    ``model`` is the PyTorch model (padded, masked batches) or a runtime ``Engine``. With an ``Engine``:
    ``offsets`` (N, D) centre each clip (stream adaptation) and ``measured`` gets {clip: (feature mean,
    encoder frames)}."""
    n_classes = len(model.labels) if isinstance(model, Engine) else model.head.config.n_classes
    logits = np.full((len(clips), n_classes), np.nan, dtype=np.float32)
    problems: list[Problem] = []
    max_samples = int(max_clip_s * SAMPLE_RATE)
    with tqdm(total=len(clips), desc="eval", unit="clip", mininterval=10) as bar:
        for first in range(0, len(clips), chunk):
            ok: list[int] = []
            mels: list[np.ndarray] = []
            samples: list[np.ndarray] = []
            for i in range(first, min(first + chunk, len(clips))):
                try:
                    audio = read_clip(clips[i])
                    mels.append(prepare_mel(audio, None, None, max_samples, params))
                    samples.append(crop(audio, max_samples))
                    ok.append(i)
                except (AudioError, ValueError) as exc:
                    problems.append(Problem(clips[i].line, f"{clips[i].path}: {exc}"))
            if mels and isinstance(model, Engine):
                means: list[np.ndarray | None] = []
                logits[ok] = predict_engine(model, mels, None if offsets is None else list(offsets[ok]), means)
                if measured is not None:
                    for i, mel, mean in zip(ok, mels, means, strict=True):
                        if mean is not None:
                            measured[i] = (mean, mel.shape[1] // 2)
            elif mels:
                logits[ok] = predict_mels(model, mels, batch_frames, device)
            if mels and prosody is not None:
                logits[ok] += prosody.bias(samples)
            bar.update(min(chunk, len(clips) - first))
    return logits, problems


def report(logits: np.ndarray, clips: Sequence[Clip], classes: Sequence[str], protocol: str,
           calm_as_neutral: bool, model_name: str, manifest_name: str) -> dict[str, Any]:
    """EVAL.md's JSON object for clip logits (rows with NaN are ignored)."""
    keep = ~np.isnan(logits).any(axis=1)
    kept = [c for c, k in zip(clips, keep, strict=True) if k]
    corpora = score(logits[keep], [c.emotion for c in kept], [c.corpus for c in kept], classes, protocol,
                    calm_as_neutral)
    return {"protocol": protocol, "model": model_name, "manifest": manifest_name, "corpora": corpora,
            "mean": mean_over_corpora(corpora)}


def write_report(result: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the JSON and one confusion PNG per corpus (``<out stem>.<corpus>.png`` next to it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    written = [out]
    for corpus, entry in result["corpora"].items():
        title = f"{corpus} ({result['protocol']}): UA {entry['ua']:.3f}, n {entry['n']}"
        png = out.with_name(f"{out.stem}.{safe_name(corpus)}.png")
        written.append(plot_confusion(entry["confusion"], entry["labels"], title, png))
    return written


def evaluate(model_dir: str | Path, manifest_path: str | Path, protocol: str = "4class",
             calm_as_neutral: bool = False, skip_bad: bool = False, device: str = "cpu",
             max_clip_s: float = 30.0, base_dir: str | Path | None = None, engine: str = "torch",
             compute_type: str = "int8", threads: int = 0, adapt: Adaptation | None = None) -> dict[str, Any]:
    """Load the model, score every clip of the manifest, and return EVAL.md's JSON object. ``engine``
    ``ctranslate2`` scores through the runtime's CTranslate2 backend in ``compute_type``. ``adapt``: score
    each speaker's clips as a stream the model adapts to (``adapted_logits``; speaker-adaptive, not the
    zero-shot figure)."""
    manifest = load_manifest(manifest_path, skip_bad=skip_bad)
    scorer: EmotionModel | Engine
    if engine == "ctranslate2":
        from edge_ser.backends.ct2_backend import Ct2Engine

        scorer = Ct2Engine(model_dir, base_dir, device=device, compute_type=compute_type, intra_threads=threads)
        meta = scorer.meta
    elif engine == "torch" and adapt is not None:
        from edge_ser.backends.torch_backend import TorchEngine

        scorer = TorchEngine(model_dir, base_dir, device=device)
        meta = scorer.meta
    elif engine == "torch":
        scorer, meta = build_model_from_checkpoint(model_dir, base_dir)
        scorer.to(device)
    else:
        raise ValueError(f"engine {engine!r}: expected 'torch' or 'ctranslate2'")
    params = FeatureParams(**meta.features)
    prosody = load_prosody(model_dir)
    if adapt is not None and isinstance(scorer, Engine):
        scorer.prosody = prosody
        logits, problems = adapted_logits(scorer, manifest.clips, adapt, max_clip_s, params)
    else:
        logits, problems = predict_clips(scorer, manifest.clips, max_clip_s=max_clip_s, device=device,
                                         params=params, prosody=prosody)
    if problems and not skip_bad:
        raise ManifestError(Path(manifest_path), problems, hint=" (undecodable audio; pass --skip-bad)")
    if problems:
        log.warning("skipped %d undecodable clips", len(problems))
    result = report(logits, manifest.clips, meta.labels, protocol, calm_as_neutral, str(model_dir),
                    str(manifest_path))
    if adapt is not None:
        result["adaptation"] = dataclasses.asdict(adapt)
    return result


@dataclasses.dataclass(frozen=True)
class Adaptation:
    """Stream adaptation in evaluation: each speaker's clips replayed in a seeded order (``grouped``: each
    emotion's clips in a row), each clip centred on the speaker's earlier clips (trainer/speaker_norm.py)."""

    order: str = "shuffled"
    prior_s: float = 30.0
    seed: int = 0


def adapted_logits(engine: Engine, clips: Sequence[Clip], adapt: Adaptation, max_clip_s: float,
                   params: FeatureParams) -> tuple[np.ndarray, list[Problem]]:
    """Clip logits with stream adaptation: a first pass measures every clip's feature mean (uncentred), a
    second scores each clip centred on its speaker's earlier clips, as ``trainer.loco --centre stream`` does
    from the cache."""
    reference = engine.centring_reference
    if reference is None:
        raise ValueError(f"model {engine.model_id} has no speaker_norm reference for stream adaptation: add one "
                         "with `python -m trainer.speaker_norm --model DIR --manifest TRAINING.csv`")
    measured: dict[int, tuple[np.ndarray, int]] = {}
    _, problems = predict_clips(engine, clips, max_clip_s=max_clip_s, params=params, measured=measured)
    rows = sorted(measured)
    offsets = np.zeros((len(clips), len(reference)), dtype=np.float32)
    if rows:
        means = np.stack([measured[i][0] for i in rows])
        frames = np.array([measured[i][1] for i in rows])
        offsets[rows], _ = stream_offsets(clips, rows, means, frames, reference, adapt.prior_s, adapt.seed,
                                          adapt.order)
    logits, _ = predict_clips(engine, clips, max_clip_s=max_clip_s, params=params, offsets=offsets,
                              prosody=engine.prosody)
    return logits, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-ser-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (model.json + model.safetensors)")
    parser.add_argument("--manifest", default=None, help="manifest CSV in the EVAL.md format (required unless "
                        "--streams --stream-dir)")
    parser.add_argument("--protocol", default="4class", choices=sorted(PROTOCOLS))
    parser.add_argument("--calm-as-neutral", action="store_true", help="score 'calm' clips as neutral")
    parser.add_argument("--out", required=True, help="results JSON path (confusion PNGs go next to it)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad rows and undecodable clips")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (--streams: the engine's)")
    parser.add_argument("--max-clip-s", type=float, default=30.0, help="centre-crop longer clips (<= 30 s)")
    parser.add_argument("--base-dir", default=None, help="CTranslate2 whisper-base folder")
    parser.add_argument("--adapt", choices=["stream", "stream-grouped"], default=None, help="score each "
                        "speaker's clips as one stream the model adapts to (edge_ser.centring), in a seeded order "
                        "(grouped: each emotion's clips in a row): a speaker-adaptive figure, not the zero-shot one")
    parser.add_argument("--adapt-prior-s", type=float, default=30.0, help="--adapt: the agent's centring.prior_s "
                        "(default 30, as the agent's)")
    parser.add_argument("--adapt-seed", type=int, default=0, help="--adapt: seed of each speaker's clip order")
    stream_eval.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.streams:
        return stream_eval.run_from_args(args)
    if args.manifest is None:
        parser.error("--manifest is required (except with --streams --stream-dir)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = evaluate(args.model, args.manifest, args.protocol, args.calm_as_neutral, args.skip_bad,
                          args.device, args.max_clip_s, args.base_dir, args.engine or "torch",
                          args.compute_type or "int8", args.threads or 0,
                          None if args.adapt is None else Adaptation(
                              "grouped" if args.adapt == "stream-grouped" else "shuffled", args.adapt_prior_s,
                              args.adapt_seed))
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    write_report(result, args.out)
    mean = result["mean"]
    log.info("%s mean over %d corpora: UA %.4f, macro-F1 %.4f, WA %.4f -> %s", args.protocol,
             len(result["corpora"]), mean["ua"], mean["macro_f1"], mean["wa"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
