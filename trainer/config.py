"""The training recipe as a validated model, read from YAML with ``key=value`` overrides.

``configs/train-cpu.yaml`` is the default recipe; every field is documented below. Overrides use dotted
paths and YAML values: ``--set domain.weight=0.03 --set head.type=attentive --set views=1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_ser.checkpoint import mix_layers_problem
from edge_ser.features import LEVEL_DB_RANGE, FeatureParams
from trainer.augment import AugmentConfig


class ConfigError(ValueError):
    """The recipe is not valid; the message names the file, the field, the value and what was expected."""


class HeadSettings(BaseModel):
    """The emotion head on top of the encoder."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["frame", "attentive"] = Field("frame", description="frame: clip = mean of frame logits; "
                                                "attentive: attention-weighted mean.")
    hidden: int = Field(256, ge=8, le=4096, description="Hidden width of the per-frame MLP.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the hidden activations.")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the encoder features the head reads "
                                 "(each of the 512 channels of each frame; training only).")


class DomainSettings(BaseModel):
    """The domain-adversarial head (gradient reversal) of paper 1."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="Train a domain head behind a gradient reversal layer.")
    target: Literal["corpus", "speaker"] = Field("corpus", description="What the domain head predicts.")
    weight: float = Field(0.01, ge=0, description="Gradient reversal weight wd (paper 1: 0.01).")
    warmup_epochs: int = Field(2, ge=0, description="Epochs over which wd ramps linearly from 0.")
    hidden: int = Field(128, ge=8, description="Hidden width of the domain MLP.")


class BalanceSettings(BaseModel):
    """Class and corpus balance of the loss, and the optional class-prior correction."""

    model_config = ConfigDict(extra="forbid")
    class_power: float = Field(1.0, ge=0, description="Per-class loss weight (N / (K n_c)) ** power; 0 = none.")
    corpus_power: float = Field(0.5, ge=0, description="Per-corpus loss weight (N / (M n_m)) ** power; 0 = none.")
    prior_correction: bool = Field(False, description="Store the log class prior of the loss-weighted "
                                   "training targets in the checkpoint; it is subtracted from the logits at "
                                   "inference (post-hoc logit adjustment; use with class_power 0).")


class StatsSettings(BaseModel):
    """The window-statistics classifier fused with the encoder head (edge_ser/window_stats.py,
    trainer/window_stats.py)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="After training, fit a logistic regression on the training clips' "
                          "per-feature mean and standard deviation of the head's (standardised) input features "
                          "(same class and corpus loss weights) and store it in the model: its log-probabilities "
                          "times weight are added to every frame logit of a window. Needs the frame cache.")
    weight: float = Field(0.3, ge=0, le=10, description="Fusion weight of the window-statistics log-probabilities. "
                          "0.3 (with c 3 and prosody at 0.7) was the best of a grid over the weight (0-0.7), c "
                          "(0.3, 1, 3) and the prosody weight, scored on the recipe's seeds 0 and 1 (LOCO); the "
                          "plateau from 0.2 to 0.4 is within 0.002 (docs/ablations.md, stop 32).")
    c: float = Field(3.0, gt=0, description="Inverse L2 strength of the logistic regression (scikit-learn's C).")


