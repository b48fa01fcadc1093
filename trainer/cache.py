"""Cache of frozen encoder-layer outputs: each clip decoded once, ``views`` versions encoded, float16 on disk.

Layers ``[0, n)`` of the Whisper encoder are frozen when training fine-tunes only the layers above ``n``
(or none), so their output for a clip never changes: it is computed once per *view* and stored. View 0 is
the clean clip (centre-cropped to ``max_clip_s``); views 1.. are augmented copies (random crop, waveform
augmentations, SpecAugment), each drawn from ``rng([seed, view, clip index])``, so they are reproducible and
independent of processing order. Training samples one view per clip per epoch.

Layout, under ``cache_dir/<manifest audio key>/<view key>/``::

    layer<n>.f16   float16 (total_frames, 512), clip after clip (processing order)
    index.npz      start (N,), length (N,) in encoder frames; status (N,) 0 ok / 1 bad
    meta.json      the view's recipe and the bad clips' messages

A folder is written under a temporary name and renamed when complete, so a crash never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edge_ser.audio import AudioError
from edge_ser.features import DEFAULT_PARAMS, FeatureParams, log_mel
from edge_ser.model import WhisperEncoder
from edge_ser.types import SAMPLE_RATE
from trainer.augment import AugmentConfig, Augmenter
from trainer.data import Clip, Manifest, crop, read_clip, trim_to_hop

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MIN_SAMPLES = 1600
"""Clips shorter than 0.1 s after trimming are unusable (reported as bad)."""
D_MODEL = 512


@dataclass(frozen=True)
class ViewRecipe:
    """How one view of every clip is made; its hash names the cache folder."""

    view: int
    seed: int
    max_clip_s: float
    augment: dict[str, Any] | None  # None: the clean view
    features: dict[str, int | float]
    base_bytes: int

    def key(self) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, **self.__dict__}, sort_keys=True)
        return f"v{self.view}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def view_recipe(view: int, seed: int, max_clip_s: float, augment: AugmentConfig, base_bin: Path,
                params: FeatureParams = DEFAULT_PARAMS) -> ViewRecipe:
    clean = view == 0 or not augment.any_enabled()
    return ViewRecipe(view=view, seed=0 if view == 0 else seed, max_clip_s=max_clip_s,
                      augment=None if clean else augment.model_dump(mode="json"),
                      features=params.to_dict(), base_bytes=base_bin.stat().st_size)


def prepare_mel(audio: np.ndarray, rng: np.random.Generator | None, augmenter: Augmenter | None,
                max_samples: int, params: FeatureParams = DEFAULT_PARAMS) -> np.ndarray:
    """One view's log-mel: crop (random with ``rng``, else centre), augment, trim to a multiple of 320 samples,
    log-mel, SpecAugment. ``rng`` and ``augmenter`` None give the clean eval view."""
    x = crop(audio, max_samples, rng)
    if augmenter is not None and rng is not None:
        x, _ = augmenter.waveform(x, rng)
        x = crop(x, max_samples, rng)
    x = trim_to_hop(x)
    if len(x) < MIN_SAMPLES:
        raise AudioError(f"only {len(x)} usable samples (< {MIN_SAMPLES})")
    mel = log_mel(x, params)
    if augmenter is not None and rng is not None:
        mel, _ = augmenter.mel(mel, rng)
    return mel


def pad_mels(mels: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad log-mels (n_mels, T_i) to (B, n_mels, T_max); return them and encoder frame counts T_i // 2.

    Zero padding keeps the valid encoder frames exact: conv1 sees zeros past the end either way, and conv2
    (stride 2, kernel 3) never reaches past frame T_i - 1 for an output frame below T_i // 2.
    """
    longest = max(m.shape[1] for m in mels)
    batch = np.zeros((len(mels), mels[0].shape[0], longest), dtype=np.float32)
    for row, mel in enumerate(mels):
        batch[row, :, : mel.shape[1]] = mel
    return torch.from_numpy(batch), torch.tensor([m.shape[1] // 2 for m in mels], dtype=torch.long)


def valid_mask(frames: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) frame counts -> (B, width) bool, True where the frame carries audio."""
    return torch.arange(width, device=frames.device)[None, :] < frames[:, None]


def masked_frame_mean(values: torch.Tensor, valid: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Mean of ``values`` (B, F, ...) over each row's valid frames (``valid`` (B, F) bool); 0 for a row with none."""
    mask = valid.to(values.dtype).view(*valid.shape, *([1] * (values.dim() - 2)))
    return (values * mask).sum(dim=1, keepdim=keepdim) / mask.sum(dim=1, keepdim=keepdim).clamp(min=1.0)


@torch.no_grad()
def encode(encoder: WhisperEncoder, mels: Sequence[np.ndarray], layers: Sequence[int]) -> dict[int, list[np.ndarray]]:
    """Outputs after each of ``layers`` blocks for a batch of log-mels: {n: [(frames_i, 512) float16]}."""
    batch, frames = pad_mels(mels)
    valid = valid_mask(frames, batch.shape[-1] // 2)
    x = encoder.embed(batch)
    out: dict[int, list[np.ndarray]] = {}
    if 0 in layers:
        out[0] = _split(x, frames)
    for index in range(max(layers)):
        x = encoder.layers[index](x, ~valid)
        if index + 1 in layers:
            out[index + 1] = _split(x, frames)
    return out


def _split(x: torch.Tensor, frames: torch.Tensor) -> list[np.ndarray]:
    data = x.to(torch.float16).cpu().numpy()
    return [data[row, : int(n)] for row, n in enumerate(frames)]


class CachedView:
    """Read-only access to one view's cached states at one layer, or at several side by side (``mix_layers``:
    each clip's frames x (k * 512), the layers in that order, what a layer-mixing model reads)."""

    def __init__(self, folder: Path, layer: int, mix_layers: Sequence[int] = ()) -> None:
        self.folder = folder
        self.layer = layer
        index = np.load(folder / "index.npz")
        self.start = index["start"]
        self.length = index["length"]
        self.status = index["status"]
        total = int((self.start + self.length).max()) if len(self.start) else 0
        self.parts = [np.memmap(folder / f"layer{n}.f16", dtype=np.float16, mode="r", shape=(max(total, 1), D_MODEL))
                      for n in (mix_layers or [layer])]
        self.states = self.parts[-1] if mix_layers else self.parts[0]
        self.meta = json.loads((folder / "meta.json").read_text())

    def __len__(self) -> int:
        return len(self.start)

    @property
    def width(self) -> int:
        """Channels of one frame as ``get`` returns it: 512 per layer."""
        return D_MODEL * len(self.parts)

    def get(self, index: int) -> np.ndarray:
        start = int(self.start[index])
        stop = start + int(self.length[index])
        if len(self.parts) == 1:
            return self.states[start:stop]
        return np.concatenate([part[start:stop] for part in self.parts], axis=1)


@dataclass
class CacheSet:
    """All views of a manifest at one layer; ``bad`` maps clip index -> why its clean view could not be made.

    An augmented view can fail on its own (a clip sped up below the minimum length): its status is 1 there,
    and training falls back to another view of that clip."""

    views: list[CachedView]
    bad: dict[int, str]

    @property
    def n_views(self) -> int:
        return len(self.views)


def _base_encoder(base_bin: Path, layers: int, threads: int | None) -> WhisperEncoder:
    from edge_ser.model import load_whisper_encoder

    if threads:
        torch.set_num_threads(threads)
    encoder, _ = load_whisper_encoder(base_bin, layers)
    return encoder.eval()


def ensure_cache(manifest: Manifest, cache_dir: str | Path, layer: int, views: int, augment: AugmentConfig,
                 seed: int, max_clip_s: float, base_bin: Path, batch_frames: int = 4096,
                 threads: int | None = None, extra_layers: Sequence[int] = (),
                 params: FeatureParams = DEFAULT_PARAMS, mix_layers: Sequence[int] = ()) -> CacheSet:
    """Build what is missing and open the cache of ``views`` views at ``layer`` for every clip in ``manifest``.

    ``extra_layers`` are computed in the same pass (e.g. layer 2 for later top-layer fine-tuning); ``params``
    are the model's feature parameters (part of each view's key); with ``mix_layers`` (all among ``layer`` and
    ``extra_layers``) the views are opened at those layers side by side (``CachedView``).
    """
    root = Path(cache_dir) / manifest.audio_key()
    recipes = [view_recipe(v, seed, max_clip_s, augment, base_bin, params) for v in range(views)]
    wanted = sorted({layer, *extra_layers})
    todo = {r.view: [n for n in wanted if not (root / r.key() / f"layer{n}.f16").is_file()] for r in recipes}
    todo = {v: ns for v, ns in todo.items() if ns}
    if todo:
        _build(manifest, root, [recipes[v] for v in sorted(todo)], todo, augment, base_bin, batch_frames, threads,
               params)
    opened = [CachedView(root / r.key(), layer, mix_layers) for r in recipes]
    bad = {int(i): opened[0].meta["bad"].get(str(int(i)), "bad") for i in np.flatnonzero(opened[0].status)}
    return CacheSet(views=opened, bad=bad)


def babble_pool(clips: Sequence[Clip], size: int, seed: int) -> list[np.ndarray]:
    """Decoded audio of ``size`` random clips, the material babble noise is made of."""
    rng = np.random.default_rng([seed, 7919])
    pool = []
    for index in rng.permutation(len(clips))[: size * 2]:
        try:
            pool.append(read_clip(clips[int(index)]))
        except AudioError:
            continue
        if len(pool) >= size:
            break
    return pool


def _build(manifest: Manifest, root: Path, recipes: list[ViewRecipe], todo: dict[int, list[int]],
           augment: AugmentConfig, base_bin: Path, batch_frames: int, threads: int | None,
           params: FeatureParams = DEFAULT_PARAMS) -> None:
    clips = manifest.clips
    deepest = max(max(ns) for ns in todo.values())
    encoder = _base_encoder(base_bin, deepest, threads)
    needs_babble = any(r.augment is not None for r in recipes) and "babble" in augment.noise_types
    augmenter = Augmenter(augment, babble_pool(clips, 64, recipes[0].seed) if needs_babble else ())
    tmp = {r.view: root / f"{r.key()}.tmp{os.getpid()}" for r in recipes}
    handles: dict[tuple[int, int], Any] = {}
    starts = {r.view: np.zeros(len(clips), dtype=np.int64) for r in recipes}
    lengths = {r.view: np.zeros(len(clips), dtype=np.int64) for r in recipes}
    status = {r.view: np.zeros(len(clips), dtype=np.int8) for r in recipes}
    written = dict.fromkeys(tmp, 0)
    bad: dict[int, dict[str, str]] = {r.view: {} for r in recipes}
    for r in recipes:
        final = root / r.key()
        shutil.rmtree(tmp[r.view], ignore_errors=True)
        tmp[r.view].mkdir(parents=True)
        for n in todo[r.view]:
            handles[(r.view, n)] = (tmp[r.view] / f"layer{n}.f16").open("wb")
        if final.is_dir():  # some layers exist already: recompute the view wholesale into the new folder
            log.info("cache %s: adding layers %s", final, todo[r.view])
    order = sorted(range(len(clips)), key=lambda i: clips[i].duration_s or 0.0)
    log.info("caching %d clips x %d views at layers %s into %s", len(clips), len(recipes), sorted(
        {n for ns in todo.values() for n in ns}), root)
    chunk = 256
    with tqdm(total=len(clips) * len(recipes), desc="cache", unit="clip", mininterval=10) as bar:
        for first in range(0, len(order), chunk):
            members = order[first : first + chunk]
            audio: dict[int, np.ndarray] = {}
            for i in members:
                try:
                    audio[i] = read_clip(clips[i])
                except AudioError as exc:
                    for r in recipes:
                        status[r.view][i] = 1
                        bad[r.view][str(i)] = str(exc)
            for r in recipes:
                max_samples = int(r.max_clip_s * SAMPLE_RATE)
                mels: dict[int, np.ndarray] = {}
                for i, x in audio.items():
                    rng = None if r.augment is None else np.random.default_rng([r.seed, r.view, i])
                    try:
                        mels[i] = prepare_mel(x, rng, None if r.augment is None else augmenter, max_samples,
                                              params)
                    except (AudioError, ValueError) as exc:
                        status[r.view][i] = 1
                        bad[r.view][str(i)] = f"{clips[i].path}: {exc}"
                for batch in _batches(mels, batch_frames):
                    outputs = encode(encoder, [mels[i] for i in batch], todo[r.view])
                    for n, states in outputs.items():
                        for s in states:
                            handles[(r.view, n)].write(s.tobytes())
                    for i, s in zip(batch, outputs[todo[r.view][0]], strict=True):
                        starts[r.view][i] = written[r.view]
                        lengths[r.view][i] = len(s)
                        written[r.view] += len(s)
                bar.update(len(members))
    for handle in handles.values():
        handle.close()
    for r in recipes:
        folder = tmp[r.view]
        np.savez(folder / "index.npz", start=starts[r.view], length=lengths[r.view], status=status[r.view])
        meta = {"recipe": r.__dict__, "manifest": str(manifest.path), "clips": len(clips),
                "layers": todo[r.view], "bad": bad[r.view]}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        final = root / r.key()
        if final.is_dir():  # keep the layers computed before alongside the new ones only if frames agree
            for old in final.glob("layer*.f16"):
                if not (folder / old.name).exists():
                    old_index = np.load(final / "index.npz")
                    if np.array_equal(old_index["length"], lengths[r.view]) and np.array_equal(
                            old_index["start"], starts[r.view]):
                        shutil.move(str(old), folder / old.name)
            shutil.rmtree(final)
        folder.rename(final)
    if any(bad.values()):
        log.warning("cache: %d clips could not be used", len(bad[recipes[0].view]))


def _batches(mels: dict[int, np.ndarray], batch_frames: int) -> list[list[int]]:
    """Group clips of similar length so that batch size x longest encoder frames stays within the budget."""
    ordered = sorted(mels, key=lambda i: mels[i].shape[1])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in ordered:
        frames = mels[i].shape[1] // 2
        if current and (len(current) + 1) * frames > batch_frames:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
