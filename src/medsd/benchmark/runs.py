"""One cell of the grid: adapt the base with one method to one finding from N examples, then generate and judge.

1. write the recipe to OUT/configs/NAME.yaml and train it (`medsd.phantom.text_model.run_recipe`: a finished
   run is reused, a broken-off one resumes); the checkpoint is deleted afterwards (the artefact stays);
2. load the adapted model (base + LoRA / embeddings, or the saved folder) and generate every evaluation prompt
   in one batched call (the same prompts and seeds as every other run);
3. judge and measure (`medsd.benchmark.measures`); the row goes to RUN/measures.json, which marks the run done.

Peak memory is the process's resident-set high-water mark over the run (reset before it through
/proc/self/clear_refs where Linux allows, else the process's peak so far).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medsd.benchmark.measures import asked_frame, evaluation_cases, faithfulness, measure_images
from medsd.benchmark.methods import ARTEFACT_KEYS, MethodSpec, TrainingSubset, adaptation_recipe
from medsd.phantom.render import finding_slug

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every run shares: where things are, the judge, the held-out features, the plan."""

    out: Path
    plan: Any
    base_model: Path
    judge: Any
    heldout_features: torch.Tensor
    class_images: Path
    seed: int = 0


def run_name(finding: str, n: int, spec_id: str) -> str:
    return f"{finding_slug(finding)}_n{n:03d}_{spec_id}"


def adapt_and_measure(ctx: Context, spec: MethodSpec, subset: TrainingSubset) -> dict[str, Any]:
    """Steps 1-3 for one (method, finding, N); a run whose measures.json exists is read back instead."""
    from medsd.phantom.text_model import run_recipe

    name = run_name(subset.finding, subset.n, spec.id)
    run_dir = ctx.out / "runs" / name
    done = run_dir / "measures.json"
    if done.is_file():
        return read_back(done, subset.finding, list(subset.base_findings))
    reset_peak_memory()
    recipe = adaptation_recipe(spec, ctx.base_model, subset, run_dir, ctx.plan, ctx.out / "cache",
                               ctx.class_images, ctx.seed)
    started = time.perf_counter()
    run_recipe(ctx.out, name, recipe)
    train_seconds = time.perf_counter() - started
    training = json.loads((run_dir / "training_done.json").read_text())
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    artefact = Path(training["artefacts"][ARTEFACT_KEYS[spec.family]])
    started = time.perf_counter()
    model = load_adapted(ctx.base_model, spec, run_dir, training["artefacts"])
    cases = evaluation_cases(subset.finding, list(subset.base_findings), ctx.plan, spec.trigger(subset.finding),
                             ctx.seed)
    images, files = generate_cases(model, cases, run_dir / "generated", ctx.plan, ctx.seed)
    generate_seconds = time.perf_counter() - started
    examples = load_examples(subset, ctx.plan.size)
    measures, judged = measure_images(ctx.judge, images, asked_frame(cases).assign(file=files), subset.finding,
                                      list(subset.base_findings), ctx.heldout_features, examples)
    judged.to_csv(run_dir / "judged.csv", index=False)
    row = {
        "method": spec.family, "setting": spec.setting, "method_id": spec.id, "finding": subset.finding,
        "n_examples": subset.n, **measures, "steps": training["step"],
        "images_seen": training["step"] * min(ctx.plan.batch_size, subset.n * subset.example_repeats
                                              + subset.rehearsal),
        "rehearsal_images": subset.rehearsal, "example_repeats": subset.example_repeats,
        "train_seconds": round(train_seconds, 1), "generate_seconds": round(generate_seconds, 1),
        "peak_memory_mb": peak_memory_mb(), "artefact_bytes": artefact_bytes(artefact),
        "run": str(run_dir), "recipe": str(ctx.out / "configs" / f"{name}.yaml"),
    }
    done.write_text(json.dumps(row, indent=1))
    return row


