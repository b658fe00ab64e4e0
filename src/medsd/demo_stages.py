"""The demo's judging stages: train the judge, generate every test prompt, judge and evaluate the images.

Kept apart from `medsd.demo` (the plan and the order of stages) so that each stage reads on its own; the
text-to-image recipes live in `medsd.phantom.text_model`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from medsd.phantom.render import FINDINGS

log = logging.getLogger(__name__)

KINDS = ("label", "report", "held_out", "example")


def train_judge(data: dict[str, Path], out: Path, plan: Any, seed: int, autoencoder: Path) -> dict[str, Any]:
    """Train the judge on the training set and on its reconstructions by the demo's autoencoder (reused when
    present) and measure it on the held-out set."""
    from medsd.evaluate.io import load_image_folder
    from medsd.phantom.judge import load_reference_classifier, train_reference_classifier
    from medsd.phantom.prompt_faithfulness import faithfulness_report, judged_frame, real_cases

    metrics = out / "metrics.json"
    trained = metrics.is_file() and (out / "model.safetensors").is_file()
    if not (trained and json.loads(metrics.read_text()).get("autoencoder") == str(autoencoder)):
        (out / "heldout_metrics.json").unlink(missing_ok=True)
        train_reference_classifier(data["train"], out, epochs=plan.classifier_epochs, input_size=plan.model.size,
                                   seed=seed, autoencoder=autoencoder)
    held_out = out / "heldout_metrics.json"
    if not held_out.is_file():
        model = load_reference_classifier(out)
        images, _ = load_image_folder(data["heldout"], plan.model.size)
        frame = judged_frame(model, images, real_cases(data["heldout"], list(FINDINGS)))
        held_out.write_text(json.dumps(faithfulness_report(frame, list(FINDINGS))["real"], indent=2))
    return {"dir": out, "metrics": json.loads(held_out.read_text())}


def test_cases(plan: Any, seed: int) -> dict[str, list[Any]]:
    """Every prompt the demo asks, by kind (see `medsd.phantom.prompt_suite`)."""
    from medsd.demo import EXAMPLE_PROMPT
    from medsd.phantom.prompt_suite import PromptCase, label_cases, report_cases
    from medsd.phantom.reports import FindingSpec

    example = (FindingSpec("Cardiomegaly", None, 1), FindingSpec("Pleural Effusion", "right", 0))
    findings = list(FINDINGS)
    return {
        "label": label_cases(findings, plan.label_images),
        "report": report_cases(findings, plan.report_images, held_out=False, seed=seed),
        "held_out": report_cases(findings, plan.held_out_images, held_out=True, seed=seed),
        "example": [PromptCase(EXAMPLE_PROMPT, example, "example", "Cardiomegaly + Pleural Effusion, right")]
        * plan.example_images,
    }


def generate_all(root: Path, pipeline: Path, data: dict[str, Path], plan: Any, seed: int) -> dict[str, Path]:
    """Generate every test prompt (one image each, seed + k), an interpolation strip and an inpainting."""
    from medsd.generate.inpaint import inpaint
    from medsd.generate.interpolate import interpolate
    from medsd.generate.loading import load_model
    from medsd.phantom.prompt_suite import label_prompt

    m = plan.model
    common = {"steps": m.sample_steps, "scheduler": "ddim", "guidance": m.guidance, "device": "cpu", "seed": seed}
    model = load_model(str(pipeline), device="cpu")
    folders = generate_test_prompts(model, root, plan, seed)
    folders["interpolation"] = root / "interpolation"
    interpolate(model, label_prompt(()), label_prompt(("Cardiomegaly",)), frames=6, out_dir=folders["interpolation"],
                height=m.size, width=m.size, **common)
    healthy, mask, prompt, side = inpainting_inputs(data["heldout"])
    folders["inpainting"] = root / "inpainting"
    inpaint(model, healthy, prompt, mask=mask, num_images=4, out_dir=folders["inpainting"], **common)
    (folders["inpainting"] / "asked.json").write_text(json.dumps({"prompt": prompt, "side": side}))
    return folders


def generate_test_prompts(model: Any, root: Path, plan: Any, seed: int) -> dict[str, Path]:
    """One image per test prompt (seed + k) into ROOT/KIND/, with `cases.csv`: what each image was asked for."""
    from medsd.generate.api import generate
    from medsd.phantom.prompt_suite import cases_frame

    m, folders = plan.model, {}
    for kind, cases in test_cases(plan, seed).items():
        folder = folders[kind] = root / kind
        table = generate(model, [c.prompt for c in cases], num_images=1, out_dir=folder, batch_size=16,
                         height=m.size, width=m.size, steps=m.sample_steps, scheduler="ddim", guidance=m.guidance,
                         device="cpu", seed=seed)
        asked = cases_frame(cases, list(FINDINGS)).assign(file=table["file"].to_numpy())
        asked.to_csv(folder / "cases.csv", index=False)
        # Label columns in generation_results.csv let `medsd evaluate` score the folder with the true asks
        # (it would otherwise look for finding names in the prompt, and "No pneumothorax." names one).
        table[list(FINDINGS)] = asked[list(FINDINGS)].to_numpy()
        table.to_csv(folder / "generation_results.csv", index=False)
    return folders


def judge_test_prompts(judge: Any, folders: dict[str, Path], size: int) -> pd.DataFrame:
    """The judge's reading of every image of `generate_test_prompts`, beside what it was asked for."""
    from medsd.evaluate.io import load_image_folder
    from medsd.phantom.prompt_faithfulness import judged_frame

    frames = []
    for kind in KINDS:
        images, _ = load_image_folder(folders[kind], size)
        frames.append(judged_frame(judge, images, pd.read_csv(folders[kind] / "cases.csv")))
    return pd.concat(frames, ignore_index=True)


