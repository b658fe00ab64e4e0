"""The worker of benchmarks/gpu_suite.py: runs the suite's cases in order, one result line each.

    python benchmarks/gpu_suite_worker.py OUT     (started by gpu_suite.py, which wrote OUT/plan.json)

Each case has a watchdog: past its limit it writes `timeout` for the case and ends this process, and the suite
starts a fresh worker for the cases left. Training runs the ordinary `medsd.train.loop.train` on in-memory
images and stops it right after the last timed step (no final checkpoint or artefacts, which are not timed).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gpu_suite import Plan, append, limit_of, read_results, write_report

PROMPT = "A chest X-ray with Cardiomegaly and Pleural Effusion"
# Dense bf16/fp16 tensor-core peaks (FLOP/s) by GPU name, for MFU.
PEAKS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12,
         "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
METHODS: dict[str, dict[str, Any]] = {
    "lora": {"name": "lora", "rank": 4, "alpha": 4},
    "full": {"name": "full"},
    "textual_inversion": {"name": "textual_inversion", "tokens": ["<cardiomegaly>"], "num_vectors": 4,
                          "initializer": "heart"},
}
BACKWARD_FACTOR = {"full": 3, "lora": 2, "textual_inversion": 2}


def worker(out: Path) -> int:
    """Run the cases without a result, in order; a case past its limit writes `timeout` and ends the process."""
    spec = json.loads((out / "plan.json").read_text())
    plan = Plan(**{**spec["plan"], "generation_batches": tuple(spec["plan"]["generation_batches"])})
    log = out / "results.jsonl"
    # Imports before the first watchdog starts: a case's limit is for its own work, not for starting Python.
    import diffusers  # noqa: F401
    import torch

    import medsd.generate.sampling  # noqa: F401
    import medsd.train.loop  # noqa: F401

    if not torch.cuda.is_available():
        # One thread on the CPU (smoke): with other processes on the cores, OpenMP threads spin-waiting on each
        # other turned 50 ms tiny-model steps into 5-45 s ones.
        torch.set_num_threads(1)

    done = {r["name"]: r for r in read_results(log)}
    for case in [c for c in spec["cases"] if c["name"] not in done]:
        left = spec["deadline"] - time.time()
        build = next((r for r in read_results(log) if r["name"] == "build"), None)
        if left < 10 or (case["kind"] != "build" and build is not None and build["status"] != "ok"):
            why = "suite deadline reached" if left < 10 else f"no model: the build case ended with {build['status']}"
            append(log, {"name": case["name"], "status": "skipped", "reason": why})
            continue
        limit = min(limit_of(case, plan), left)
        watchdog = threading.Timer(limit, _timed_out, args=(log, case["name"], limit, out))
        watchdog.daemon = True
        watchdog.start()
        started = time.perf_counter()
        try:
            record = RUNNERS[case["kind"]](case, plan, out, spec)
            record.update(name=case["name"], status="ok")
        except Exception as err:  # one failing case must not hide the others' numbers
            record = {"name": case["name"], "status": "error", "reason": f"{type(err).__name__}: {str(err)[:300]}"}
        watchdog.cancel()
        record["wall_s"] = round(time.perf_counter() - started, 2)
        append(log, record)
        print(json.dumps(record), flush=True)
        write_report(out)
        _free_memory()
    return 0


def _timed_out(log: Path, name: str, limit: float, out: Path) -> None:
    append(log, {"name": name, "status": "timeout", "reason": f"over its {limit:.0f} s limit"})
    write_report(out)
    os._exit(124)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_dir(out: Path) -> Path:
    return out / "model"


def unet_flops_measured(out: Path) -> float | None:
    """The U-Net forward FLOPs per image that the build case counted (None if it did not run)."""
    build = next((r for r in read_results(out / "results.jsonl") if r["name"] == "build"), {})
    gflop = build.get("unet_forward_gflop_per_image")
    return gflop * 1e9 if gflop else None


def run_build(case: dict[str, Any], plan: Plan, out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The random-weight model: SD 1.5 (built on the GPU, where random init takes seconds), or the tiny test model."""
    import torch

    from medsd.architectures import build_random_model
    from medsd.models import build_tiny_model

    folder = model_dir(out)
    if not (folder / "model_index.json").is_file():
        if plan.smoke:
            build_tiny_model(folder, size="test")
        else:
            build_random_model(folder, arch="sd15", device="cuda" if torch.cuda.is_available() else "cpu")
    return {"model": str(folder), "unet_forward_gflop_per_image": round(unet_forward_flops(folder, plan) / 1e9, 2)}


