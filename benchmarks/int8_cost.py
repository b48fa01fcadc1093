"""Accuracy cost of each CTranslate2 compute type, held out: every LOCO fold model scores the corpus it never saw.

    python benchmarks/int8_cost.py --loco runs/loco-v3 --manifest ../shared/data/manifest.csv \\
        [--compute-types float32,int8] [--out runs/int8-cost.json]

For each ``fold-<corpus>/model`` of a LOCO run (``trainer.loco``; also a merged ensemble, ``trainer.ensemble``)
the manifest is cut to that corpus's 4-class clips and scored by ``edge-ser-eval``'s own code path
(``trainer.evaluate.evaluate``, engine ``ctranslate2``, clips centre-cropped to 8 s as in training) once per
compute type. Prints a markdown table (4-class UA per fold and compute type, the PyTorch LOCO figure from the
fold's ``test.json`` beside them when there is one, and the difference of the last compute type to the first)
and writes the JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from trainer.evaluate import evaluate
from trainer.metrics import protocol_labels

FOUR = protocol_labels("4class")


def corpus_manifest(manifest: Path, corpus: str, folder: Path) -> Path:
    """The manifest's 4-class clips of one corpus, with absolute paths, as a new CSV in ``folder``."""
    root = manifest.resolve().parent
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [r for r in reader if r["corpus"] == corpus and r["emotion"] in FOUR]
        fields = reader.fieldnames or []
    if not rows:
        raise SystemExit(f"{manifest}: no 4-class clips of corpus {corpus!r}")
    out = folder / f"{corpus}-4class.csv"
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**r, "path": str(root / r["path"])} for r in rows)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loco", required=True, help="LOCO run folder with fold-<corpus>/model")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--compute-types", default="float32,int8")
    parser.add_argument("--max-clip-s", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=0, help="CTranslate2 intra threads (0: its default)")
    parser.add_argument("--out", default=None, help="JSON path (default: <loco>/compute-types.json)")
    args = parser.parse_args(argv)
    loco, manifest = Path(args.loco), Path(args.manifest)
    types = [t.strip() for t in args.compute_types.split(",") if t.strip()]
    folds = sorted(p.parent for p in loco.glob("fold-*/model/model.json"))
    if not folds:
        raise SystemExit(f"{loco}: no fold-*/model checkpoints")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=len(folds) * len(types), unit="run") as bar:
        for fold in folds:
            corpus = fold.parent.name.removeprefix("fold-")
            cut = corpus_manifest(manifest, corpus, Path(tmp))
            row: dict[str, Any] = {"corpus": corpus}
            test = fold.parent / "test.json"
            if test.is_file():
                row["torch"] = json.loads(test.read_text())["corpora"][corpus]["ua"]
            for compute_type in types:
                bar.set_description(f"{corpus} {compute_type}")
                result = evaluate(fold, cut, "4class", max_clip_s=args.max_clip_s, engine="ctranslate2",
                                  compute_type=compute_type, threads=args.threads)
                row["n"] = result["corpora"][corpus]["n"]
                row[compute_type] = result["corpora"][corpus]["ua"]
                bar.update()
            rows.append(row)
    columns = (["torch"] if all("torch" in r for r in rows) else []) + types
    mean = {c: float(np.mean([r[c] for r in rows])) for c in columns}
    first, last = types[0], types[-1]
    lines = [f"| held-out corpus | n (4-class) | {' | '.join('UA ' + c for c in columns)} | {last} - {first} (pt) |",
             "|---|---:|" + "---:|" * (len(columns) + 1)]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['n']} | " + " | ".join(f"{r[c]:.4f}" for c in columns)
                     + f" | {100 * (r[last] - r[first]):+.2f} |")
    lines.append(f"| **mean ({len(rows)} folds)** | | " + " | ".join(f"{mean[c]:.4f}" for c in columns)
                 + f" | {100 * (mean[last] - mean[first]):+.2f} |")
    print("\n".join(lines))
    out = Path(args.out) if args.out else loco / "compute-types.json"
    out.write_text(json.dumps({"loco": str(loco), "manifest": str(manifest), "folds": rows, "mean": mean},
                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
