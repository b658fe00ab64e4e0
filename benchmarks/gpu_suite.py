"""One-shot GPU benchmark: SD 1.5-architecture training and generation at 512 px, in at most 8 minutes.

    python benchmarks/gpu_suite.py [--out runs/gpu_suite] [--budget-min 8] [--peak-tflops T] [--cases PATTERN]
    python benchmarks/gpu_suite.py --smoke --out DIR   # tiny model on the CPU: the suite's own test (~1 min)

Training, on a random-weight model with the exact SD 1.5 architecture (`medsd model random`; speed does not
depend on the weights), 512 px, batch 8, PyTorch SDPA attention: LoRA, full U-Net and textual inversion, with
the latent cache on and off, in bf16 and fp16, with torch.compile off and on. Each case reports images/s in
steady state (after warm-up steps), the median step, peak GPU memory (torch.cuda.max_memory_allocated), model
FLOPs utilisation and the time to its first step (model load, cache, compile). Generation: seconds per image
at 50 PNDM steps, guidance 7.5, batch 1 and 8, fp16, through medsd's sampler and through plain diffusers
`StableDiffusionPipeline` on the same folder.

Budget: cases run in priority order in a worker process (`--worker`); each has a time limit and the suite a
deadline (`--budget-min`, default 8 minutes including the model build). A case past its limit is recorded as
`timeout` and its worker is killed; a fresh worker goes on with the next case; a case that no longer fits is
`skipped`. Results are written after every case (`results.jsonl`, `results.json`, `results.md`) and the tables
are printed at the end, whatever happened.

MFU: the U-Net's forward FLOPs per image at the run's resolution, counted with torch.utils.flop_counter, times
3 when its weights train (full) or 2 when only activation gradients flow through it (LoRA, textual inversion),
times images/s, over the GPU's dense bf16/fp16 tensor peak (H100/H200 SXM 989 TFLOP/s; `--peak-tflops` for
others). The final checkpoint and artefacts are not written: the run stops right after its last timed step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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


@dataclass
class Plan:
    """Sizes, step counts and time limits of one suite run."""

    smoke: bool = False
    resolution: int = 512
    batch: int = 8
    warmup_steps: int = 3
    timed_steps: int = 10
    generation_steps: int = 50
    generation_batches: tuple[int, ...] = (1, 8)
    budget_s: float = 480.0
    build_limit_s: float = 120.0
    train_limit_s: float = 75.0
    compile_limit_s: float = 200.0
    generate_limit_s: float = 120.0

    @classmethod
    def smoke_plan(cls) -> Plan:
        """The test-size model on the CPU: every code path except fp16 and compile, in about a minute."""
        return cls(smoke=True, resolution=32, batch=2, warmup_steps=1, timed_steps=2, generation_steps=2,
                   generation_batches=(1, 2), budget_s=900.0, build_limit_s=120.0, train_limit_s=120.0,
                   generate_limit_s=120.0)


def train_case(method: str, precision: str = "bf16", cache: bool = True, compile: bool = False) -> dict[str, Any]:
    name = f"train/{method}/{precision}/{'cache' if cache else 'no-cache'}/{'compile' if compile else 'eager'}"
    return {"name": name, "kind": "train", "method": method, "precision": precision, "cache": cache,
            "compile": compile}


def cases(plan: Plan) -> list[dict[str, Any]]:
    """Every case, most important first (what a short budget keeps)."""
    return [
        {"name": "build", "kind": "build"},
        train_case("lora"), train_case("full"), train_case("textual_inversion"),
        train_case("lora", cache=False), train_case("full", cache=False),
        {"name": "generate/medsd", "kind": "generate", "runner": "medsd"},
        {"name": "generate/diffusers", "kind": "generate", "runner": "diffusers"},
        train_case("lora", "fp16"), train_case("full", "fp16"), train_case("textual_inversion", "fp16"),
        train_case("textual_inversion", cache=False),
        train_case("lora", compile=True), train_case("full", compile=True),
    ]


def limit_of(case: dict[str, Any], plan: Plan) -> float:
    if case["kind"] == "build":
        return plan.build_limit_s
    if case["kind"] == "generate":
        return plan.generate_limit_s
    return plan.compile_limit_s if case["compile"] else plan.train_limit_s


def skip_reason(case: dict[str, Any], plan: Plan) -> str | None:
    """Why a case cannot run on this plan's device (None: it runs)."""
    if plan.smoke and case.get("precision") == "fp16":
        return "fp16 needs a CUDA GPU (medsd refuses it on the CPU)"
    if plan.smoke and case.get("compile"):
        return "torch.compile is measured on GPUs only"
    return None


