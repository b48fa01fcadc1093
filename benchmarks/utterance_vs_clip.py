"""Where the per-second UA of the utterances loses against whole clips: each clip of the shift streams put
in one group by how the agent's VAD cut it, with the utterance's and the whole clip's 4-class accuracy.

Groups: **one** (one speech segment, lying inside the clip give or take the 0.2 s pre-roll and the 0.25 s
end hangover), **split** (several segments, all inside the clip), **merged** (a segment that reaches more
than that beyond the clip: into the noise gap or the next clip), **none** (no segment). A clip's utterance
label is that of the utterance at the clip's midpoint (else the nearest one), as ``trainer.tracking`` answers
most of its seconds. Reads a ``benchmarks/smoother_sweep.py`` output folder (streams + score cache) and the
LOCO run whose fold models scored it; no encoder runs when the cache holds the agent's default setup.

    python benchmarks/utterance_vs_clip.py runs/sweep-v2-s1 runs/loco-v2-s0-all [--vad max_unvoiced_ms=null]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from edge_ser.vad import VadConfig
from trainer.config import ConfigError, apply_overrides
from trainer.metrics import protocol_probs
from trainer.stream_eval import (
    LazyEngine,
    ScoreCache,
    StreamEvalConfig,
    four_class_label,
    load_streams,
    replay,
    score_streams,
)
from trainer.tracking import FOUR_CLASSES, utterance_label_at

EDGE_SLACK_S = (0.25, 0.3)
"""How far a segment may start before / end after its clip and still lie inside it (pre-roll, hangover)."""
GROUPS = ("one", "split", "merged", "none")


def clip_groups(sweep: Path, loco: Path, corpus: str, config: StreamEvalConfig) -> Counter[str]:
    """Per group: clips, utterance label = clip's whole-clip label, utterance right, whole clip right."""
    streams = load_streams(sweep / "streams" / corpus)
    engine = LazyEngine(loco / f"fold-{corpus}" / "model", config.engine)
    scored = score_streams(streams, engine, config, ScoreCache(sweep / "cache" / corpus), progress=False)
    counts: Counter[str] = Counter()
    for s in scored:
        result = replay(s.track, config.smoothing)
        utterances = [(u.start, u.end, four_class_label(result.labels, u.probs)) for u in result.utterances]
        whole = protocol_probs(s.clip_logits, s.track.labels, "4class").argmax(axis=1)
        for clip, best in zip(s.stream.truth.intervals, whole, strict=True):
            if clip.label not in FOUR_CLASSES:
                continue
            over = [u for u in utterances if u[0] < clip.end and u[1] > clip.start]
            inside = [u for u in over if u[0] >= clip.start - EDGE_SLACK_S[0] and u[1] <= clip.end + EDGE_SLACK_S[1]]
            group = ("none" if not over else "one" if len(over) == 1 and inside
                     else "split" if len(inside) == len(over) else "merged")
            said = utterance_label_at(over, (clip.start + clip.end) / 2)
            counts[group] += 1
            counts[f"{group}:agree"] += said == FOUR_CLASSES[int(best)]
            counts[f"{group}:utterance"] += said == clip.label
            counts[f"{group}:clip"] += FOUR_CLASSES[int(best)] == clip.label
    return counts


def row(name: str, counts: Counter[str]) -> str:
    total = sum(counts[g] for g in GROUPS)
    cells = []
    for g in GROUPS:
        n = counts[g]
        cells.append(f"{n} ({n / total:.0%}): {counts[g + ':agree'] / n:.2f} / {counts[g + ':utterance'] / n:.2f} / "
                     f"{counts[g + ':clip'] / n:.2f}" if n else "0")
    return f"| {name} | {total} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="smoother_sweep output folder (streams/, cache/)")
    parser.add_argument("loco", type=Path, help="LOCO run folder with fold-<corpus>/model/")
    parser.add_argument("--vad", action="append", default=[], metavar="KEY=VALUE",
                        help="a VAD field over the agent's default (value as YAML; e.g. max_unvoiced_ms=null)")
    args = parser.parse_args(argv)
    try:
        config = StreamEvalConfig(vad=VadConfig(**apply_overrides({}, args.vad)))
    except ConfigError as exc:
        parser.error(f"--vad: {exc}")
    corpora = sorted(p.name for p in (args.sweep / "streams").iterdir() if p.is_dir())
    if not corpora:
        parser.error(f"{args.sweep}/streams: no corpus folders (expected a smoother_sweep output)")
    print("each cell: clips (share): utterance = whole-clip decision / utterance right / whole clip right")
    print("| held-out corpus | clips | " + " | ".join(GROUPS) + " |")
    print("|---|---|" + "---|" * len(GROUPS))
    total: Counter[str] = Counter()
    for corpus in corpora:
        counts = clip_groups(args.sweep, args.loco, corpus, config)
        total.update(counts)
        print(row(corpus, counts))
    print(row("all", total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
