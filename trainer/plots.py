"""Training and evaluation plots (matplotlib, Agg backend, PNG): loss curves, domain accuracy, confusions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def safe_name(text: str) -> str:
    """A file-name-safe version of a corpus or run name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix with counts, true labels on the rows."""
    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    size = 1.2 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(history: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """``loss.png`` (train losses, dev loss and dev UA per epoch) and ``domain.png`` (domain-head accuracy
    against chance) into ``folder``."""
    folder = Path(folder)
    epochs = [h["epoch"] for h in history]
    written = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], label="train emotion loss")
    if any(h.get("dev_loss") is not None for h in history):
        left.plot(epochs, [h.get("dev_loss") for h in history], label="dev emotion loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [h.get("dev_ua") for h in history], marker="o", label="dev 4-class UA")
    right.set_xlabel("epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=110)
    plt.close(fig)
    written.append(folder / "loss.png")
    if any(h.get("domain_acc") is not None for h in history):
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(epochs, [h.get("domain_acc") for h in history], marker="o", label="domain head accuracy")
        ax.plot(epochs, [h.get("domain_chance") for h in history], linestyle="--", label="chance (majority)")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "domain.png", dpi=110)
        plt.close(fig)
        written.append(folder / "domain.png")
    return written