def read_back(done: Path, finding: str, base_findings: list[str]) -> dict[str, Any]:
    """A finished run's row. Judge-derived measures that a later version added are computed from the run's
    judged.csv (the judge's answers, kept beside measures.json), so older runs gain them without regenerating."""
    import pandas as pd

    row = json.loads(done.read_text())
    judged = done.parent / "judged.csv"
    if not judged.is_file():
        return row
    try:
        measures = faithfulness(pd.read_csv(judged), finding, base_findings)
    except (OSError, ValueError, KeyError) as err:  # pandas' parser and empty-data errors are ValueErrors
        log.warning("%s cannot be read (%s: %s); %s keeps the measures it has", judged, type(err).__name__, err, done)
        return row
    missing = {k: v for k, v in measures.items() if k not in row}
    if missing:
        row.update(missing)
        done.write_text(json.dumps(row, indent=1))
    return row


def measure_base(ctx: Context, finding: str, base_findings: list[str]) -> dict[str, Any]:
    """The base model asked the same prompts (its row: what adaptation starts from, and forgetting's zero)."""
    run_dir = ctx.out / "runs" / f"{finding_slug(finding)}_base"
    done = run_dir / "measures.json"
    if done.is_file():
        return read_back(done, finding, base_findings)
    from medsd.generate.loading import load_model

    reset_peak_memory()
    started = time.perf_counter()
    cases = evaluation_cases(finding, base_findings, ctx.plan, None, ctx.seed)
    images, files = generate_cases(load_model(str(ctx.base_model), device="cpu"), cases, run_dir / "generated",
                                   ctx.plan, ctx.seed)
    measures, judged = measure_images(ctx.judge, images, asked_frame(cases).assign(file=files), finding, base_findings,
                                      ctx.heldout_features, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    judged.to_csv(run_dir / "judged.csv", index=False)
    row = {"method": "base", "setting": "no adaptation", "method_id": "base", "finding": finding, "n_examples": 0,
           **measures, "steps": 0, "images_seen": 0, "train_seconds": 0.0,
           "generate_seconds": round(time.perf_counter() - started, 1), "peak_memory_mb": peak_memory_mb(),
           "artefact_bytes": 0, "run": str(run_dir), "recipe": None}
    done.write_text(json.dumps(row, indent=1))
    return row


def load_adapted(base: Path, spec: MethodSpec, run_dir: Path, artefacts: dict[str, str]) -> Any:
    """The adapted model as `medsd generate` would load it."""
    from medsd.generate.loading import load_model

    if spec.family == "lora":
        return load_model(str(base), lora=artefacts["lora"], device="cpu")
    if spec.family == "textual_inversion":
        return load_model(str(base), embeddings=[artefacts["learned_embeds"]], device="cpu")
    return load_model(artefacts[ARTEFACT_KEYS[spec.family]], device="cpu")


def generate_cases(model: Any, cases: list, folder: Path, plan: Any, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Generate one image per case (image k with seed + k); returns them [N, 1, H, W] in [0, 1] and their files."""
    from medsd.evaluate.io import read_image
    from medsd.generate.api import generate

    table = generate(model, [c.prompt for c in cases], out_dir=folder, batch_size=plan.generate_batch,
                     steps=plan.sample_steps, guidance=plan.guidance, scheduler="ddim", seed=seed,
                     height=plan.size, width=plan.size, device="cpu", progress=False)
    files = list(table["file"])
    return torch.stack([read_image(folder / f, plan.size) for f in files]), files


def load_examples(subset: TrainingSubset, size: int) -> torch.Tensor:
    """The run's N training images [N, 1, H, W] in [0, 1] (what near-copies are looked for against)."""
    import pandas as pd

    from medsd.evaluate.io import read_image

    frame = pd.read_csv(subset.csv)
    return torch.stack([read_image(subset.root / p, size) for p in frame["Path"]])


def artefact_bytes(path: Path) -> int:
    """Size of an artefact file, or of every file in an artefact folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def reset_peak_memory() -> None:
    """Start a new resident-set high-water mark (Linux; elsewhere the process's peak keeps counting)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        log.debug("cannot reset the peak RSS here; peak memory is the process's peak so far")


def peak_memory_mb() -> float:
    """The process's resident-set high-water mark in MiB (VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
