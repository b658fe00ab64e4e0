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

Budget: cases run in priority order in a worker process (`gpu_suite_worker.py`); each has a time limit and the suite a
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


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
            append(log, {"name": case["name"], "status": "skipped", "reason": reason})
    while True:
        done = {r["name"] for r in read_results(log)}
        remaining = [c for c in todo if c["name"] not in done]
        if not remaining:
            break
        if time.time() > deadline - 5:
            for case in remaining:
                append(log, {"name": case["name"], "status": "skipped", "reason": "suite deadline reached"})
            break
        code = _run_worker(out, deadline)
        if code != 0 and not {r["name"] for r in read_results(log)} - done:
            # The worker died without a word (killed for memory, crashed): its current case failed.
            append(log, {"name": remaining[0]["name"], "status": "error",
                          "reason": f"worker exited with code {code} (see {out / 'worker.log'})"})
    report = write_report(out)
    print(report)
    return 0


def _run_worker(out: Path, deadline: float) -> int:
    """One worker process until it ends (or the deadline passes: killed); prints each case's result as it lands."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve().with_name("gpu_suite_worker.py")), str(out)]
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


def append(log: Path, record: dict[str, Any]) -> None:
    with open(log, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_results(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


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
    args = parser.parse_args()
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
