"""medsd against diffusers' reference training scripts: same model, images and settings, whole processes.

    python benchmarks/bench_peer.py [--methods lora full] [--pairs 3] [--steps 100 400] [--threads 1] [--nice N]
        [--images 480] [--work DIR] [--peers DIR] [--set KEY=VALUE ...] [--warm-data-cache]

1. Prepare (once per --work folder): the demo-size tiny model (`medsd model tiny --size demo`), `--images`
   phantom radiographs rendered at the training resolution, and the same files with the same prompts as an
   `imagefolder` (`metadata.jsonl`) for diffusers' scripts (which read images through `datasets`).
2. Runs: per method and per pair, `medsd train` and the reference script (`train_text_to_image_lora.py` for
   lora, `train_text_to_image.py` for full) each train the short and the long step count as whole processes
   (import, load, data, cache, train, save), the tool that goes first alternating from pair to pair so slow
   drift in machine load hits both alike. Same model, images, batch, resolution, CPU threads and nice level;
   LoRA rank 4 (alpha 4) on to_q/k/v/out.0; AdamW lr 1e-4 constant, no warm-up, clip 1.0; fp32; no
   validation; no checkpoint before the end. Every run starts cold: a fresh output folder, so medsd builds its
   latent cache, the script its `datasets` cache and torch.compile (if set) its kernels each time.
   `--warm-data-cache` measures the second run on the same data instead: both tools keep their data caches in
   the --work folder (medsd `training.cache_dir`, the script `--cache_dir`), filled by one untimed 1-step run
   of each before the pairs.
3. Report: per method, the median over pairs of wall-clock seconds (and CPU seconds, which other processes on a
   shared machine disturb less), the median of the per-pair ratios (script / medsd), and the steady state:
   images/s over (long - short) steps. Prints a markdown table (README form), writes `results.json` in --work.

The reference scripts (Apache-2.0) are not part of medsd: pass their folder with --peers (default: the first
`shared/peers/` found above this repository). They need the `datasets` package (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPTS = {"lora": "train_text_to_image_lora.py", "full": "train_text_to_image.py"}
LORA_RANK = 4
LEARNING_RATE = 1e-4


def find_peers(given: str | None) -> Path:
    """The folder holding diffusers' reference scripts: --peers, else the first `shared/peers` above the repo."""
    candidates = [Path(given)] if given else [p / "shared" / "peers" for p in ROOT.parents]
    for folder in candidates:
        if all((folder / name).is_file() for name in PEER_SCRIPTS.values()):
            return folder
    sys.exit(f"diffusers' reference scripts ({', '.join(PEER_SCRIPTS.values())}) not found in "
             f"{', '.join(map(str, candidates[:2]))}; pass their folder with --peers")


