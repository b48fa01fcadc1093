"""What a run folder keeps: checkpoint tensors, per-epoch metrics, and the resumable training state
(trainable parameters, AdamW moments and the weight average as safetensors; the rest as JSON; no pickle)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from edge_ser.model import EmotionModel
from trainer.modules import TrainModule, WeightAverage


def checkpoint_tensors(model: EmotionModel, finetuned: Sequence[int]) -> dict[str, np.ndarray]:
    """The trained tensors a checkpoint stores: ``norm.*``, ``head.*``, ``layer_mix``, ``encoder.layers.<i>.*``."""
    keep = ("norm.", "head.", "layer_mix", *(f"encoder.layers.{i}." for i in finetuned))
    return {name: value.detach().float().cpu().numpy() for name, value in model.state_dict().items()
            if name.startswith(keep)}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {f"optim.{idx}.{key}": value.detach().cpu().contiguous()
               for idx, entry in state["state"].items() for key, value in entry.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                          info: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_state(folder: Path, module: TrainModule, optimizer: torch.optim.Optimizer, info: dict[str, Any],
               average: WeightAverage | None = None) -> None:
    """Resumable state: trainable parameters, optimizer and EMA tensors (safetensors) and the rest as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"module.{n}": p.detach().cpu().contiguous() for n, p in module.named_parameters()
               if p.requires_grad}
    if average is not None:
        tensors.update({f"ema.{n}": v.detach().cpu().contiguous() for n, v in average.shadow.items()})
        info = {**info, "ema_steps": average.steps}
    optim_tensors, optim_info = _optimizer_state(optimizer)
    tensors.update(optim_tensors)
    save_file(tensors, str(folder / "state.safetensors.tmp"))
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    (folder / "state.json").write_text(json.dumps({**info, **optim_info}, indent=1) + "\n")


def load_state(folder: Path, module: TrainModule, optimizer: torch.optim.Optimizer,
               average: WeightAverage | None = None) -> dict[str, Any]:
    info = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if name.startswith("module."):
                params[name[len("module.") :]].copy_(value)
            elif name.startswith("ema.") and average is not None:
                average.shadow[name[len("ema.") :]].copy_(value)
    if average is not None:
        if not any(name.startswith("ema.") for name in tensors):  # the run before had no average: start here
            average.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if n in average.shadow}
        average.steps = int(info.get("ema_steps", 0))
    _load_optimizer_state(optimizer, tensors, info)
    return info


def write_metrics(out: Path, history: list[dict[str, Any]], best: dict[str, Any]) -> None:
    (out / "metrics.json").write_text(json.dumps({"best": best, "history": history}, indent=1) + "\n")
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