def unet_forward_flops(folder: Path, plan: Plan) -> float:
    """FLOPs of one U-Net forward (batch 1, 77 prompt tokens) at the plan's resolution, counted on meta tensors."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = UNet2DConditionModel.load_config(folder / "unet")
    vae_levels = len(AutoencoderKL.load_config(folder / "vae")["block_out_channels"])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        side = plan.resolution // 2 ** (vae_levels - 1)
        sample = torch.zeros(1, unet.config.in_channels, side, side)
        context = torch.zeros(1, 77, unet.config.cross_attention_dim)
        timestep = torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            unet(sample, timestep, context)
    return float(counter.get_total_flops())


class _Measured(Exception):
    """Raised by the step timer after the last timed step: stops the run before its final checkpoint."""


def run_train(case: dict[str, Any], plan: Plan, out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from medsd.config import RunConfig
    from medsd.train.loop import train

    steps = plan.warmup_steps + plan.timed_steps
    work = out / "work"
    cfg = RunConfig.model_validate({
        "output_dir": str(work / case["name"].replace("/", "_")), "seed": 0,
        "model": {"pretrained": str(model_dir(out)), "device": "auto"},
        "data": {"resolution": plan.resolution},
        "training": {
            "max_steps": steps, "batch_size": plan.batch, "learning_rate": 1e-5, "lr_warmup_steps": 0,
            "mixed_precision": case["precision"], "cache_latents": case["cache"],
            "cache_text_embeddings": case["cache"], "compile": case["compile"], "attention": "sdpa",
            "checkpointing_steps": 10**6, "cache_dir": str(work / "cache"),
        },
        "method": METHODS[case["method"]],
        "validation": {"prompts": []},
    })
    token = " <cardiomegaly>" if case["method"] == "textual_inversion" else ""
    dataset = Synthetic(plan.batch * steps, plan.resolution, PROMPT + token)
    stamps: list[float] = []

    def stamp(step: int, loss: float) -> None:
        stamps.append(time.perf_counter())
        if step >= steps:
            raise _Measured

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        train(cfg, dataset, callbacks=[stamp])
    except _Measured:
        pass
    timed = stamps[plan.warmup_steps - 1:]
    durations = sorted(b - a for a, b in zip(timed, timed[1:], strict=False))
    images_per_s = plan.batch * plan.timed_steps / (timed[-1] - timed[0])
    record = {"images_per_s": round(images_per_s, 2),
              "median_step_ms": round(1000 * durations[len(durations) // 2], 1),
              "first_step_s": round(stamps[0] - started, 1), "peak_memory_gb": _peak_gb()}
    flops = unet_flops_measured(out)
    peak = peak_flops(spec.get("peak_tflops"))
    if flops and peak:
        record["mfu"] = round(images_per_s * flops * BACKWARD_FACTOR[case["method"]] / peak, 4)
    return record


def _peak_gb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # process peak RSS on the CPU


def peak_flops(peak_tflops: float | None) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s (from --peak-tflops or its name); None on the CPU or when unknown."""
    import torch

    if peak_tflops:
        return peak_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAKS.items() if key in name), None)


def run_generate(case: dict[str, Any], plan: Plan, out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per image at `generation_steps`, each batch size: the fastest of a few repetitions."""
    import torch

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    generate = _medsd_generator(out, device, dtype) if case["runner"] == "medsd" else \
        _diffusers_generator(out, device, dtype)
    side = plan.resolution
    generate(1, 2, side)  # warm-up: kernels, cuDNN autotuning
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    record: dict[str, Any] = {"steps": plan.generation_steps}
    for batch in plan.generation_batches:
        times = []
        for _ in range(3 if batch == 1 else 2):
            start = time.perf_counter()
            generate(batch, plan.generation_steps, side)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        record[f"s_per_image_batch_{batch}"] = round(min(times) / batch, 4)
    record["peak_memory_gb"] = _peak_gb()
    return record


def _medsd_generator(out: Path, device: str, dtype: Any):
    from medsd.generate.loading import load_model
    from medsd.generate.sampling import Condition, sample

    model = load_model(model_dir(out), device=device, dtype=dtype)

    def generate(batch: int, steps: int, side: int) -> Any:
        return sample(model, [Condition.from_prompt(PROMPT)] * batch, list(range(batch)), steps=steps,
                      guidance=7.5, scheduler="pndm", height=side, width=side)
    return generate


def _diffusers_generator(out: Path, device: str, dtype: Any):
    import torch
    from diffusers import StableDiffusionPipeline

    from medsd.models import dtype_keyword

    folder = str(model_dir(out))
    pipe = StableDiffusionPipeline.from_pretrained(folder, **dtype_keyword(dtype), safety_checker=None).to(device)
    pipe.set_progress_bar_config(disable=True)

    def generate(batch: int, steps: int, side: int) -> Any:
        generators = [torch.Generator(device).manual_seed(i) for i in range(batch)]
        return pipe([PROMPT] * batch, num_inference_steps=steps, guidance_scale=7.5, height=side, width=side,
                    generator=generators, output_type="np").images
    return generate


RUNNERS = {"build": run_build, "train": run_train, "generate": run_generate}


class Synthetic:
    """In-memory discs on a dark background with one prompt: training data without files or decoding."""

    def __init__(self, n: int, size: int, prompt: str):
        import torch

        yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
        disc = (((yy - 0.55) ** 2 + (xx - 0.5) ** 2) < 0.05).float()
        self.pixels = (disc * 1.4 - 0.8).expand(3, -1, -1).contiguous()
        self.n, self.prompt = n, prompt

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        return {"pixel_values": self.pixels, "prompt": self.prompt, "labels": torch.tensor([1.0]),
                "path": f"synthetic/{i}.png", "index": i, "patient_id": str(i)}

    def fingerprint(self) -> str:
        return f"synthetic-{self.n}-{tuple(self.pixels.shape)}-{self.prompt}"


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