class ProsodySettings(BaseModel):
    """The prosody classifier fused with the encoder head (edge_ser/prosody.py, trainer/prosody.py)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="After training, fit a logistic regression on the training clips' "
                          "eGeMAPSv02 functionals (openSMILE; same class and corpus loss weights) and store it "
                          "in the model: its log-probabilities times weight are added to every clip and "
                          "per-second logit. The functionals are cached beside the frame cache.")
    weight: float = Field(0.7, ge=0, le=10, description="Fusion weight of the prosody log-probabilities. 0.7 was "
                          "chosen on the recipe's seeds 0 and 1 (LOCO, fitted with fit_trim_db 40; 0.3-0.7 all "
                          "within 0.003) and checked on seeds 2 and 3 (docs/ablations.md, stop 31).")
    c: float = Field(1.0, gt=0, description="Inverse L2 strength of the logistic regression (scikit-learn's C).")
    fit_trim_db: float | None = Field(40.0, gt=0, description="Fit on the training clips' functionals with their "
                                      "quiet edges cut (leading / trailing 20 ms frames this many dB under the "
                                      "loudest), so the corpora's recorded silences teach it nothing; scoring "
                                      "stays on the audio as given. null: fit on the clips as given (stop 30's "
                                      "classifier: 0.668 LOCO merged at weight 0.3, against 0.673 with 40 at "
                                      "0.7; docs/ablations.md, stop 31).")


class RegularizeSettings(BaseModel):
    """Batch-level regularizers on the frozen layers' output (trainer/regularize.py); all off by default."""

    model_config = ConfigDict(extra="forbid")
    crop_p: float = Field(0.0, ge=0, le=1, description="Share of training clips cut to one random span of "
                          "their frames each step (0: whole clips).")
    crop_min_s: float = Field(1.0, gt=0, description="Shortest span a crop keeps, in seconds.")
    mixup_p: float = Field(0.0, ge=0, le=1, description="Share of training clips mixed with another clip of "
                           "the batch each step (inputs, targets, loss weights and domain targets alike).")
    mixup_alpha: float = Field(0.4, gt=0, description="Beta(alpha, alpha) draws the mix; the clip's own share "
                               "is max(l, 1 - l).")
    speaker_shift_p: float = Field(0.0, ge=0, le=1, description="Share of training clips whose speaker mean "
                                   "(standardised encoder features) is moved toward another training speaker's "
                                   "each step, to teach the head to ignore the per-speaker offset that stream "
                                   "adaptation removes at run time (measured: it does not, docs/ablations.md, "
                                   "stop 17). Needs the cache.")
    speaker_shift_max: float = Field(1.0, gt=0, le=2, description="The move's share of the way to the other "
                                     "speaker's mean is uniform in [0, this] (1: up to the whole way).")
    contrast_weight: float = Field(0.0, ge=0, description="Weight of the cross-corpus supervised contrastive "
                                   "loss on the head's frame-averaged activations: clips of one class from "
                                   "different corpora pulled together, other classes pushed apart "
                                   "(trainer/regularize.py, cross_corpus_contrast; 0: off). Mixed rows do not "
                                   "anchor it. Measured at 0.1: -0.008 LOCO UA over two seeds "
                                   "(docs/ablations.md, stop 28).")
    contrast_temperature: float = Field(0.1, gt=0, description="Temperature of the cross-corpus contrast's "
                                        "cosine similarities.")
    frame_loss_weight: float = Field(0.0, ge=0, description="Weight of an extra cross-entropy of every valid "
                                     "frame's logits against its clip's target (averaged over the clip's frames, "
                                     "loss-weighted like the clip loss), so that each frame carries the emotion "
                                     "on its own, not only their mean (0: off). Measured at 0.5: -0.103 LOCO "
                                     "UA on two folds (docs/ablations.md, stop 28).")
    style_mix_p: float = Field(0.0, ge=0, le=1, description="Share of training clips whose normalised features "
                               "take part of another corpus's clip's per-channel mean and standard deviation over "
                               "time each step (MixStyle, cross-domain; trainer/regularize.py; 0: off), so the "
                               "head cannot lean on a corpus's or speaker's feature statistics. Measured at "
                               "0.5: -0.038 LOCO UA on three folds of two seeds (docs/ablations.md, stop 29).")
    style_mix_alpha: float = Field(0.1, gt=0, description="Beta(alpha, alpha) draws the clip's own share of the "
                                   "mixed statistics (0.1, MixStyle's: mostly near 0 or 1).")
    style_mix_same_class: bool = Field(False, description="Mix only with clips of the same class (and another "
                                       "corpus), so the statistics' emotion stays and only corpus and speaker "
                                       "move.")


