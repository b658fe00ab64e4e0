"""`run_adaptation_benchmark`: the benchmark's stages in order, each timed, each reused when already done.

1. render the real phantom sets (judge, held-out, one pool per held-out finding);
2. the base: `pretrain_text_model(exclude_findings=held_out)`, or `--base DIR` (checked not to have seen them);
   beside it, in a second process, the judge trains on every finding (or take `--judge DIR`, e.g. the demo's);
3. the judge measured on the held-out images (its ceiling on real images);
4. DreamBooth's class images, drawn once by the base;
5. the base's own row per held-out finding, then the grid: every (N, finding, method) run
   (`medsd.benchmark.runs`), with a progress line and an ETA after each; results.json is rewritten after
   every run, so an interrupted benchmark shows what it has and resumes where it stopped;
6. the report (`medsd.benchmark.report`): results.json, report.html, table.md.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from medsd.benchmark.data import pool_name, render_sets, training_subset, with_rehearsal
from medsd.benchmark.methods import method_specs
from medsd.benchmark.plan import AdaptationPlan
from medsd.benchmark.runs import Context, adapt_and_measure, measure_base, run_name
from medsd.errors import MedsdError
from medsd.phantom.render import FINDINGS
from medsd.stage_timer import StageTimer

log = logging.getLogger(__name__)

# Plan fields that change what a finished run measured: a folder holding runs made under other values is refused.
RUN_FIELDS = ("held_out", "run_minutes", "max_steps", "batch_size", "new_images", "base_images", "sample_steps",
              "guidance", "n_judge", "n_heldout", "n_pool", "judge_epochs", "class_images", "rehearsal_images",
              "example_share", "masked_loss_weight")


def run_adaptation_benchmark(out: Path, plan: AdaptationPlan, base: Path | None = None, judge: Path | None = None,
                             seed: int = 0) -> dict[str, Any]:
    """Run every stage into `out`; returns the summary (also OUT/summary.json). `base`: a base to reuse;
    `judge`: a trained phantom judge folder to reuse (it must know every finding)."""
    from medsd.benchmark.report import write_report

    # Absolute from here on: the recipes written inside name their data, and a run reads `data.csv` relative to
    # `data.root`, not to the folder the benchmark was started from.
    out = Path(out).resolve()
    specs = method_specs(plan.methods, plan.learning_rates)
    unknown = [f for f in plan.held_out if f not in FINDINGS]
    if unknown or not plan.held_out:
        raise MedsdError(f"--findings: {unknown or 'none given'}; hold out one or more of {', '.join(FINDINGS)}")
    stray = [f for f in plan.adapted if f not in plan.held_out]
    if stray:
        raise MedsdError(f"--adapt {', '.join(stray)}: not held out; adapt to one or more of --findings "
                         f"({', '.join(plan.held_out)})")
    if base is not None:
        base = check_base(Path(base), plan)  # before any set is rendered
    out.mkdir(parents=True, exist_ok=True)  # after the checks: refused input leaves no folder behind
    stages = StageTimer()
    data = stages.run("phantom sets", render_sets, out / "data", plan, seed, judge_set=judge is None,
                      rehearsal=plan.rehearsal_images if any(s.rehearsal for s in specs) else 0)
    # The judge trains at one thread: beside the base's training it costs the benchmark no minutes.
    judge_beside = judge is None and base is None and not (out / "judge" / "model.safetensors").is_file()
    with (stages.beside("judge training", train_judge_model, data["judge"], out / "judge", plan, seed)
          if judge_beside else nullcontext()):
        base_model = stages.run("base model", prepare_base, out, plan, base, seed)
    judged = stages.run("judge", train_judge, data, out / "judge", plan, seed, judge)
    check_folder(out, plan, base_model, judge, seed)
    ctx = Context(out, plan, base_model, judged["model"], judged["heldout_features"], out / "class_images", seed)
    if any(s.family == "dreambooth" and s.method.get("with_prior_preservation") for s in specs):
        stages.run("class images", make_class_images, ctx)
    rows = stages.run("adaptation grid", run_grid, ctx, data, specs)
    summary = {
        "out": str(out), "plan": asdict(plan), "images_per_run": plan.images_per_run,
        "new_finding_images": plan.new_finding_images, "other_images": plan.other_images, "base_model": str(base_model),
        "seed": seed,
        "judge": str(judge or out / "judge"), "seconds": stages.seconds, "judge_on_real_images": judged["metrics"],
        "torch_threads": torch.get_num_threads(),
        "load_average": list(_load_average()),
    }
    summary.update(write_report(out, rows, summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def train_judge_model(images: Path, folder: Path, plan: AdaptationPlan, seed: int) -> Path:
    """Train the phantom judge on every finding into `folder` (a module-level function: it runs in a second
    process beside the base's training)."""
    from medsd.phantom.judge import train_reference_classifier

    train_reference_classifier(images, folder, epochs=plan.judge_epochs, input_size=plan.size, seed=seed)
    return folder


def train_judge(data: dict[str, Path], folder: Path, plan: AdaptationPlan, seed: int,
                given: Path | None = None) -> dict[str, Any]:
    """The phantom judge on every finding (reused when present; `given`: a trained one), its measures on the
    held-out real images (in `folder`), and their features (the FID reference)."""
    from medsd.evaluate.features import extract_features, phantom_extractor
    from medsd.evaluate.io import load_image_folder
    from medsd.phantom.judge import load_reference_classifier
    from medsd.phantom.prompt_faithfulness import faithfulness_report, judged_frame, real_cases

    if given is None and not (folder / "model.safetensors").is_file():
        train_judge_model(data["judge"], folder, plan, seed)
    model = load_reference_classifier(given or folder)
    if set(model.findings) != set(FINDINGS) or model.input_size != plan.size:
        raise MedsdError(f"--judge {given}: it reads {model.findings} at {model.input_size} px; the benchmark needs "
                         f"every phantom finding at {plan.size} px (omit --judge to train one)")
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = load_image_folder(data["heldout"], plan.size)
    held_out = folder / "heldout_metrics.json"
    if not held_out.is_file():
        frame = judged_frame(model, images, real_cases(data["heldout"], list(FINDINGS)))
        held_out.write_text(json.dumps(faithfulness_report(frame, list(FINDINGS))["real"], indent=2))
    features = extract_features(phantom_extractor(model), images)
    return {"model": model, "metrics": json.loads(held_out.read_text()), "heldout_features": features}


def prepare_base(out: Path, plan: AdaptationPlan, base: Path | None, seed: int) -> Path:
    """The base pipeline folder: `base` (the pipeline `check_base` accepted), else trained."""
    from medsd.phantom.text_model import pretrain_text_model

    if base is None:
        return pretrain_text_model(out / "base", exclude_findings=list(plan.held_out), plan=plan.base, seed=seed)
    return base


def check_base(base: Path, plan: AdaptationPlan) -> Path:
    """The pipeline folder of a `--base` to reuse, refused when it saw a held-out finding or never saw a finding
    the benchmark keeps."""
    pipeline = base if (base / "model_index.json").is_file() else base / "runs" / "text_to_image" / "pipeline"
    if not (pipeline / "model_index.json").is_file():
        raise MedsdError(f"--base {base}: no diffusers pipeline there (model_index.json) nor in "
                         "runs/text_to_image/pipeline; pass a folder written by this benchmark's base stage or by "
                         "medsd.phantom.text_model.pretrain_text_model")
    seen = base_training_findings(pipeline)
    if seen is None:
        log.warning("--base %s: cannot tell which findings its training data held; the benchmark assumes it never "
                    "saw %s", base, ", ".join(plan.held_out))
        return pipeline.resolve()
    if set(seen) & set(plan.held_out):
        raise MedsdError(f"--base {base} was trained on {sorted(set(seen) & set(plan.held_out))}, which this "
                         "benchmark holds out; pass a base trained without them or hold out other findings")
    never_learnt = [f for f in FINDINGS if f not in seen and f not in plan.held_out]
    if never_learnt:
        # They would count as base findings: "forgetting" measured on what the base never knew, and the
        # rehearsal images would teach them.
        raise MedsdError(f"--base {base} never saw {', '.join(never_learnt)}, which --findings does not hold out; "
                         f"hold it out too (--findings {' '.join(repr(f) for f in [*plan.held_out, *never_learnt])}) "
                         "or pass a base trained on it")
    return pipeline.resolve()


def base_training_findings(pipeline: Path) -> list[str] | None:
    """The findings of the phantom set a `pretrain_text_model` pipeline trained on (None: unknown)."""
    import yaml

    recipe = pipeline.parent.parent.parent / "configs" / "text_to_image.yaml"
    if not recipe.is_file():
        return None
    root = Path(yaml.safe_load(recipe.read_text())["data"]["root"])
    manifest = root / "phantom.json"
    return json.loads(manifest.read_text()).get("findings") if manifest.is_file() else None


def check_folder(out: Path, plan: AdaptationPlan, base_model: Path, judge: Path | None, seed: int) -> None:
    """Refuse to mix runs made with another base, judge or other run settings into one results table."""
    stamp = {"base_model": str(base_model), "judge": str(judge) if judge else None, "seed": seed,
             **{k: getattr(plan, k) for k in RUN_FIELDS},
             "base_plan": asdict(plan.base)}
    stamp = json.loads(json.dumps(stamp))
    path = out / "benchmark.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(stamp) if old.get(k) != stamp.get(k))
        if changed:
            raise MedsdError(f"{out} holds runs made with other settings ({', '.join(changed)}); use another --out "
                             "or delete it")
    path.write_text(json.dumps(stamp, indent=1))


def make_class_images(ctx: Context) -> Path:
    """DreamBooth's prior-preservation images: the base's answer to the class prompt, drawn once for every run."""
    from medsd.benchmark.methods import LABEL_TEMPLATE
    from medsd.generate.api import generate

    folder, plan = ctx.class_images, ctx.plan
    if len(list(folder.glob("*.png"))) < plan.class_images:
        generate(str(ctx.base_model), [LABEL_TEMPLATE.format(labels="no finding")], num_images=plan.class_images,
                 out_dir=folder, batch_size=plan.generate_batch, steps=plan.sample_steps, guidance=plan.guidance,
                 scheduler="ddim", seed=ctx.seed + 1_000_000, height=plan.size, width=plan.size, device="cpu",
                 progress=False)
    return folder


def run_grid(ctx: Context, data: dict[str, Path], specs: list) -> list[dict[str, Any]]:
    """The base's rows, then every (N, finding, method) run, logging progress and an ETA after each."""
    from medsd.benchmark.report import write_results

    plan, named = ctx.plan, ctx.plan.base_findings
    rows = [measure_base(ctx, finding, named) for finding in plan.adapted]
    cells = [(n, finding, spec) for n in plan.n_examples for finding in plan.adapted for spec in specs]
    fresh, fresh_seconds = 0, 0.0
    for i, (n, finding, spec) in enumerate(cells, start=1):
        subset = training_subset(data[pool_name(finding)], finding, n, named)
        if spec.rehearsal:
            subset = with_rehearsal(subset, data["rehearsal"], plan.rehearsal_images, plan.example_share)
        reused = (ctx.out / "runs" / run_name(finding, n, spec.id) / "measures.json").is_file()
        started = time.perf_counter()
        row = adapt_and_measure(ctx, spec, subset)
        rows.append(row)
        write_results(ctx.out, rows)
        if not reused:
            fresh, fresh_seconds = fresh + 1, fresh_seconds + time.perf_counter() - started
        eta = (len(cells) - i) * fresh_seconds / fresh if fresh else 0.0
        log.info("[%d/%d] %s, %s, N=%d: new-finding AUC %s, retained %s, %d steps%s; about %.0f min left",
                 i, len(cells), finding, spec.id, n, _fmt(row["new_finding_auc"]), _fmt(row["retained_auc"]),
                 row["steps"], " (reused)" if reused else f" in {time.perf_counter() - started:.0f} s", eta / 60)
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _load_average() -> tuple[float, float, float]:
    import os

    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3
