"""What fine-tuning an encoder layer costs per training step on this CPU, float32 against bfloat16 autocast.

Times forward + backward + AdamW step of whisper-base's layer ``--layer`` (the one ``trainable_layers: 1``
trains in the 3-layer recipe) on a batch of ``--batch`` clips of ``--seconds`` s (50 encoder frames per
second; random states: the cost does not depend on the values), alternating the two settings round by round
so drift of a shared machine hits both alike. Prints each setting's median ms per step and the median over
rounds of float32 time / bfloat16 time. bfloat16 pays where the CPU multiplies it in hardware (AMX,
AVX512-BF16); elsewhere expect it to lose.

    python benchmarks/finetune_step.py --batch 32 --seconds 3 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from edge_ser.model import load_whisper_encoder
from edge_ser.whisper_base import whisper_base_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setting and round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    encoder, _ = load_whisper_encoder(whisper_base_dir() / "model.bin", args.layer + 1)
    layer = encoder.layers[args.layer]
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-5)
    states = torch.randn(args.batch, round(args.seconds * 50), layer.fc1.in_features)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = layer(states).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times: dict[bool, list[float]] = {False: [], True: []}
    ratios = []
    for bf16 in (False, True):  # warm-up: kernels, allocator
        step(bf16)
    for _ in range(args.rounds):
        medians = {}
        for bf16 in (False, True):
            samples = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step(bf16)
                samples.append(time.perf_counter() - start)
            times[bf16] += samples
            medians[bf16] = statistics.median(samples)
        ratios.append(medians[False] / medians[True])
    print(f"layer {args.layer}, batch {args.batch} x {args.seconds:g} s, {args.threads} threads, "
          f"torch {torch.__version__}, {args.rounds} rounds x {args.steps} steps")
    for bf16, name in ((False, "float32"), (True, "bfloat16 autocast")):
        print(f"{name}: median {statistics.median(times[bf16]) * 1000:.0f} ms / step")
    print(f"float32 / bfloat16: {statistics.median(ratios):.2f}x (median over rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