def inpainting_inputs(folder: Path) -> tuple[Path, Path, str, str]:
    """A held-out healthy image, the mask of a held-out effusion (one-sided and alone if there is one), a
    sentence stating that effusion, and its side."""
    import random

    from medsd.phantom.phrase_bank import phrase_bank
    from medsd.phantom.reports import positive_sentence, specs_from_record

    records = [json.loads(line) for line in (folder / "params.jsonl").read_text().splitlines() if line.strip()]
    frame = pd.read_csv(folder / "train.csv")
    healthy = folder / frame.loc[frame["No Finding"] == 1, "Path"].iloc[0]
    effusions = [(rec, spec) for rec in records for spec in specs_from_record(rec) if spec.name == "Pleural Effusion"]
    if not effusions:
        raise RuntimeError(f"no effusion case in {folder} to take an inpainting mask from")
    rec, spec = min(effusions, key=lambda rs: (len(rs[0]["findings"]), rs[1].side == "bilateral"))
    sentence = positive_sentence(spec, {spec.name}, random.Random(0), phrase_bank(), short=True)
    return healthy, folder / rec["masks"]["Pleural Effusion"], sentence, str(spec.side)


def evaluate(out: Path, data: dict[str, Path], classifier: Path, generated: dict[str, Path], run: Path,
             plan: Any) -> dict[str, Any]:
    """Judge every generated image; FID, diversity and memorization of the label-prompt images (a few prompts,
    many images each, so diversity within a prompt means something)."""
    from medsd.evaluate.io import load_image_folder
    from medsd.evaluate.suite import ReportInputs, build_report
    from medsd.phantom.cross_reading import write_cross_reading
    from medsd.phantom.judge import judge_images, load_reference_classifier
    from medsd.phantom.prompt_faithfulness import faithfulness_report, judged_frame, real_cases

    size, judge = plan.model.size, load_reference_classifier(classifier)
    real_images, _ = load_image_folder(data["heldout"], size)
    real = judged_frame(judge, real_images, real_cases(data["heldout"], list(FINDINGS)))
    judged = pd.concat([judge_test_prompts(judge, generated, size), real], ignore_index=True)
    n_label = int((judged["kind"] == "label").sum())
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    judged.to_csv(report_dir / "judged.csv", index=False)
    faithfulness = faithfulness_report(judged, list(FINDINGS))
    (report_dir / "faithfulness.json").write_text(json.dumps(faithfulness, indent=2))
    crossed = write_cross_reading(judged, list(FINDINGS), report_dir)
    extras = _judge_extras(judge, judge_images, generated, size)
    baseline = real_vs_real_fid(data, classifier, size, plan.n_heldout)
    metrics = build_report(ReportInputs(
        real=data["heldout"], generated=generated["label"], out=report_dir, train=data["train"],
        spaces=["phantom"], phantom_classifier=classifier, size=size, logs=run / "logs",
        title="medsd demo: a text-to-image model trained from scratch on phantom reports",
        notes=[f"Generated set: the label prompts ({n_label} images). Real-vs-real baseline: phantom FID "
               f"between {plan.n_heldout} held-out and training images = {baseline:.2f}.",
               "Finding, side and severity measures of every prompt kind: faithfulness.json beside this report; "
               "which findings the judge reads in images asked for one: cross_reading.png and .json."],
        figures=[(report_dir / "cross_reading.png", "which findings the judge reads in images asked for one "
                  "finding or none (share judged positive; rows: asked, columns: judged)")],
    ))
    write_grid(report_dir / "prompt_grid.png", generated, judged)
    return {
        "faithfulness": faithfulness, "cross_reading": crossed, **extras,
        "fid_phantom": metrics.get("fid", {}).get("phantom", {}).get("fid"), "fid_real_vs_real": baseline,
        "diversity_ms_ssim": metrics.get("diversity", {}).get("ms_ssim_mean"),
        "memorized_share": metrics.get("memorization", {}).get("share_flagged"),
        "grid": str(report_dir / "prompt_grid.png"),
    }


