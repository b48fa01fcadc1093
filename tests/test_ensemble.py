"""trainer.ensemble: the merged head computes the mean of its members' frame logits, on real speech, through the
PyTorch reference and the CTranslate2 engine; members that cannot be merged are refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from realdata import real_windows

from edge_ser.backends.base import FrameScores
from edge_ser.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edge_ser.linear_probe import without_probes
from edge_ser.window_stats import StatsHead
from trainer.ensemble import average_weights, main, merge_heads

pytest.importorskip("torch")
MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
pytestmark = pytest.mark.skipif(not (MODEL / "model.json").is_file(), reason="no trained model in models/default")


def perturbed(folder: Path, seed: int, model_id: str) -> Path:
    """The shipped model with a different LayerNorm affine and head: another member, as another seed would be."""
    meta, tensors = load_checkpoint(MODEL)
    rng = np.random.default_rng(seed)
    tensors = dict(tensors)
    tensors["norm.weight"] = tensors["norm.weight"] * rng.uniform(0.5, 1.5, tensors["norm.weight"].shape)
    tensors["norm.bias"] = tensors["norm.bias"] + rng.normal(0, 0.2, tensors["norm.bias"].shape)
    for name in ("head.fc1.weight", "head.fc1.bias", "head.fc2.weight", "head.fc2.bias"):
        tensors[name] = tensors[name] + rng.normal(0, 0.05, tensors[name].shape)
    meta.model_id = model_id
    return save_checkpoint(folder, meta, tensors)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [MODEL, perturbed(root / "b", 1, "member-b"), perturbed(root / "c", 2, "member-c")]


def test_merged_head_is_the_mean_of_the_members_on_real_speech(members: list[Path], tmp_path: Path) -> None:
    from edge_ser.backends.ct2_backend import Ct2Engine
    from edge_ser.backends.torch_backend import TorchEngine

    assert main([*map(str, members), "--out", str(tmp_path / "ens"), "--model-id", "ens-3"]) == 0
    meta, tensors = load_checkpoint(tmp_path / "ens")
    shipped = load_checkpoint(MODEL)[0]
    width = 3 * shipped.head["hidden"]
    assert meta.head["hidden"] == width and tensors["head.fc1.weight"].shape == (width, 512)
    assert [m["model_id"] for m in meta.training["ensemble"]] == [shipped.model_id, "member-b", "member-c"]
    mels = real_windows(per_corpus=2)
    each = [TorchEngine(m).infer(mels) for m in members]
    merged = TorchEngine(tmp_path / "ens").infer(mels)
    for i, scores in enumerate(merged):
        mean = np.mean([e[i].logits for e in each], axis=0)
        assert scores.logits.shape == mean.shape
        assert np.abs(scores.logits - mean).max() < 1e-3 * max(1.0, np.abs(mean).max())
    # the members really differ, so the test above is not trivially true
    assert max(np.abs(each[0][i].logits - each[1][i].logits).max() for i in range(len(mels))) > 0.1
    ct2 = Ct2Engine(tmp_path / "ens", compute_type="float32").infer(mels)
    assert max(np.abs(a.clip_probs() - b.clip_probs()).max() for a, b in zip(ct2, merged, strict=True)) < 1e-4


def test_loco_folders_are_merged_fold_by_fold(members: list[Path], tmp_path: Path) -> None:
    runs = []
    for k, member in enumerate(members[:2]):
        run = tmp_path / f"loco-{k}"
        for fold in ("fold-emodb", "fold-tess"):
            shutil.copytree(member, run / fold / "model")
        runs.append(run)
    shutil.copytree(members[0], tmp_path / "loco-0" / "fold-casia" / "model")  # only in one member: left out
    assert main([*map(str, runs), "--out", str(tmp_path / "ens")]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "ens").glob("fold-*/model")) == ["fold-emodb", "fold-tess"]
    meta, _ = load_checkpoint(tmp_path / "ens" / "fold-tess" / "model")
    assert meta.model_id == "ensemble-of-2-fold-tess"
    assert meta.head["hidden"] == 2 * load_checkpoint(MODEL)[0].head["hidden"]
    assert "trainer.ensemble" in (tmp_path / "ens" / "ensemble-command.txt").read_text()


def side_by_side(folder: Path, seed: int) -> Path:
    """A model reading blocks 2 and 3 side by side (``layer_join: concat``), with its own random head."""
    meta, tensors = load_checkpoint(MODEL)
    rng = np.random.default_rng(seed)
    hidden, d_model = tensors["head.fc1.weight"].shape
    tensors = {**tensors, "norm.weight": rng.uniform(0.5, 1.5, d_model), "norm.bias": rng.normal(0, 0.2, d_model),
               "head.fc1.weight": rng.normal(0, 0.05, (hidden, 2 * d_model))}
    meta.model_id, meta.mix_layers, meta.layer_join = f"concat-{seed}", [2, 3], "concat"
    meta.speaker_norm = None  # the shipped reference holds one block's means; this model reads two blocks
    meta.stats = None  # so does the window-statistics classifier
    return save_checkpoint(folder, meta, without_probes(tensors, StatsHead))


def test_heads_reading_blocks_side_by_side_merge_exactly(tmp_path: Path) -> None:
    from trainer.card import render

    members = [side_by_side(tmp_path / f"m{seed}", seed) for seed in (1, 2)]
    assert main([*map(str, members), "--out", str(tmp_path / "ens")]) == 0
    meta, tensors = load_checkpoint(tmp_path / "ens")
    assert (meta.mix_layers, meta.layer_join) == ([2, 3], "concat") and tensors["head.fc1.weight"].shape[1] == 1024
    assert "over the final LayerNorm of blocks [2, 3] each, side by side;" in render(tmp_path / "ens", None, "",
                                                                                     tmp_path)
    mels = real_windows(per_corpus=1)
    each = merged_is_the_mean(members, tmp_path / "ens", mels)
    assert max(np.abs(each[0][i].logits - each[1][i].logits).max() for i in range(len(mels))) > 0.1


def merged_is_the_mean(members: list[Path], merged: Path, mels: list[np.ndarray]) -> list[list[FrameScores]]:
    """Check on the torch engine that ``merged``'s frame logits are the mean of the members'; their scores."""
    from edge_ser.backends.torch_backend import TorchEngine

    each = [TorchEngine(m).infer(mels) for m in members]
    for i, scores in enumerate(TorchEngine(merged).infer(mels)):
        mean = np.mean([e[i].logits for e in each], axis=0)
        assert np.abs(scores.logits - mean).max() < 1e-3 * max(1.0, np.abs(mean).max())
    return each


def on_block(source: Path, folder: Path, block: int, stats: bool = False) -> Path:
    """``source``'s norm and head on encoder block ``block`` (``encoder_layers``), without stream centring (its
    reference belongs to one block) and, unless ``stats``, without its window-statistics classifier (fitted on
    one block's features), as a run reading that block would be."""
    meta, tensors = load_checkpoint(source)
    meta.encoder_layers, meta.model_id, meta.speaker_norm = block, f"block{block}-{folder.name}", None
    if not stats:
        meta.stats, tensors = None, without_probes(tensors, StatsHead)
    return save_checkpoint(folder, meta, tensors)


def test_window_statistics_classifiers_on_different_blocks_are_refused(tmp_path: Path) -> None:
    """Each member's classifier reads its own block's features; a merge reading several blocks has none to give
    it, so it is refused by name."""
    assert load_checkpoint(MODEL)[0].stats is not None
    members = [MODEL, on_block(MODEL, tmp_path / "b2", 2, stats=True)]
    assert main([*map(str, members), "--out", str(tmp_path / "ens")]) == 2
    assert not (tmp_path / "ens").exists()


def test_heads_on_different_blocks_merge_into_one_reading_them_side_by_side(tmp_path: Path) -> None:
    from edge_ser.backends.torch_backend import TorchEngine
    from trainer.card import render

    members = [on_block(MODEL, tmp_path / "b3", 3), on_block(perturbed(tmp_path / "p", 1, "p"), tmp_path / "b2", 2),
               side_by_side(tmp_path / "b23", 2)]
    assert main([*map(str, members), "--out", str(tmp_path / "ens")]) == 0
    meta, tensors = load_checkpoint(tmp_path / "ens")
    assert (meta.encoder_layers, meta.mix_layers, meta.layer_join) == (3, [2, 3], "concat")
    assert [m["blocks"] for m in meta.training["ensemble"]] == [[3], [2], [2, 3]]
    assert "blocks [3]), seed" in render(tmp_path / "ens", None, "", tmp_path)  # the card names each member's
    hidden = load_checkpoint(MODEL)[0].head["hidden"]
    assert not tensors["head.fc1.weight"][:hidden, :512].any()  # the block-3 member reads nothing of block 2
    mels = real_windows(per_corpus=1)
    each = merged_is_the_mean(members, tmp_path / "ens", mels)
    # the same head on block 2 scores otherwise, so each member's block matters to the check above
    same_head = TorchEngine(on_block(MODEL, tmp_path / "same", 2)).infer(mels)
    assert max(np.abs(each[0][i].logits - same_head[i].logits).max() for i in range(len(mels))) > 0.1


def test_members_that_cannot_be_merged_are_named(members: list[Path], tmp_path: Path) -> None:
    a, b = load_checkpoint(members[0]), load_checkpoint(members[1])
    with pytest.raises(CheckpointError, match="at least 2 members"):
        merge_heads([a], "x")
    other = (type(b[0])(**{**b[0].to_dict(), "labels": list(reversed(b[0].labels))}), b[1])
    with pytest.raises(CheckpointError, match=r"member-b.*labels"):
        merge_heads([a, other], "x", ["default", "member-b"])
    tuned = (type(b[0])(**{**b[0].to_dict(), "finetuned_layers": [2]}), b[1])
    with pytest.raises(CheckpointError, match="fine-tuned encoder layers"):
        merge_heads([a, tuned], "x")
    mixing = (type(b[0])(**{**b[0].to_dict(), "mix_layers": [2, 3]}), b[1])
    with pytest.raises(CheckpointError, match=r"learned mix of encoder layers \[2, 3\]"):
        merge_heads([a, mixing], "x")
    lower = (type(b[0])(**{**b[0].to_dict(), "encoder_layers": 2}), b[1])
    centred = (type(a[0])(**{**a[0].to_dict(), "encoder_layers": 2}), a[1])
    with pytest.raises(CheckpointError, match=r"blocks \[2, 3\] .* stream centring"):
        merge_heads([a, centred], "x")
    with pytest.raises(CheckpointError, match=r"lower: reads encoder blocks \[2\], default \[3\]"):
        average_weights([a, lower], "x", ["default", "lower"])
    attentive = (type(b[0])(**{**b[0].to_dict(), "head": {**b[0].head, "type": "attentive"}}), b[1])
    with pytest.raises(CheckpointError, match="head type 'attentive'"):
        merge_heads([a, attentive], "x")
    shutil.copytree(members[0], tmp_path / "loco" / "fold-emodb" / "model")
    assert main([str(tmp_path / "loco"), str(members[1]), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    json.loads((members[1] / "model.json").read_text())  # the members are left as they were


def test_model_card_describes_the_members(members: list[Path], tmp_path: Path) -> None:
    from trainer.card import render

    assert main([*map(str, members[:2]), "--out", str(tmp_path / "ens")]) == 0
    card = render(tmp_path / "ens", None, "python -m trainer.train a\npython -m trainer.ensemble b", tmp_path)
    assert "2 trained heads of" in card and "members: seed" in card
    assert "    python -m trainer.train a\n    python -m trainer.ensemble b\n" in card