# --------------------------------------------------------------------------------------------- the suite
def run_suite(plan: Plan, out: Path, only: str | None, peak_tflops: float | None) -> int:
    """Run every case within the budget through worker processes; write and print the results."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    log.write_text("")
    started = time.time()
    deadline = started + plan.budget_s
    todo = [c for c in cases(plan) if only is None or c["kind"] == "build" or only in c["name"]]
    (out / "plan.json").write_text(json.dumps({"plan": asdict(plan), "cases": todo, "started": started,
                                               "deadline": deadline, "peak_tflops": peak_tflops}, indent=1))
    for case in todo:
        reason = skip_reason(case, plan)
        if reason:
            _append(log, {"name": case["name"], "status": "skipped", "reason": reason})
    while True:
        done = {r["name"] for r in read_results(log)}
        remaining = [c for c in todo if c["name"] not in done]
        if not remaining:
            break
        if time.time() > deadline - 5:
            for case in remaining:
                _append(log, {"name": case["name"], "status": "skipped", "reason": "suite deadline reached"})
            break
        code = _run_worker(out, deadline)
        if code != 0 and not {r["name"] for r in read_results(log)} - done:
            # The worker died without a word (killed for memory, crashed): its current case failed.
            _append(log, {"name": remaining[0]["name"], "status": "error",
                          "reason": f"worker exited with code {code} (see {out / 'worker.log'})"})
    report = write_report(out)
    print(report)
    return 0


def _run_worker(out: Path, deadline: float) -> int:
    """One worker process until it ends (or the deadline passes: killed); prints each case's result as it lands."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out)]
    shown = len(read_results(out / "results.jsonl"))
    with open(out / "worker.log", "a") as log:
        worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        while worker.poll() is None and time.time() < deadline + 30:
            time.sleep(1)
            shown = _show_new(out, shown)
        if worker.poll() is None:
            worker.kill()
        code = worker.wait()
    _show_new(out, shown)
    return code


def _show_new(out: Path, shown: int) -> int:
    results = read_results(out / "results.jsonl")
    for record in results[shown:]:
        numbers = {k: v for k, v in record.items() if k not in ("name", "status", "reason", "model")}
        print(f"{record['name']}: {_status(record)} {json.dumps(numbers) if numbers else ''}", flush=True)
    return len(results)


