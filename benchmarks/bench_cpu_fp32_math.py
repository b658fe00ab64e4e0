"""`training.cpu_fp32_math`: speed and loss curve of bf16 math (bfloat16 inputs, float32 accumulation in oneDNN's
convolutions and matmuls) against full float32, on the demo-size model.

    python benchmarks/bench_cpu_fp32_math.py [--methods lora full] [--steps 300] [--rounds 2] [--threads 1]
        [--work DIR] [--out DIR]

Each (method, mode) trains the same recipe as `bench_peer.py` (demo-size model, 480 phantom images at 64 px,
batch 8, lr 1e-4 constant, cached latents) with the same seed, so both modes draw the same timesteps and noise
and their per-step losses are paired: what differs is precision alone. The modes alternate, `--rounds` times
each. Reported per method: images/s of each mode (median over rounds), the speed-up, and how far bf16's loss
curve lies from float32's: the largest relative gap between their 25-step moving averages, and the gap of the
last 100 steps' mean loss. Tolerance (what bf16 math must meet to be worth turning on): moving averages within
5 % everywhere, last-100 mean within 2 %. Writes OUT/results.json and OUT/loss_curves.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = ("ieee", "bf16")
WINDOW = 25
TAIL = 100
TOLERANCE = {"moving_average": 0.05, "tail_mean": 0.02}


def recipe(work: Path, method: str, steps: int, mode: str, out: Path) -> dict:
    from bench_peer import medsd_recipe

    settings = medsd_recipe(work, 64, 8, method, steps, out)
    settings["training"].update(cache_dir=str(work / "cache"), cpu_fp32_math=mode)
    return settings


def train_once(work: Path, method: str, steps: int, mode: str) -> dict:
    import yaml

    from medsd.config import load_run_config
    from medsd.train.loop import train

    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{method}-{mode}-"))
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe(work, method, steps, mode, out)))
    losses: dict[int, float] = {}
    result = train(load_run_config(path), callbacks=[lambda step, loss: losses.__setitem__(step, loss)])
    assert result.cpu_fp32_math == mode, (result.cpu_fp32_math, mode)
    return {"images_per_second": result.images_per_second, "losses": [losses[s] for s in sorted(losses)]}


def moving_average(values: list[float], window: int) -> np.ndarray:
    return np.convolve(np.asarray(values), np.ones(window) / window, mode="valid")


def compare(ieee: list[float], bf16: list[float]) -> dict:
    a, b = moving_average(ieee, WINDOW), moving_average(bf16, WINDOW)
    tail_a, tail_b = float(np.mean(ieee[-TAIL:])), float(np.mean(bf16[-TAIL:]))
    gaps = {"moving_average": float(np.max(np.abs(b - a) / a)), "tail_mean": abs(tail_b - tail_a) / tail_a}
    return {**{f"max_gap_{k}": v for k, v in gaps.items()}, "tail_mean_ieee": tail_a, "tail_mean_bf16": tail_b,
            "within_tolerance": all(gaps[k] <= TOLERANCE[k] for k in TOLERANCE)}


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, (method, by_mode) in zip(axes[0], curves.items()):
        for mode, losses in by_mode.items():
            ax.plot(np.arange(WINDOW, len(losses) + 1), moving_average(losses, WINDOW), label=mode)
        ax.set_title(f"{method}: loss, {WINDOW}-step moving average")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="runs per (method, mode), in alternation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_cpu_fp32_math"))
    parser.add_argument("--out", type=Path, default=None, help="default: --work")
    args = parser.parse_args()

    import torch
    from bench_peer import prepare

    from medsd.train.precision import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    prepare(args.work, 480, 64)
    results, curves = {"native_bf16": cpu_has_native_bf16(), "threads": args.threads, "steps": args.steps}, {}
    for method in args.methods:
        runs = {mode: [] for mode in MODES}
        for i in range(args.rounds):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                runs[mode].append(train_once(args.work, method, args.steps, mode))
        speed = {mode: statistics.median(r["images_per_second"] for r in runs[mode]) for mode in MODES}
        curves[method] = {mode: runs[mode][0]["losses"] for mode in MODES}
        results[method] = {**{f"images_per_second_{m}": speed[m] for m in MODES},
                           "speedup": speed["bf16"] / speed["ieee"],
                           **compare(runs["ieee"][0]["losses"], runs["bf16"][0]["losses"]),
                           "repeatable_ieee": runs["ieee"][0]["losses"] == runs["ieee"][-1]["losses"]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(curves, out / "loss_curves.png")
    print(f"native bf16: {results['native_bf16']}, {args.threads} thread(s), {args.steps} steps, batch 8\n")
    print("| method | float32 (ieee) | bf16 math | speed-up | max gap, 25-step average | last-100 mean gap "
          "| within tolerance |\n|---|---|---|---|---|---|---|")
    for method in args.methods:
        r = results[method]
        print(f"| {method} | {r['images_per_second_ieee']:.1f} img/s | {r['images_per_second_bf16']:.1f} img/s | "
              f"{r['speedup']:.2f}x | {100 * r['max_gap_moving_average']:.1f} % | {100 * r['max_gap_tail_mean']:.2f} % "
              f"| {'yes' if r['within_tolerance'] else 'no'} |")
    print(f"\n{out / 'results.json'}, {out / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