class TrainConfig(BaseModel):
    """Everything one training run needs besides the manifest and the output folder."""

    model_config = ConfigDict(extra="forbid")
    labels: str = Field("configs/labels.yaml", description="Soft-label map YAML (relative to the working dir).")
    label_mode: Literal["soft", "hard"] = Field("soft", description="soft: label map + neutral smoothing; "
                                                "hard: one-hot of the map's top class.")
    neutral_smoothing: float | None = Field(None, ge=0, lt=1, description="Override the map's smoothing.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Uniform label smoothing of the training "
                                   "targets (after label_mode and neutral smoothing): this share of each "
                                   "target's mass spread evenly over all output classes (0: off). Dev targets "
                                   "stay as they are. Measured at 0.1: -0.031 LOCO UA on three folds of two "
                                   "seeds, with better calibration (docs/ablations.md, stop 29).")
    corpora: list[str] | None = Field(None, description="Train only on these corpora (all when null).")
    exclude_corpora: list[str] = Field(default_factory=list, description="Corpora left out of training.")
    train_protocol: Literal["all", "4class", "5class"] = Field(
        "all", description="Which clips train: all labels, or only those of the 4/5-class protocol.")
    skip_bad: bool = Field(False, description="Drop bad manifest rows / undecodable clips instead of failing.")
    encoder_layers: int = Field(3, ge=1, le=6, description="Whisper-base encoder layers kept.")
    trainable_layers: int = Field(0, ge=0, description="Top encoder layers fine-tuned (the rest frozen).")
    mix_layers: list[int] = Field(default_factory=list, description="Encoder blocks (1-based, increasing, "
                                  "ending with encoder_layers) whose outputs the head reads, joined as "
                                  "layer_join says, e.g. [2, 3]; empty: the last block alone. Needs "
                                  "trainable_layers 0, and the cache holds each mixed block's output.")
    layer_join: Literal["mix", "concat"] = Field("mix", description="How the head reads mix_layers: 'mix', the "
                                                 "final LayerNorm of their learned softmax-weighted sum; 'concat', "
                                                 "each block through the final LayerNorm, side by side (the head "
                                                 "reads k x 512 features).")
    head: HeadSettings = Field(default_factory=HeadSettings, description="Emotion head.")
    max_clip_s: float = Field(8.0, gt=0.1, le=30.0, description="Longer clips are cropped (random for "
                              "training views, centred for evaluation).")
    trim_db: float | None = Field(None, gt=0, le=120, description="Cut each input's leading and trailing 20 ms "
                                  "frames more than this many dB below its loudest (edge_ser.features); stored in "
                                  "the model, so evaluation and the agent cut the same way. null: inputs whole.")
    level_db: float | None = Field(None, ge=LEVEL_DB_RANGE[0], le=LEVEL_DB_RANGE[1], description="Scale each "
                                   "input so that its loud frames (95th percentile of 20 ms frame energies) sit "
                                   "at this many dBFS (edge_ser.features); stored in the model, so evaluation and "
                                   "the agent scale the same way. null: inputs at their recorded level.")
    normalize: Literal["none", "speaker"] = Field(
        "none", description="speaker: the head reads the encoder features centred on each speaker's mean over "
        "all that speaker's clips (labels unused; trainer/speaker_norm.py), in training and evaluation. Its "
        "scores are speaker-adaptive, not zero-shot; the agent refuses such a model (needs cache: true).")
    views: int = Field(3, ge=1, le=16, description="Cached versions per clip: view 0 clean, others augmented.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentations.")
    regularize: RegularizeSettings = Field(default_factory=RegularizeSettings, description="Random crops and "
                                           "mixup of training batches.")
    cache: bool = Field(True, description="Train from cached frozen-layer outputs (false: on the fly).")
    cache_dir: str = Field("cache", description="Where the frozen-layer cache lives.")
    cache_seed: int = Field(0, description="Seed of the augmented views in the cache.")
    cache_batch_frames: int = Field(4096, ge=64, description="Encoder frames per batch while caching.")
    domain: DomainSettings = Field(default_factory=DomainSettings, description="Domain-adversarial head.")
    balance: BalanceSettings = Field(default_factory=BalanceSettings, description="Loss balancing.")
    prosody: ProsodySettings = Field(default_factory=ProsodySettings, description="A prosody classifier fused "
                                     "with the head.")
    stats: StatsSettings = Field(default_factory=StatsSettings, description="A window-statistics classifier fused "
                                 "with the head.")
    dev_fraction: float = Field(0.1, ge=0, lt=1, description="Share of each corpus's speakers held out for dev.")
    dev_min_speakers: int = Field(4, ge=2, description="Corpora with fewer speakers get no dev speakers.")
    epochs: int = Field(30, ge=1, description="Most epochs (also the length of the cosine schedule).")
    last_epoch: int | None = Field(None, ge=0, description="Stop after this epoch (0-based) of the `epochs`-long "
                                   "schedule, whatever the dev UA: a refit on every speaker (dev_fraction 0) "
                                   "runs to the epoch its dev run chose (trainer.loco --refit-from). Null: run "
                                   "the schedule, or until early stopping.")
    snapshots: int = Field(1, ge=1, le=16, description="The run's model is the merge (trainer.ensemble: frame "
                           "logits = their mean) of this many epochs' models, those with the best dev UA; "
                           "1: the best epoch alone. Needs a frame head and no fine-tuned encoder layers.")
    keep_epochs: bool = Field(False, description="Keep every epoch's model in the run's snapshots/ folder "
                              "(for analysis, benchmarks/snapshot_variants.py), not only the merged ones.")
    patience: int = Field(8, ge=1, description="Stop after this many epochs without a better dev UA.")
    batch_size: int = Field(32, ge=1, description="Clips per batch (per process under DDP).")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of norm and heads.")
    lr_encoder: float = Field(5e-5, gt=0, description="Learning rate of fine-tuned encoder layers.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="Cosine schedule floor as a share of lr.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="Per-step decay of an exponential moving "
                                    "average of the weights used for dev evaluation and checkpoints (null: off).")
    seed: int = Field(0, description="Seed of initialisation, view sampling, batching and dropout.")
    device: str = Field("cpu", description="cpu, cuda or cuda:N.")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU).")
    amp_cpu: bool = Field(False, description="bfloat16 autocast on CPU too: worth it where the CPU multiplies "
                          "bfloat16 in hardware (AMX, AVX512-BF16), mainly to fine-tune encoder layers "
                          "(trainable_layers >= 1; a layer's training step measured 2.26x faster on a Xeon with "
                          "AMX, benchmarks/finetune_step.py); measure before using it elsewhere.")
    threads: int | None = Field(2, ge=1, description="torch CPU threads (null: torch's default).")
    workers: int = Field(4, ge=0, description="Data-loader workers for on-the-fly (no-cache) training.")
    base_dir: str | None = Field(None, description="CTranslate2 whisper-base folder (null: packaged weights).")
    model_id: str | None = Field(None, description="Model id written to model.json (null: derived).")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.trainable_layers > self.encoder_layers:
            raise ValueError(f"trainable_layers {self.trainable_layers} > encoder_layers {self.encoder_layers}")
        if self.last_epoch is not None and self.last_epoch >= self.epochs:
            raise ValueError(f"last_epoch {self.last_epoch} is past the schedule's last epoch (epochs {self.epochs}: "
                             f"0 to {self.epochs - 1})")
        mix = self.mix_layers
        problem = mix_layers_problem(mix, self.encoder_layers)
        if problem:
            raise ValueError(f"{problem} (encoder_layers {self.encoder_layers})")
        if self.layer_join == "concat" and not mix:
            raise ValueError("layer_join 'concat' needs mix_layers (the blocks to read side by side)")
        if mix and (self.trainable_layers or self.normalize == "speaker" or self.regularize.speaker_shift_p
                    or self.snapshots > 1):
            raise ValueError(f"mix_layers {mix} needs trainable_layers 0, normalize 'none', "
                             f"regularize.speaker_shift_p 0 and snapshots 1 (got {self.trainable_layers}, "
                             f"{self.normalize!r}, {self.regularize.speaker_shift_p}, {self.snapshots})")
        if self.snapshots > 1 and (self.head.type != "frame" or self.trainable_layers):
            raise ValueError(f"snapshots {self.snapshots} needs head.type 'frame' and trainable_layers 0 (got "
                             f"{self.head.type!r}, {self.trainable_layers}): only frame heads over one frozen "
                             "encoder merge")
        if self.normalize == "speaker" and (not self.cache or self.trainable_layers or self.regularize.mixup_p):
            raise ValueError(f"normalize 'speaker' needs cache true, trainable_layers 0 and regularize.mixup_p 0 "
                             f"(got {self.cache}, {self.trainable_layers}, {self.regularize.mixup_p}): speaker "
                             "means come from the frozen layers' cached output")
        if self.regularize.speaker_shift_p and (not self.cache or self.trainable_layers):
            raise ValueError(f"regularize.speaker_shift_p {self.regularize.speaker_shift_p} needs cache true and "
                             f"trainable_layers 0 (got {self.cache}, {self.trainable_layers}): speaker means come "
                             "from the frozen layers' cached output")
        return self

    @property
    def frozen_layers(self) -> int:
        return self.encoder_layers - self.trainable_layers

    @property
    def feature_params(self) -> FeatureParams:
        """The model's log-mel parameters (stored in its checkpoint and in the cache keys)."""
        return FeatureParams(trim_db=self.trim_db, level_db=self.level_db)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys from ``key=value`` strings (values parsed as YAML) in a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a recipe (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the recipe ({exc})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid training recipe:\n{exc}") from exc
