"""Paper-2 baselines on pooled Whisper features, leave-one-corpus-out.

Each clip becomes one vector: mean and standard deviation over frames of the cached encoder layer (the
clean view). Classifiers: the feed-forward network 4096-2048-1024-512 of paper 2, or a logistic-regression
probe; class imbalance handled by nothing, random downsampling, SMOTE or ADASYN (imbalanced-learn), on the
4 or 5 classes of the protocol (training uses only clips of those classes).

    python -m trainer.baselines --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv \\
        --out runs/baseline-ffn-smote --classifier ffn --imbalance smote --protocol 4class
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_ser.window_stats import window_statistics
from trainer.cache import CachedView
from trainer.config import ConfigError, load_config
from trainer.data import ManifestError
from trainer.evaluate import report, write_report
from trainer.labels import LabelError
from trainer.metrics import protocol_labels, truth_index
from trainer.plots import safe_name
from trainer.train import prepare

log = logging.getLogger(__name__)

FFN_WIDTHS = (4096, 2048, 1024, 512)
IMBALANCE = ("none", "downsample", "smote", "adasyn")


def pooled_features(view: CachedView, indices: Sequence[int]) -> np.ndarray:
    """(N, 2 * d_model) float32: per-clip mean and standard deviation over frames."""
    out = np.zeros((len(indices), 2 * view.width), dtype=np.float32)
    for row, i in enumerate(indices):
        out[row] = window_statistics(view.get(i))
    return out


def rebalance(x: np.ndarray, y: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample the training set with imbalanced-learn (``none`` returns it unchanged)."""
    if method == "none":
        return x, y
    from imblearn.over_sampling import ADASYN, SMOTE
    from imblearn.under_sampling import RandomUnderSampler

    samplers = {"downsample": RandomUnderSampler(random_state=seed), "smote": SMOTE(random_state=seed),
                "adasyn": ADASYN(random_state=seed)}
    if method not in samplers:
        raise ValueError(f"imbalance must be one of {IMBALANCE}, got {method!r}")
    x_res, y_res = samplers[method].fit_resample(x, y)
    return np.asarray(x_res, dtype=np.float32), np.asarray(y_res, dtype=np.int64)


class FFN(nn.Module):
    """Paper 2's classifier: 4096-2048-1024-512 ReLU layers with dropout, then the class layer."""

    def __init__(self, n_in: int, n_classes: int, widths: Sequence[int] = FFN_WIDTHS, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(n_in, width), nn.ReLU(), nn.Dropout(dropout)]
            n_in = width
        layers.append(nn.Linear(n_in, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_ffn(x: np.ndarray, y: np.ndarray, n_classes: int, epochs: int, seed: int, lr: float = 1e-4,
              batch_size: int = 128, widths: Sequence[int] = FFN_WIDTHS) -> FFN:
    """Adam(W) with cross-entropy for ``epochs`` passes; returns the model in eval mode."""
    torch.manual_seed(seed)
    model = FFN(x.shape[1], n_classes, widths)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    for epoch in tqdm(range(epochs), desc="ffn", unit="epoch", leave=False):
        model.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for first in range(0, len(x), batch_size):
            batch = order[first : first + batch_size]
            loss = nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        log.debug("ffn epoch %d: loss %.4f", epoch, total / len(x))
    return model.eval()


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, classifier: str,
                imbalance: str, epochs: int, seed: int) -> np.ndarray:
    """Standardise on the training set, rebalance, fit, and return test logits (N, n_classes)."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    x_bal, y_bal = rebalance(x_train.astype(np.float32), y_train, imbalance, seed)
    if classifier == "logreg":
        from sklearn.linear_model import LogisticRegression

        probe = LogisticRegression(max_iter=2000, C=0.1, random_state=seed)
        probe.fit(x_bal, y_bal)
        logits = np.full((len(x_test), n_classes), -1e9, dtype=np.float64)
        logits[:, probe.classes_] = probe.predict_log_proba(x_test)
        return logits
    if classifier == "ffn":
        model = train_ffn(x_bal, y_bal, n_classes, epochs, seed)
        with torch.no_grad():
            return model(torch.from_numpy(x_test.astype(np.float32))).numpy()
    raise ValueError(f"classifier must be 'ffn' or 'logreg', got {classifier!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="recipe YAML (cache settings: layer, views, cache dir)")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--classifier", default="ffn", choices=("ffn", "logreg"))
    parser.add_argument("--imbalance", default="smote", choices=IMBALANCE)
    parser.add_argument("--protocol", default="4class", choices=("4class", "5class"))
    parser.add_argument("--epochs", type=int, default=20, help="FFN epochs")
    parser.add_argument("--folds", default=None, help="comma-separated corpora to hold out (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = shlex.join(["python", "-m", "trainer.baselines", *(sys.argv[1:] if argv is None else argv)])
    try:
        config = load_config(args.config, args.overrides)
        if config.threads:
            torch.set_num_threads(config.threads)
        data = prepare(config, args.manifest)
        assert data.cache is not None
        clips = data.manifest.clips
        labels = protocol_labels(args.protocol)
        scored = [i for i in data.usable if truth_index(clips[i].emotion, args.protocol) is not None]
        features = pooled_features(data.cache.views[0], scored)
        y = np.array([truth_index(clips[i].emotion, args.protocol) for i in scored], dtype=np.int64)
        corpus = np.array([clips[i].corpus for i in scored])
        folds = sorted(set(corpus)) if args.folds is None else args.folds.split(",")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        for held in tqdm(folds, desc=f"{args.classifier}+{args.imbalance}", unit="fold"):
            test = corpus == held
            logits = fit_predict(features[~test], y[~test], features[test], len(labels), args.classifier,
                                 args.imbalance, args.epochs, config.seed)
            rep = report(logits, [clips[i] for i, t in zip(scored, test, strict=True) if t], labels,
                         args.protocol, False, f"{args.classifier}+{args.imbalance}", str(data.manifest.path))
            write_report(rep, out / f"fold-{safe_name(held)}.json")
            entry = rep["corpora"][held]
            rows.append({"corpus": held, **{k: entry[k] for k in ("n", "ua", "macro_f1", "wa", "ece")}})
            log.info("held out %s: UA %.4f", held, entry["ua"])
    except (ConfigError, LabelError, ManifestError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("ua", "macro_f1", "wa", "ece")}
    (out / "summary.json").write_text(json.dumps({"command": command, "folds": rows, "mean": mean}, indent=1) + "\n")
    lines = [f"`{command}`", "", "| held-out corpus | n | UA | macro-F1 | WA | ECE |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['corpus']} | {r['n']} | {r['ua']:.3f} | {r['macro_f1']:.3f} | {r['wa']:.3f} | {r['ece']:.3f} |"
              for r in rows]
    lines.append(f"| **mean** | | **{mean['ua']:.3f}** | {mean['macro_f1']:.3f} | {mean['wa']:.3f} | "
                 f"{mean['ece']:.3f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