def prepare(work: Path, images: int, resolution: int) -> None:
    """The model, the phantom images (medsd reads them through its data layer) and the peer's imagefolder."""
    from medsd.models import build_tiny_model
    from medsd.phantom.render import write_phantom_dataset

    if not (work / "model" / "model_index.json").is_file():
        build_tiny_model(work / "model", size="demo")
    if not (work / "phantom" / "train.csv").is_file():
        write_phantom_dataset(work / "phantom", n=images, size=resolution)
    folder = work / "imagefolder" / "train"
    if (folder / "metadata.jsonl").is_file():
        return
    # The same files with the prompts medsd's data layer gives them, so both tools train on identical pairs.
    dataset = phantom_dataset(work, resolution)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(dataset)):
        item = dataset[i]
        name = f"{i:05d}.png"
        shutil.copyfile(Path(item["path"]), folder / name)
        rows.append(json.dumps({"file_name": name, "text": item["prompt"]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def data_settings(work: Path, resolution: int) -> dict:
    """medsd's `data:` section: every phantom image in the training split."""
    return {"source": "phantom", "root": str(work / "phantom"), "resolution": resolution,
            "split_fractions": [1.0, 0.0, 0.0]}


def phantom_dataset(work: Path, resolution: int):
    from medsd.data.config import DataConfig
    from medsd.data.dataset import build_dataset

    return build_dataset(DataConfig(**data_settings(work, resolution)), split="train")


def medsd_recipe(work: Path, resolution: int, batch: int, method: str, steps: int, out: Path) -> dict:
    """The recipe medsd trains in the comparison: the peer script's settings (LoRA rank 4 on the attention
    projections, or full fine-tuning; constant LR, fp32, no validation)."""
    method_section = {"name": method}
    if method == "lora":
        method_section.update(rank=LORA_RANK, alpha=LORA_RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    return {
        "output_dir": str(out), "seed": 0,
        "model": {"pretrained": str(work / "model"), "device": "cpu"},
        "data": data_settings(work, resolution),
        "training": {"max_steps": steps, "batch_size": batch, "learning_rate": LEARNING_RATE,
                     "lr_scheduler": "constant", "lr_warmup_steps": 0, "mixed_precision": "no",
                     "checkpointing_steps": 1_000_000},
        "method": method_section,
        "validation": {"prompts": []},
    }


def medsd_command(args: argparse.Namespace, method: str, steps: int, out: Path) -> list[str]:
    """`medsd train` on a recipe written into `out` (the run's own output folder)."""
    import yaml

    recipe = medsd_recipe(args.work, args.resolution, args.batch, method, steps, out)
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    shared = [f"training.cache_dir={args.work / 'medsd-latent-cache'}"] if args.warm_data_cache else []
    return [sys.executable, "-m", "medsd", "train", str(out.parent / f"{out.name}.yaml"), *sum(
        (["--set", s] for s in [*args.set, *shared]), [])]


def peer_command(args: argparse.Namespace, method: str, steps: int, out: Path) -> list[str]:
    """diffusers' reference script with the same settings (its own defaults otherwise)."""
    command = [
        sys.executable, str(args.peers / PEER_SCRIPTS[method]),
        "--pretrained_model_name_or_path", str(args.work / "model"),
        "--train_data_dir", str(args.work / "imagefolder" / "train"), "--caption_column", "text",
        "--cache_dir", str(args.work / "datasets-cache" if args.warm_data_cache else out / "datasets-cache"),
        "--output_dir", str(out),
        "--resolution", str(args.resolution), "--center_crop", "--train_batch_size", str(args.batch),
        "--max_train_steps", str(steps), "--learning_rate", str(LEARNING_RATE), "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0", "--mixed_precision", "no", "--dataloader_num_workers", "0",
        "--checkpointing_steps", "1000000", "--report_to", "tensorboard", "--seed", "0",
    ]
    if method == "lora":
        command += ["--rank", str(LORA_RANK)]
    return command


def timed_run(command: list[str], env: dict, nice: int | None, log: Path) -> dict:
    """Run one whole process; its wall-clock seconds and CPU seconds (user + system, from wait4)."""
    def lower_priority() -> None:
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    with open(log, "w") as stream:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                preexec_fn=lower_priority)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed (exit {proc.returncode}); last lines of {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-25:]))
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def check_output(tool: str, method: str, out: Path) -> None:
    """Both tools must have written their trained weights: a run that saved nothing measured nothing."""
    expected = {("medsd", "full"): "pipeline/unet", ("peer", "full"): "unet"}.get(
        (tool, method), "pytorch_lora_weights.safetensors")
    if not (out / expected).exists():
        sys.exit(f"{tool} {method} finished without writing {out / expected}")


def run_pairs(args: argparse.Namespace, method: str) -> list[dict]:
    """`args.pairs` pairs of (medsd, script) runs at each step count; the first tool alternates."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:  # torch.compile's compiler workers too, when a --set turns compilation on
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   TORCHINDUCTOR_COMPILE_THREADS=str(args.threads))
    builders = {"medsd": medsd_command, "peer": peer_command}
    if args.warm_data_cache:  # fill both data caches once, untimed
        for tool, build in builders.items():
            out = args.work / "runs" / f"{method}-{tool}-warmup"
            shutil.rmtree(out, ignore_errors=True)
            timed_run(build(args, method, 1, out), env, args.nice, out.parent / f"{out.name}.log")
            shutil.rmtree(out, ignore_errors=True)
    runs = []
    for pair in range(args.pairs):
        order = ["medsd", "peer"] if pair % 2 == 0 else ["peer", "medsd"]
        for steps in args.steps:
            for tool in order:
                out = args.work / "runs" / f"{method}-{tool}-{steps}-{pair}"
                shutil.rmtree(out, ignore_errors=True)
                command = builders[tool](args, method, steps, out)
                run_env = env if args.warm_torch_cache else {**env, "TORCHINDUCTOR_CACHE_DIR": str(out / "inductor")}
                result = timed_run(command, run_env, args.nice, out.parent / f"{out.name}.log")
                check_output(tool, method, out)
                shutil.rmtree(out, ignore_errors=True)
                runs.append({"method": method, "tool": tool, "steps": steps, "pair": pair, **result,
                             "load": os.getloadavg()[0]})
                print(f"{method} pair {pair} {tool:5s} {steps:4d} steps: {result['wall_s']:6.1f} s wall, "
                      f"{result['cpu_s']:6.1f} s CPU (load {runs[-1]['load']:.1f})", flush=True)
    return runs


def summarise(runs: list[dict], method: str, short: int, long: int, batch: int) -> dict:
    """Medians over pairs of seconds and of per-pair ratios; steady state from (long - short) per pair."""
    def pick(tool: str, steps: int, pair: int) -> dict:
        return next(r for r in runs if (r["method"], r["tool"], r["steps"], r["pair"]) == (method, tool, steps, pair))

    pairs = sorted({r["pair"] for r in runs if r["method"] == method})
    table: dict = {}
    for key in ("wall_s", "cpu_s"):
        rows = {}
        for steps in (short, long):
            ours = [pick("medsd", steps, p)[key] for p in pairs]
            theirs = [pick("peer", steps, p)[key] for p in pairs]
            rows[steps] = {"medsd": statistics.median(ours), "peer": statistics.median(theirs),
                           "ratio": statistics.median(t / o for t, o in zip(theirs, ours, strict=True))}
        images = batch * (long - short)
        ours = [images / (pick("medsd", long, p)[key] - pick("medsd", short, p)[key]) for p in pairs]
        theirs = [images / (pick("peer", long, p)[key] - pick("peer", short, p)[key]) for p in pairs]
        rows["steady"] = {"medsd": statistics.median(ours), "peer": statistics.median(theirs),
                          "ratio": statistics.median(o / t for t, o in zip(theirs, ours, strict=True)),
                          "ratio_range": [min(o / t for t, o in zip(theirs, ours, strict=True)),
                                          max(o / t for t, o in zip(theirs, ours, strict=True))]}
        table[key] = rows
    return table


def markdown(summaries: dict, args: argparse.Namespace, loads: list[float]) -> str:
    short, long = args.steps
    lines = [
        f"Side by side, {args.pairs} pairs of whole processes in alternation (demo-size tiny model, "
        f"{args.images} phantom images at {args.resolution} px, batch {args.batch}, LoRA rank {LORA_RANK} on "
        f"to_q/k/v/out.0, lr {LEARNING_RATE:g} constant, fp32, no validation, {args.threads or 'default'} CPU "
        f"thread(s) each, nice {args.nice if args.nice is not None else os.getpriority(os.PRIO_PROCESS, 0)}; "
        f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}). "
        "Seconds are medians over pairs; ratios are medians of the per-pair ratios (diffusers / medsd); CPU "
        "seconds (user + system) are disturbed less by other processes than wall-clock seconds."
        + (" Data caches warm (the second run on the same data: medsd's latent cache, the script's `datasets` "
           "cache)." if args.warm_data_cache else " Data caches cold (every run encodes its data).")
        + (f" medsd overrides: `{' '.join(args.set)}`" + (" (torch.compile cache warm)." if args.warm_torch_cache
                                                           else " (torch.compile from scratch in every run).")
           if args.set else ""),
        "",
        "| method | steps | medsd `train` | diffusers script | ratio (wall) | ratio (CPU time) |",
        "|---|---|---|---|---|---|",
    ]
    for method, table in summaries.items():
        wall, cpu = table["wall_s"], table["cpu_s"]
        script = f"`{PEER_SCRIPTS[method]}`"
        for steps in (short, long):
            lines.append(f"| {method} | {steps} | {wall[steps]['medsd']:.1f} s | {wall[steps]['peer']:.1f} s "
                         f"({script}) | {wall[steps]['ratio']:.2f}x | {cpu[steps]['ratio']:.2f}x |")
        s, c = wall["steady"], cpu["steady"]
        lines.append(f"| {method} | steady state ({long} - {short}) | {s['medsd']:.0f} images/s | "
                     f"{s['peer']:.0f} images/s | **{s['ratio']:.2f}x** ({s['ratio_range'][0]:.2f}-"
                     f"{s['ratio_range'][1]:.2f}) | {c['ratio']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=sorted(PEER_SCRIPTS))
    parser.add_argument("--pairs", type=int, default=3, help="pairs of (medsd, script) runs per step count")
    parser.add_argument("--steps", type=int, nargs=2, default=[100, 400], metavar=("SHORT", "LONG"))
    parser.add_argument("--images", type=int, default=480, help="phantom images (rendered once per --work)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP/MKL threads of every run (default 1; 0 = each library's default)")
    parser.add_argument("--nice", type=int, default=None, help="nice level of every run (default: this process's)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--peers", default=None, help="folder with diffusers' train_text_to_image[_lora].py")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra `medsd train --set` overrides (e.g. training.compile=blocks)")
    parser.add_argument("--warm-torch-cache", action="store_true",
                        help="let torch.compile reuse its on-disk cache across runs (default: every run compiles "
                        "from scratch, like a first run on a new machine)")
    parser.add_argument("--warm-data-cache", action="store_true",
                        help="time the second run on the same data: both tools reuse their data caches (default: "
                        "every run builds them, like a first run)")
    args = parser.parse_args()
    if args.steps[1] <= args.steps[0]:
        parser.error("--steps SHORT LONG needs LONG > SHORT")
    args.peers = find_peers(args.peers)
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="bench_peer_"))).resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TQDM_DISABLE"] = "1"  # quiet preparation; the measured runs keep their progress bars
    prepare(args.work, args.images, args.resolution)
    del os.environ["TQDM_DISABLE"]
    loads = [os.getloadavg()[0]]
    runs = []
    for method in args.methods:
        runs += run_pairs(args, method)
    loads += [r["load"] for r in runs]
    summaries = {m: summarise(runs, m, *args.steps, args.batch) for m in args.methods}
    (args.work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "runs": runs, "summary": summaries}, indent=1))
    print("\n" + markdown(summaries, args, loads))


if __name__ == "__main__":
    main()
