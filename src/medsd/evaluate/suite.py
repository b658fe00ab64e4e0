"""Run every measure that the given inputs allow and write ``metrics.json`` + ``report.html``.

Measures whose inputs are missing are skipped with a note in the report (for example FID-Inception without
``--inception-weights``); a feature space the user names explicitly must work, or the run fails clearly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medsd.errors import MedsdError
from medsd.evaluate import features as feats
from medsd.evaluate import report as rpt
from medsd.evaluate.channels import channel_statistics, split_channels
from medsd.evaluate.diversity import ms_ssim_diversity
from medsd.evaluate.faithfulness import evaluate_faithfulness
from medsd.evaluate.fid import compare_features
from medsd.evaluate.io import labels_for, load_image_folder, prompt_groups
from medsd.evaluate.privacy import memorization
from medsd.files import read_text

log = logging.getLogger(__name__)


@dataclass
class ReportInputs:
    """What a report is built from; only ``real`` and ``generated`` are required."""

    real: Path
    generated: Path
    out: Path
    train: Path | None = None
    spaces: list[str] | None = None  # None: every space whose weights are available
    phantom_classifier: Path | torch.nn.Module | None = None  # folder, or a loaded classifier
    inception_weights: Path | None = None
    xrv_weights: Path | None = None
    size: int = 64
    channels: int | None = None  # 1 grey, 3 colour; None: colour when the real set is
    channel_names: list[str] | None = None  # e.g. T2W, ADC, DWI for packed MRI; None: R, G, B
    limit: int | None = None
    logs: Path | None = None
    augmentation_json: Path | None = None
    reader_study_json: Path | None = None
    cosine_threshold: float = 0.98
    ssim_threshold: float = 0.9
    title: str = "medsd evaluation report"
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (PNG, caption) shown in their own section


def _available_spaces(inputs: ReportInputs) -> list[str]:
    if inputs.spaces:
        return list(inputs.spaces)
    spaces = []
    for space, source in (("phantom", inputs.phantom_classifier), ("inception", inputs.inception_weights),
                          ("xrv", inputs.xrv_weights)):
        if source is not None:
            spaces.append(space)
        elif space != "phantom":
            inputs.notes.append(f"FID-{space} skipped: pass --{space}-weights FILE to compute it offline.")
    return spaces


def _scorer(inputs: ReportInputs, phantom_model) -> feats.Scorer | None:
    if phantom_model is not None:
        return feats.phantom_scorer(phantom_model)
    if inputs.xrv_weights is not None:
        return feats.xrv_scorer(inputs.xrv_weights)
    inputs.notes.append("Label faithfulness skipped: pass --phantom-classifier DIR or --xrv-weights FILE.")
    return None


def compute_metrics(inputs: ReportInputs) -> tuple[dict, dict]:
    """All measures as a JSON-ready dict, plus the tensors the report pictures need."""
    real, real_frame = load_image_folder(inputs.real, inputs.size, inputs.limit, inputs.channels)
    channels = real.shape[1]  # the real set defines the modality: generated images are judged in its channels
    gen, gen_frame = load_image_folder(inputs.generated, inputs.size, inputs.limit, channels)
    metrics: dict = {"sets": {"real": str(inputs.real), "generated": str(inputs.generated), "n_real": len(real),
                              "n_generated": len(gen), "image_size": inputs.size,
                              "channels": channels}, "fid": {}}
    for name, frame, root in (("real", real_frame, inputs.real), ("generated", gen_frame, inputs.generated)):
        skipped = frame.attrs.get("skipped", [])
        metrics["sets"][f"skipped_{name}"] = [{"file": f, "reason": r} for f, r in skipped]
        if skipped:
            inputs.notes.append(f"{len(skipped)} unreadable image(s) in {root} were skipped: "
                                + ", ".join(f for f, _ in skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    phantom_model = inputs.phantom_classifier
    if phantom_model is not None and not isinstance(phantom_model, torch.nn.Module):
        phantom_model = feats.load_phantom_classifier(phantom_model)
    extractors = {}
    for space in _available_spaces(inputs):
        source = phantom_model if space == "phantom" else None
        extractors[space] = feats.make_extractor(space, source, inputs.inception_weights, inputs.xrv_weights)
        real_f = feats.extract_features(extractors[space], real)
        gen_f = feats.extract_features(extractors[space], gen)
        metrics["fid"][space] = compare_features(real_f, gen_f, kid_subset=1000)
    if channels > 1:
        metrics["channels"] = channel_statistics(real, gen, inputs.channel_names, extractors)
    groups = prompt_groups(gen_frame)
    if any(len(v) > 1 for v in groups.values()):
        metrics["diversity"] = ms_ssim_diversity(gen, groups)
    scorer = _scorer(inputs, phantom_model)
    if scorer is not None:
        metrics["faithfulness"] = {}
        for name, images, frame in (("generated", gen, gen_frame), ("real", real, real_frame)):
            labels = labels_for(frame, scorer.findings)
            if not np.isnan(labels).all():
                metrics["faithfulness"][name] = evaluate_faithfulness(scorer, images, labels)
    pictures = {"real": real, "generated": gen, "frame": gen_frame, "groups": groups}
    if inputs.train is not None:
        train, _ = load_image_folder(inputs.train, inputs.size, channels=channels)
        extractor = next(iter(extractors.values()), None)
        metrics["memorization"] = memorization(gen, train, extractor, inputs.cosine_threshold, inputs.ssim_threshold)
        pictures["train"] = train
    for key, path in (("augmentation", inputs.augmentation_json), ("reader_study", inputs.reader_study_json)):
        if path is not None:
            option = "--augmentation" if key == "augmentation" else "--reader-study"
            try:
                metrics[key] = json.loads(read_text(path, f"{option} JSON"))
            except json.JSONDecodeError as err:
                raise MedsdError(f"{option} {path} is not valid JSON ({err}); pass the JSON file that "
                                 "`medsd evaluate augment` or `reader-study --answers` wrote") from None
            needed = ("findings", "conditions") if key == "augmentation" else ("accuracy",)
            if not isinstance(metrics[key], dict) or any(k not in metrics[key] for k in needed):
                raise MedsdError(f"{option} {path} lacks {', '.join(needed)}; pass the JSON file that "
                                 "`medsd evaluate augment` or `reader-study --answers` wrote")
    metrics["notes"] = inputs.notes
    return metrics, pictures


def _fid_section(metrics: dict) -> str:
    keys = ["fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"]
    rows = [[space] + [values.get(k) for k in keys] for space, values in metrics["fid"].items()]
    if not rows:
        return ""
    return rpt.section("Fidelity: FID, KID, precision / recall / density / coverage",
                       rpt.table(["feature space"] + keys, rows)
                       + '<p class="note">Lower FID/KID is closer to the real set; PRDC near 1 is better.</p>')


def _grid_section(pictures: dict, per_prompt: int = 8, max_prompts: int = 8) -> str:
    real = pictures["real"][:per_prompt]
    parts = [rpt.figure(rpt.grid_image(real, ncols=4), f"real images ({len(real)})")]
    for prompt, indices in list(pictures["groups"].items())[:max_prompts]:
        images = pictures["generated"][indices[:per_prompt]]
        parts.append(rpt.figure(rpt.grid_image(images, ncols=4), f"generated: {prompt}"))
    return rpt.section("Real vs synthetic", '<div class="grid">' + "".join(parts) + "</div>")


def _channel_section(metrics: dict, pictures: dict, shown: int = 4) -> str:
    if "channels" not in metrics:
        return ""
    stats = metrics["channels"]
    spaces = sorted({s for entry in stats["per_channel"].values() for s in entry["fid"]})
    rows = [[name, _pm(e["real_mean"], e["real_std"]), _pm(e["generated_mean"], e["generated_std"]), e["wasserstein"]]
            + [e["fid"][s] for s in spaces] for name, e in stats["per_channel"].items()]
    table = rpt.table(["channel", "real mean ± std", "generated mean ± std", "Wasserstein-1"]
                      + [f"FID-{s}" for s in spaces], rows)
    parts = [rpt.figure(rpt.grid_image(split_channels(pictures[key][:shown]), ncols=shown),
                        f"{key}: one row per channel ({', '.join(stats['names'])})") for key in ("real", "generated")]
    return rpt.section("Channels (each channel of the packed images on its own)",
                       table + '<div class="grid">' + "".join(parts) + "</div>")


def _faithfulness_section(metrics: dict) -> str:
    if not metrics.get("faithfulness"):
        return ""
    body = ""
    for name, result in metrics["faithfulness"].items():
        rows = [[f, m["n"], m["positives"], m["auc"], m["accuracy"], m["tp"], m["fp"], m["tn"], m["fn"]]
                for f, m in result["per_finding"].items() if m["n"]]
        body += (f"<h3>{name} images — {result['classifier']}: mean AUC {rpt._fmt(result['mean_auc'])}, "
                 f"mean accuracy {rpt._fmt(result['mean_accuracy'])}</h3>")
        body += rpt.table(["finding", "n", "positives", "AUC", "accuracy", "TP", "FP", "TN", "FN"], rows)
    return rpt.section("Label faithfulness", body)


def _diversity_section(metrics: dict) -> str:
    if "diversity" not in metrics:
        return ""
    d = metrics["diversity"]
    rows = [[p, v] for p, v in d["per_prompt"].items()]
    return rpt.section("Diversity (MS-SSIM within a prompt; lower is more diverse)",
                       rpt.table(["prompt", "MS-SSIM"], rows + [["mean", d["ms_ssim_mean"]]])
                       + f'<p class="note">{d["scales"]} scales, window {d["kernel_size"]} px.</p>')


def _memorization_section(metrics: dict, pictures: dict) -> str:
    if "memorization" not in metrics:
        return ""
    m = metrics["memorization"]
    rows = [["share flagged", m["share_flagged"]], ["flagged images", m["n_flagged"]],
            [f"share cosine ≥ {m['cosine_threshold']:.4f} ({m['feature_space']})", m["share_cosine_above"]],
            [f"share SSIM ≥ {m['ssim_threshold']}", m["share_ssim_above"]],
            ["yardstick: training images' nearest-other cosine, 99th pct", m["train_nn_cosine_p99"]]]
    pairs = m["closest_pairs"]
    left = torch.stack([pictures["generated"][g] for g, _, _ in pairs])
    right = torch.stack([pictures["train"][t] for _, t, _ in pairs])
    captions = [f"gen {g} / train {t}: SSIM {s:.3f}" + (" FLAGGED" if m["flagged"][g] else "") for g, t, s in pairs]
    image = rpt.pairs_image(left, right, captions)
    return rpt.section("Memorization: nearest training images",
                       rpt.table(["measure", "value"], rows)
                       + rpt.figure(image, "closest pairs (left generated, right nearest training image by SSIM)"))


def _pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _augmentation_section(metrics: dict) -> str:
    if "augmentation" not in metrics:
        return ""
    a = metrics["augmentation"]
    findings = a["findings"]
    rows = []
    for r in a["conditions"]:
        cells = [_pm(r["auc_mean"][f], r["auc_std"][f]) for f in findings]
        mean = _pm(r["mean_auc"], r["mean_auc_std"])
        rows.append([r["name"], r["n_real"], r["n_synthetic"]] + cells + [mean])
    body = rpt.table(["condition", "real", "synthetic"] + findings + ["mean"], rows)
    plot = rpt.auc_ratio_plot(a)
    if plot is not None:
        body += rpt.figure(plot, "test AUC vs synthetic share (mean ± std over runs)")
    return rpt.section("Augmentation experiment (test AUC, mean ± std)", body)


def _other_sections(metrics: dict, inputs: ReportInputs) -> str:
    out = ""
    if inputs.logs is not None:
        plot = rpt.loss_plot(inputs.logs)
        out += rpt.section("Training", rpt.figure(plot, "train/loss from TensorBoard logs") if plot
                           else f'<p class="note">No train/loss scalars in {inputs.logs}.</p>')
    if "reader_study" in metrics:
        r = metrics["reader_study"]
        rows = [[k, v] for k, v in r.items() if not isinstance(v, dict)] + list(r.get("confusion", {}).items())
        out += rpt.section("Reader study", rpt.table(["measure", "value"], [list(x) for x in rows]))
    if inputs.figures:
        from PIL import Image

        shown = []
        for path, caption in inputs.figures:
            with Image.open(path) as image:
                shown.append(rpt.figure(image.convert("RGB"), caption))
        out += rpt.section("Figures", "".join(shown))
    return out


def build_report(inputs: ReportInputs) -> dict:
    """Compute the metrics, write ``metrics.json`` and ``report.html`` under ``inputs.out``; return metrics."""
    metrics, pictures = compute_metrics(inputs)
    out = Path(inputs.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    sections = [_fid_section(metrics), _grid_section(pictures), _channel_section(metrics, pictures),
                _faithfulness_section(metrics),
                _diversity_section(metrics), _memorization_section(metrics, pictures),
                _augmentation_section(metrics), _other_sections(metrics, inputs)]
    (out / "report.html").write_text(rpt.render_html(inputs.title, [s for s in sections if s], metrics["notes"]))
    log.info("wrote %s and %s", out / "metrics.json", out / "report.html")
    return metrics
