"""Where a training step's time goes: torch.profiler over medsd's own step, grouped by kind of work.

    python benchmarks/profile_step.py [--method lora|full] [--steps 10] [--warmup 3] [--batch 8] [--threads 1]
        [--work DIR] [--set KEY=VALUE ...] [--table]

Builds the demo-size tiny model and 64 px synthetic images (as `bench_train.py --data synthetic`), prepares a
run exactly as `medsd train` does (latent and prompt caches on), then profiles `--steps` steps of the loop's
work: the batch, `diffusion_loss` (forward), backward, clipping and the optimizer. Prints CPU milliseconds per
step by kind: attention, convolution, matmul, normalisation, other tensor operations (element-wise, copies,
reshapes), the Python and autograd bookkeeping between operations, data and optimizer. With --table, also
torch's own per-operation table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

KINDS = {  # first match wins: substrings of aten operation names
    "attention": ("scaled_dot_product", "softmax", "bmm", "baddbmm"),
    "convolution": ("conv", "thnn"),
    "matmul (linear layers)": ("aten::mm", "addmm", "aten::linear", "matmul"),
    "normalisation": ("group_norm", "layer_norm"),
}


def kind_of(name: str) -> str:
    return next((kind for kind, keys in KINDS.items() if any(k in name for k in keys)), "other tensor operations")


def profile(args: argparse.Namespace) -> tuple[dict[str, float], float, object]:
    """CPU ms per step by kind, the measured wall ms per step without the profiler, and the profiler."""
    import torch
    from bench_train import Synthetic, step_config
    from torch.profiler import ProfilerActivity, record_function

    from medsd.train.loop import _prepare, _resume
    from medsd.train.step import diffusion_loss

    cfg = step_config(Path(args.work), f"profile-{args.method}", args.method, args.batch, args.set)
    run, _ = _prepare(cfg, Synthetic(args.batch * 16, 64))
    _resume(run, None)
    tc, method, accelerator = cfg.training, run.method, run.accelerator
    batches = iter(())

    def step() -> None:
        nonlocal batches
        with record_function("data"):
            batch = next(batches, None)
            if batch is None:
                batches = iter(run.loader)
                batch = next(batches)
        with record_function("forward"):
            loss = diffusion_loss(method, batch, method.components.noise_scheduler, tc, run.encode_text, accelerator)
        with record_function("backward"):
            accelerator.backward(loss)
        with record_function("optimizer"):
            accelerator.clip_grad_norm_(method.trainable_parameters(), tc.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - started) / args.steps * 1e3
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    return by_kind(prof, args.steps), wall, prof


BOOKKEEPING = "Python and autograd between operations"


def by_kind(prof: object, steps: int) -> dict[str, float]:
    """Self CPU ms per step: operations of the forward and backward by kind; data and optimizer as wholes."""
    per_step: dict[str, float] = {}
    for event in prof.events():
        top = event
        while top.cpu_parent is not None:
            top = top.cpu_parent
        if top.name in ("data", "optimizer"):
            kind = top.name
        elif top.name in ("forward", "backward"):
            # The ranges' own time and the autograd engine's nodes are the framework's, not a kernel's.
            kind = kind_of(event.name) if event.name.startswith("aten::") else BOOKKEEPING
        else:
            continue
        per_step[kind] = per_step.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="lora", choices=["lora", "full"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0 = torch's default)")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--table", action="store_true", help="also print torch's per-operation table")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work = args.work or tempfile.mkdtemp(prefix="profile_step_")
    if not (Path(args.work) / "model" / "model_index.json").is_file():
        from medsd.models import build_tiny_model

        build_tiny_model(Path(args.work) / "model", size="demo")
    per_step, wall, prof = profile(args)
    total = sum(per_step.values())
    print(f"\n{args.method}, demo-size model, 64 px, batch {args.batch}, {args.threads or 'default'} thread(s), "
          f"cached latents; {wall:.0f} ms per step unprofiled, {total:.0f} ms profiled "
          f"(overrides: {' '.join(args.set) or 'none'})\n")
    print("| where | ms per step | share |")
    print("|---|---|---|")
    for kind, ms in sorted(per_step.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:.1f} | {ms / total:.0%} |")
    if args.table:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    main()
