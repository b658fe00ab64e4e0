"""What a recipe setting does to the training step: variants of one run, stepped in alternation in one process.

    python benchmarks/bench_settings.py [--method lora|full] [--rounds 20] [--batch 8] [--threads 1]
        [--variant KEY=VALUE[,KEY=VALUE...] ...] [--work DIR] [--warm-torch-cache]

Each variant is the demo-size tiny model prepared exactly as `medsd train` prepares it (cached latents and
prompts, 64 px synthetic images as in `bench_train.py --data synthetic`) with the variant's `--set` overrides
on top of the defaults. After each variant's first step (which pays any torch.compile; measured in CPU seconds
including the compiler's own processes), the variants take turns, one step each, `--rounds` times, the order
reversed every round, so load from other processes hits all alike. Reported: median and fastest CPU time per
step (the step: batch, `diffusion_loss`, backward, clipping, optimizer) and the median relative to the first
variant. CPU time rather than wall time: on a shared machine it is disturbed far less by other processes.
Default variants: the defaults, then one change each (peft's unmerged LoRA forward, channels_last, bf16
mixed precision, compile of the transformer blocks, compile of the whole U-Net).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_VARIANTS = {
    "lora": ["", "method.merged_forward_max_features=0", "training.channels_last=true",
             "training.mixed_precision=bf16", "training.compile=blocks", "training.compile=true"],
    "full": ["", "training.channels_last=true", "training.mixed_precision=bf16", "training.compile=blocks",
             "training.compile=true"],
}


def cpu_seconds() -> float:
    """User + system seconds of this process and of its finished children (the compiler's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Variant:
    """One prepared run and the loop's work for one step of it."""

    def __init__(self, args: argparse.Namespace, overrides: list[str], index: int):
        from bench_train import Synthetic, step_config

        from medsd.train.loop import _prepare, _resume

        self.name = ", ".join(overrides) or "defaults"
        self.cfg = step_config(Path(args.work), f"variant-{index}", args.method, args.batch, overrides)
        self.run, _ = _prepare(self.cfg, Synthetic(args.batch * 16, 64))
        _resume(self.run, None)
        self.batches = iter(())

    def step(self) -> float:
        """One step; returns its CPU seconds (this process only: a compiled step starts no compiler)."""
        from medsd.train.step import diffusion_loss

        run, tc, method = self.run, self.cfg.training, self.run.method
        started = time.process_time()
        batch = next(self.batches, None)
        if batch is None:
            self.batches = iter(run.loader)
            batch = next(self.batches)
        with run.accelerator.autocast():
            loss = diffusion_loss(method, batch, method.components.noise_scheduler, tc, run.encode_text,
                                  run.accelerator)
        run.accelerator.backward(loss)
        run.accelerator.clip_grad_norm_(run.trainable, tc.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="lora", choices=sorted(DEFAULT_VARIANTS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0 = torch's default)")
    parser.add_argument("--variant", action="append", default=None, metavar="KEY=VALUE[,KEY=VALUE...]",
                        help="a variant's overrides ('' = the defaults); repeat for each variant")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--warm-torch-cache", action="store_true",
                        help="let torch.compile reuse its on-disk cache (default: compile from scratch)")
    args = parser.parse_args()
    args.work = args.work or tempfile.mkdtemp(prefix="bench_settings_")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.warm_torch_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(args.work) / "inductor")
    # Compile in this process (its compiler runs are then waited-for children, counted in the CPU seconds).
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (Path(args.work) / "model" / "model_index.json").is_file():
        from medsd.models import build_tiny_model

        build_tiny_model(Path(args.work) / "model", size="demo")
    specs = args.variant if args.variant is not None else DEFAULT_VARIANTS[args.method]
    variants, first = [], []
    for i, spec in enumerate(specs):
        variant = Variant(args, [s for s in spec.split(",") if s], i)
        started = cpu_seconds()
        variant.step()
        first.append(cpu_seconds() - started)
        variants.append(variant)
    times: list[list[float]] = [[] for _ in variants]
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = range(len(variants)) if r % 2 == 0 else reversed(range(len(variants)))
        for i in order:
            times[i].append(variants[i].step())
    load.append(os.getloadavg()[0])
    medians = [statistics.median(t) for t in times]
    print(f"\n{args.method}, demo-size model, 64 px, batch {args.batch}, {args.threads or 'default'} thread(s), "
          f"cached latents; {args.rounds} alternating rounds; load average {min(load):.1f}-{max(load):.1f} "
          f"on {os.cpu_count()} CPUs; torch.compile cache {'warm' if args.warm_torch_cache else 'empty'}\n")
    print("| variant | CPU ms per step (median) | fastest | vs first | first step (CPU s) |")
    print("|---|---|---|---|---|")
    for variant, median, t, f in zip(variants, medians, times, first, strict=True):
        print(f"| {variant.name} | {median * 1e3:.0f} | {min(t) * 1e3:.0f} | {median / medians[0]:.2f}x | {f:.1f} |")


if __name__ == "__main__":
    main()