def _judge_extras(judge: Any, judge_images: Any, generated: dict[str, Path], size: int) -> dict[str, Any]:
    """The judge on the interpolation strip (cardiomegaly probability per frame) and the inpaintings."""
    from medsd.evaluate.io import load_image_folder
    from medsd.phantom.judge_heads import side_from_probs

    strip, _ = load_image_folder(generated["interpolation"], size)
    cardio = judge_images(judge, strip)["probs"][:, judge.findings.index("Cardiomegaly")]
    painted, _ = load_image_folder(generated["inpainting"], size)
    read = judge_images(judge, painted)
    effusion = read["probs"][:, judge.findings.index("Pleural Effusion")]
    k = judge.lateral.index("Pleural Effusion")
    asked = json.loads((generated["inpainting"] / "asked.json").read_text())
    sides = side_from_probs(read["side_probs"][:, k, 0], read["side_probs"][:, k, 1], True)
    return {"interpolation_cardiomegaly_p": [round(float(p), 3) for p in cardio],
            "inpainting": {**asked, "effusion_p": [round(float(p), 3) for p in effusion],
                           "side_accuracy": float((sides == asked["side"]).mean())}}


def real_vs_real_fid(data: dict[str, Path], classifier: Path, size: int, n: int) -> float:
    """Phantom-feature FID between the held-out images and as many training images: the floor to compare with."""
    from medsd.evaluate import features as feats
    from medsd.evaluate.fid import fid_from_features
    from medsd.evaluate.io import load_image_folder

    extractor = feats.phantom_extractor(feats.load_phantom_classifier(classifier))
    real, _ = load_image_folder(data["heldout"], size)
    train, _ = load_image_folder(data["train"], size, limit=n)
    return float(fid_from_features(feats.extract_features(extractor, real), feats.extract_features(extractor, train)))


