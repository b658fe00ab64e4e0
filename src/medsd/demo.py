"""`medsd demo`: text prompts in, faithful radiographs out, offline on the phantom, every image judged.

1. render a labelled phantom training set with a free-text report per image, and a held-out set (other
   virtual patients);
2. train the text-to-image model from scratch (`medsd.phantom.text_model`): the demo-size tiny model's
   autoencoder; its text encoder pretrained to read findings, side and severity from the reports; then
   U-Net + text encoder together on reports and label prompts (RoentGen's best setting);
3. beside the text-to-image stage, in a second process at one thread, train the phantom judge (finding, side
   and severity) and measure it on the held-out images;
4. generate from label prompts, from report-style prompts (every finding at three severities, on each side,
   and combinations), from reports written only with phrases the model never saw in training, and the
   README's example; an interpolation strip healthy -> cardiomegaly and an effusion inpainted into a healthy
   image;
5. judge every generated image (`medsd.phantom.prompt_faithfulness`) and evaluate FID against the
   real-vs-real baseline, diversity and memorization into report.html + metrics.json; print the tables.

Every training stage is an ordinary recipe written to OUT/configs/, so each can be rerun with `medsd train`.
`--minutes` sets the time budget; the stages stop on time (`training.max_minutes`), not on luck. The
text-to-image stage gets what the budget has left when it starts, less what generation and evaluation need, so
a machine that renders and trains the autoencoder faster turns the time saved into U-Net steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsd.phantom.render import FINDINGS
from medsd.phantom.text_model import TextModelPlan
from medsd.stage_timer import StageTimer

log = logging.getLogger(__name__)

EXAMPLE_PROMPT = "Moderate cardiomegaly. Small right pleural effusion."
# Phantom, report reader, generation and evaluation at the default sizes (2 CPU cores); the judge trains beside
# the text-to-image stage, in its minutes. The nominal split; the text-to-image stage's share is settled when
# it starts (DemoPlan.text_model_minutes).
FIXED_MINUTES = 4.5


@dataclass
class DemoPlan:
    """Sizes and budgets of one demo run (the default fills about 20 minutes on 2 CPU cores)."""

    n_heldout: int = 400
    classifier_epochs: int = 25
    model: TextModelPlan = field(default_factory=TextModelPlan)
    label_images: int = 12  # per label prompt (no finding, 5 findings, 2 combinations)
    report_images: int = 5  # per report configuration (35: findings x severities x sides, combinations)
    held_out_images: int = 3  # per configuration, written with held-out phrases only
    example_images: int = 8
    minutes: float | None = None  # the whole budget; None: every stage keeps the minutes planned here
    # Kept for generation and evaluation, which took 0.8-1.45 minutes at the default sizes on the 2-core
    # machines measured.
    after_training_minutes: float = 1.5

    @classmethod
    def for_minutes(cls, minutes: float) -> DemoPlan:
        """Give the training time left after the fixed stages to the autoencoder (1/5) and the text model."""
        plan = cls(minutes=minutes)
        train = max(minutes - FIXED_MINUTES, 2.0)
        plan.model.autoencoder_minutes = min(0.2 * train, 3.0)
        plan.model.diffusion_minutes = train - plan.model.autoencoder_minutes
        return plan

    def text_model_minutes(self, elapsed_minutes: float) -> float:
        """The text-to-image stage's minutes when it starts `elapsed_minutes` into the run: what the budget has
        left after generation and evaluation, never less than half the planned share (a slow start must not
        starve the stage that makes the images)."""
        planned = self.model.diffusion_minutes
        if self.minutes is None:
            return planned
        return round(max(self.minutes - elapsed_minutes - self.after_training_minutes, 0.5 * planned), 2)

    @classmethod
    def smoke(cls) -> DemoPlan:
        """The smallest plan that still runs every stage (the test suite's end-to-end check)."""
        model = TextModelPlan(n_train=40, size=32, model_size="test", batch_size=4, autoencoder_minutes=1.0,
                              autoencoder_steps=2, reader_steps=2, diffusion_minutes=1.0, diffusion_steps=3,
                              sample_steps=2)
        return cls(n_heldout=16, classifier_epochs=1, model=model, label_images=2, report_images=1,
                   held_out_images=1, example_images=2)


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `medsd demo`."""
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="total time budget in minutes; more gives better images (default: 20)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, every stage in about a minute (tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and sampling")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medsd.errors import MedsdError
    from medsd.files import output_dir

    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise MedsdError(f"--minutes must be a positive number of minutes, got {args.minutes}")
    output_dir(args.out, "--out")
    from medsd.demo_stages import format_summary

    plan = DemoPlan.smoke() if args.smoke else DemoPlan.for_minutes(args.minutes)
    summary = run_demo(Path(args.out), plan, seed=args.seed)
    print(format_summary(summary))
    return 0


def run_demo(out: Path, plan: DemoPlan, seed: int = 0) -> dict[str, Any]:
    """Run every stage into `out`; returns the summary (also written to OUT/summary.json)."""
    import torch

    from medsd import demo_stages as R
    from medsd.phantom import text_model as T

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    stages, m = StageTimer(), plan.model
    data = stages.run("phantom", _render_phantoms, out / "data", plan, seed)
    base = stages.run("tiny model", T.build_base_model, out / "models" / "tiny-demo", m, seed)
    vae = stages.run("train autoencoder", T.run_recipe, out, "autoencoder",
                     T.autoencoder_recipe(out, base, data["train"], m, FINDINGS))
    reader = stages.run("train report_reader", T.run_recipe, out, "report_reader",
                        T.report_reader_recipe(out, base, data["train"], m, FINDINGS))
    m.diffusion_minutes = plan.text_model_minutes((time.monotonic() - started) / 60)
    log.info("text-to-image stage: %.1f minutes of the %s-minute budget", m.diffusion_minutes, plan.minutes)
    threads = torch.get_num_threads()
    # The judge, a small CNN at one thread, trains in a second process beside the text-to-image U-Net, which
    # takes its second thread back when the judge is done (medsd.stage_timer): its minutes become U-Net steps.
    # It learns from the training images and from their reconstructions by the demo's autoencoder, so that it
    # does not read the decoder's traces, present in every generated image, as findings.
    with stages.beside("judge", R.train_judge, data, out / "classifier", plan, seed, vae) as judge_job:
        run = stages.run("train text_to_image", T.run_recipe, out, "text_to_image",
                         T.text_to_image_recipe(out, reader / "pipeline", data["train"], vae, m, FINDINGS),
                         callbacks=[judge_job.threads_back_when_done(threads)])
    judge = judge_job.result()
    generated = stages.run("generate", R.generate_all, out / "generated", run / "pipeline", data, plan, seed)
    results = stages.run("evaluate", R.evaluate, out, data, judge["dir"], generated, run, plan)
    summary = {
        "out": str(out), "plan": asdict(plan), "seconds": stages.seconds, "judge": judge["metrics"],
        "model": str(run / "pipeline"), "report": str(out / "report" / "report.html"),
        "metrics": str(out / "report" / "metrics.json"), **results,
        "generated": {k: str(v) for k, v in generated.items()},
        "tensorboard": f"tensorboard --logdir {out / 'runs'}",
        "generate_example": f'medsd generate --model {run / "pipeline"} --prompt "{EXAMPLE_PROMPT}" '
                            f"--num-images 8 --steps {m.sample_steps} --guidance {m.guidance} --scheduler ddim",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _render_phantoms(root: Path, plan: DemoPlan, seed: int) -> dict[str, Path]:
    from medsd.phantom.text_model import render_training_set

    # Held-out images come from other virtual patients (another seed), so they test generalisation.
    sets = {"train": (plan.model.n_train, seed), "heldout": (plan.n_heldout, seed + 1000)}
    return {name: render_training_set(root / f"phantom_{name}", n, plan.model.size, set_seed, list(FINDINGS))
            for name, (n, set_seed) in sets.items()}