def _append(log: Path, record: dict[str, Any]) -> None:
    with open(log, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_results(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


# --------------------------------------------------------------------------------------------- the worker
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
            _append(log, {"name": case["name"], "status": "skipped", "reason": why})
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
        _append(log, record)
        print(json.dumps(record), flush=True)
        write_report(out)
        _free_memory()
    return 0


def _timed_out(log: Path, name: str, limit: float, out: Path) -> None:
    _append(log, {"name": name, "status": "timeout", "reason": f"over its {limit:.0f} s limit"})
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

    folder = str(model_dir(out))
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None).to(device)
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


# --------------------------------------------------------------------------------------------- the report
def write_report(out: Path) -> str:
    """results.json (plan, environment, every case) and results.md (the two tables); returns the markdown."""
    spec = json.loads((out / "plan.json").read_text())
    results = {r["name"]: r for r in read_results(out / "results.jsonl")}
    rows = [results.get(c["name"], {"name": c["name"], "status": "not run"}) | {"case": c} for c in spec["cases"]]
    (out / "results.json").write_text(json.dumps({**spec, "environment": _environment(),
                                                  "results": rows}, indent=1, default=str))
    train = ["| method | precision | latent cache | compile | images/s | median step (ms) | peak memory (GB) | MFU "
             "| first step (s) | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    generate = ["| pipeline | batch | s/image | peak memory (GB) | status |", "|---|---|---|---|---|"]
    for row in rows:
        case, status = row["case"], _status(row)
        if case["kind"] == "train":
            mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
            train.append(f"| {case['method']} | {case['precision']} | {'on' if case['cache'] else 'off'} | "
                         f"{'on' if case['compile'] else 'off'} | {row.get('images_per_s', '-')} | "
                         f"{row.get('median_step_ms', '-')} | {row.get('peak_memory_gb', '-')} | {mfu} | "
                         f"{row.get('first_step_s', '-')} | {status} |")
        elif case["kind"] == "generate":
            runner = "medsd sampler" if case["runner"] == "medsd" else "diffusers StableDiffusionPipeline"
            for batch in spec["plan"]["generation_batches"]:
                generate.append(f"| {runner} | {batch} | {row.get(f's_per_image_batch_{batch}', '-')} | "
                                f"{row.get('peak_memory_gb', '-')} | {status} |")
    plan, env = spec["plan"], _environment()
    title = (f"GPU suite ({'smoke, CPU' if plan['smoke'] else 'SD 1.5 architecture'}): {plan['resolution']} px, "
             f"training batch {plan['batch']} ({plan['warmup_steps']} warm-up + {plan['timed_steps']} timed steps), "
             f"generation {plan['generation_steps']} steps")
    build = results.get("build", {})
    setup = (f"Device: {env.get('gpu') or 'CPU'}; torch {env.get('torch')}, CUDA {env.get('cuda')}, diffusers "
             f"{env.get('diffusers')}. Model: {_status(build) if build else 'not built'}"
             + (f", U-Net forward {build['unet_forward_gflop_per_image']} GFLOP per image" if build.get(
                 "unet_forward_gflop_per_image") else "") + ".")
    text = "\n".join([title, "", setup, "", *train, "", *generate, ""])
    (out / "results.md").write_text(text)
    return text


def _status(row: dict[str, Any]) -> str:
    return row["status"] + (f": {row['reason']}" if row.get("reason") else "")


def _environment() -> dict[str, Any]:
    try:
        import diffusers
        import torch
    except ImportError:
        return {}
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "cuda": torch.version.cuda, "gpu": gpu}


def _cuda_visible() -> bool:
    """Asked in a child process, so that this one never holds a CUDA context (the workers' memory is measured)."""
    probe = [sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/gpu_suite", help="results folder (default: runs/gpu_suite)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (the suite's own test)")
    parser.add_argument("--budget-min", type=float, default=None, help="whole-suite deadline in minutes (default 8)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--cases", default=None, metavar="PATTERN", help="only cases whose name contains PATTERN")
    parser.add_argument("--train-limit-s", type=float, default=None, help="time limit of one training case")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(Path(args.worker))
    if not args.smoke and not _cuda_visible():
        print("gpu_suite: no CUDA GPU is visible; the suite measures SD 1.5 at 512 px on a GPU. On a CPU run "
              "`python benchmarks/gpu_suite.py --smoke` (the test-size model) instead.", file=sys.stderr)
        return 2
    plan = Plan.smoke_plan() if args.smoke else Plan()
    if args.budget_min is not None:
        plan.budget_s = args.budget_min * 60
    if args.train_limit_s is not None:
        plan.train_limit_s = args.train_limit_s
    return run_suite(plan, Path(args.out), args.cases, args.peak_tflops)


if __name__ == "__main__":
    sys.exit(main())