def write_grid(path: Path, generated: dict[str, Path], judged: pd.DataFrame, per_row: int = 8) -> Path:
    """A PNG: the README example and a few report and held-out conditions, one row each, `per_row` images."""
    from PIL import Image, ImageDraw

    rows = [("example", None)] + [(k, c) for k in ("report", "held_out") for c in (
        "Cardiomegaly, severe", "Pleural Effusion, left, severe", "Pleural Effusion, right, severe",
        "Pneumothorax, left, severe", "no finding")]
    cell, head, lines = 96, 16, []
    for kind, condition in rows:
        part = judged[(judged["kind"] == kind) & ((judged["condition"] == condition) if condition else True)]
        files = part["file"].head(per_row).tolist() if "file" in part else []
        if files:
            lines.append((f"{kind}: {part['prompt'].iloc[0] if kind == 'example' else condition}",
                          [generated[kind] / f for f in files]))
    sheet = Image.new("RGB", (per_row * cell, len(lines) * (cell + head)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (caption, files) in enumerate(lines):
        y = r * (cell + head)
        draw.text((4, y + 2), caption, fill="black")
        for c, file in enumerate(files):
            with Image.open(file) as im:
                sheet.paste(im.convert("RGB").resize((cell, cell)), (c * cell, y + head))
    sheet.save(path)
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """The lines printed at the end of the demo: where things are, then the measured tables."""
    lines = ["", "medsd demo finished.",
             f"  model:         {summary['model']}  (a StableDiffusionPipeline folder)",
             f"  report:        {summary['report']}",
             f"  grid:          {summary['grid']}",
             f"  logs:          {summary['tensorboard']}",
             f"  try:           {summary['generate_example']}", ""]
    lines += format_faithfulness(summary["faithfulness"])
    if summary.get("cross_reading", {}).get("report"):
        from medsd.phantom.cross_reading import format_cross_reading

        lines += format_cross_reading(summary["cross_reading"]["report"], list(FINDINGS),
                                      "judged positive, by what a single-finding report prompt asks "
                                      "(report/cross_reading.png has every kind)")
    lines += ["",
              f"  phantom FID (label prompts): {_fmt(summary.get('fid_phantom'))} "
              f"(real vs real: {_fmt(summary.get('fid_real_vs_real'))})",
              f"  diversity:     MS-SSIM {_fmt(summary.get('diversity_ms_ssim'))} (lower is more diverse)",
              f"  memorization:  {_fmt(summary.get('memorized_share'))} of generated images flagged as near-copies",
              f"  interpolation no finding -> Cardiomegaly, judged p: {summary.get('interpolation_cardiomegaly_p')}",
              f"  inpainting '{summary['inpainting']['prompt']}': effusion p {summary['inpainting']['effusion_p']}, "
              f"side accuracy {_fmt(summary['inpainting']['side_accuracy'])}",
              f"  stage seconds: {summary['seconds']}"]
    return "\n".join(lines)


def format_faithfulness(faith: dict[str, Any]) -> list[str]:
    """The judge's tables (AUC, false-positive share, side accuracy, severity Spearman) by prompt kind."""
    kinds = [k for k in ("label", "report", "held_out", "example", "real") if k in faith]
    lines: list[str] = []

    def table(title: str, key: str, findings: list[str], kinds_: list[str]) -> None:
        lines.append(f"  {title}")
        lines.append("    " + f"{'finding':<18}" + "".join(f"{k:>10}" for k in kinds_))
        for name in findings:
            lines.append("    " + f"{name:<18}" + "".join(f"{_fmt(faith[k][name].get(key)):>10}" for k in kinds_))

    table("faithfulness AUC (all prompts of a kind; 'real' = judge on held-out real images)", "auc", FINDINGS, kinds)
    table("standard error of that AUC from the number of images alone (Hanley & McNeil)", "auc_se", FINDINGS, kinds)
    table("AUC, single-finding prompts", "auc_single", FINDINGS, kinds)
    table("AUC, two-finding prompts as positives", "auc_combined", FINDINGS, [k for k in kinds if k != "example"])
    table("share of images NOT asked for the finding that the judge calls positive", "false_positive_share",
          FINDINGS, kinds)
    lateral = [f for f in FINDINGS if f != "Cardiomegaly"]
    sided = [k for k in kinds if k != "label"]
    table("side accuracy (asked side = judged side)", "side_accuracy", lateral, sided)
    lines.append("    " + f"{'all sided images':<18}" + "".join(f"{_fmt(faith[k].get('side_accuracy')):>10}"
                                                          for k in sided))
    table("severity Spearman (asked level or lesion size vs judged)", "severity_spearman", FINDINGS, sided)
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
