"""The benchmark's outputs: OUT/results.json (one row per run), OUT/report.html and OUT/table.md.

`table.md` is the README's "which method when" table, written from the measurements: per method, the new
finding's AUC at each N (mean over the held-out findings), how much the base findings lost at the largest N,
near-copies at the smallest N, training steps reached in the budget and the artefact's size; then which methods
meet the target (new-finding AUC >= 0.9 at the largest N with the base findings down by at most 0.05, for every
held-out finding).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TARGET_AUC, TARGET_DROP = 0.9, 0.05
COLUMNS = ["finding", "method_id", "n_examples", "new_finding_auc", "new_finding_auc_se", "new_finding_auc_label",
           "new_finding_auc_report", "new_finding_accuracy", "retained_auc", "retained_drop", "fid",
           "diversity_ms_ssim", "near_copy_rate", "steps", "train_seconds", "generate_seconds", "peak_memory_mb",
           "artefact_bytes"]


def with_drops(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `retained_drop` = the base's retained AUC minus the run's (same finding's prompts and seeds)."""
    base = {r["finding"]: r["retained_auc"] for r in rows if r["method"] == "base"}
    out = []
    for row in rows:
        ref, value = base.get(row["finding"]), row.get("retained_auc")
        drop = None if ref is None or value is None else round(ref - value, 4)
        out.append({**row, "retained_drop": drop})
    return out


def write_results(out: Path, rows: list[dict[str, Any]]) -> Path:
    """OUT/results.json: the list of rows (rewritten after every run)."""
    path = out / "results.json"
    path.write_text(json.dumps(with_drops(rows), indent=1))
    return path


def write_report(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """results.json, table.md and report.html; returns their paths and the target verdict for the summary."""
    rows = with_drops(rows)
    write_results(out, rows)
    verdict = target_verdict(rows)
    (out / "table.md").write_text(markdown_table(rows, summary) + "\n\n" + sampling_error_note(summary) + "\n\n"
                                  + verdict["text"] + "\n")
    (out / "report.html").write_text(html_report(out, rows, summary, verdict))
    return {"results": str(out / "results.json"), "report": str(out / "report.html"), "table": str(out / "table.md"),
            "target": verdict}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def method_order(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for row in rows:
        if row["method_id"] not in seen:
            seen.append(row["method_id"])
    return seen


def by_method(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method id: its rows' means over findings, by N (what the summary table and the plots show)."""
    ns = sorted({r["n_examples"] for r in rows if r["method"] != "base"})
    table: dict[str, dict[str, Any]] = {}
    for mid in method_order(rows):
        mine = [r for r in rows if r["method_id"] == mid]
        entry: dict[str, Any] = {"method": mine[0]["method"], "setting": mine[0]["setting"], "by_n": {}}
        for n in ([0] if mid == "base" else ns):
            at = [r for r in mine if r["n_examples"] == n]
            if at:
                entry["by_n"][n] = {key: _mean([r.get(key) for r in at]) for key in (
                    "new_finding_auc", "retained_auc", "retained_drop", "fid", "near_copy_rate", "steps",
                    "train_seconds", "artefact_bytes", "diversity_ms_ssim", "peak_memory_mb")}
        table[mid] = entry
    return table


def target_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which methods reach new-finding AUC >= 0.9 with the base findings down <= 0.05, at the largest N, for every
    held-out finding; and what the smallest N gives them."""
    runs = [r for r in rows if r["method"] != "base"]
    if not runs:
        return {"met_by": [], "text": "No adaptation runs yet."}
    n_max, n_min = max(r["n_examples"] for r in runs), min(r["n_examples"] for r in runs)
    findings = sorted({r["finding"] for r in runs})

    def meets(r: dict[str, Any]) -> bool:
        return (r["new_finding_auc"] or 0) >= TARGET_AUC and r["retained_drop"] is not None and \
            r["retained_drop"] <= TARGET_DROP

    met = []
    for mid in method_order(runs):
        at = [r for r in runs if r["method_id"] == mid and r["n_examples"] == n_max]
        if len(at) == len(findings) and all(meets(r) for r in at):
            met.append(mid)
    per_finding = {f: [r["method_id"] for r in runs if r["finding"] == f and r["n_examples"] == n_max and meets(r)]
                   for f in findings}
    best = max((r for r in runs if r["n_examples"] == n_max), key=lambda r: r["new_finding_auc"] or 0)
    lines = [f"Target (new-finding AUC >= {TARGET_AUC} at N = {n_max} with the base findings down by at most "
             f"{TARGET_DROP} AUC, for {' and '.join(findings)}): "
             + (f"met by {', '.join(met)}." if met else "met by no method in this run.")]
    if len(findings) > 1 and not met:
        lines.append("Per finding: " + "; ".join(
            f"{f}: " + (f"met by {', '.join(ids)}" if ids else "by none") for f, ids in per_finding.items()) + ".")
    for mid in met or [best["method_id"]]:
        small = {r["finding"]: r["new_finding_auc"] for r in runs if r["method_id"] == mid and r["n_examples"] == n_min}
        big = {r["finding"]: (r["new_finding_auc"], r["retained_drop"]) for r in runs
               if r["method_id"] == mid and r["n_examples"] == n_max}
        at_small = f"; at N = {n_min} " + "; ".join(f"{f} AUC {_f(a)}" for f, a in small.items()) \
            if n_min != n_max else ""
        lines.append(f"- {mid}: at N = {n_max} " + "; ".join(
            f"{f} AUC {_f(a)} (base findings {_signed(None if d is None else 0.0 - d)})" for f, (a, d) in big.items())
            + at_small + ".")
    return {"met_by": met, "met_by_finding": per_finding, "n_max": n_max, "n_min": n_min, "text": "\n".join(lines)}


def sampling_error_note(summary: dict[str, Any]) -> str:
    """How much of a new-finding AUC is the draw of the images: its standard error at the plan's image counts."""
    from medsd.evaluate.faithfulness import auc_standard_error

    asked, others = summary.get("new_finding_images"), summary.get("other_images")
    if not asked or not others:
        return ""
    low, high = auc_standard_error(0.7, asked, others), auc_standard_error(0.95, asked, others)
    plan = summary.get("plan") or {}
    k = max(len(plan.get("adapt") or plan.get("held_out") or []), 1)  # the findings this call adapted to
    return (f"Sampling error: a run's new-finding AUC ({asked} images asked for it against {others} others) has a "
            f"standard error of {low:.2f} near 0.7 and {high:.2f} near 0.95 from the draw of the images alone "
            f"(Hanley & McNeil; `new_finding_auc_se` per run)"
            + (f"; a mean over {k} findings, {low / k ** 0.5:.2f} near 0.7" if k > 1 else "")
            + f". Means that differ by less than about {1.96 * (2 / k) ** 0.5 * low:.2f} near 0.7 are within "
            "sampling error of each other (every run draws with the same prompts and seeds, which makes differences "
            "somewhat steadier than independent draws would).")


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _size(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "–"


def markdown_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The README's table: one line per method, numbers averaged over the held-out findings."""
    table = by_method(rows)
    ns = sorted({r["n_examples"] for r in rows if r["method"] != "base"})
    if not ns:
        return "No adaptation runs yet."
    n_min, n_max = ns[0], ns[-1]
    head = ["method", "setting"] + [f"new AUC N={n}" for n in ns] + [
        f"base findings Δ AUC N={n_max}", f"near-copies N={n_min}", f"FID N={n_max}", "steps in budget",
        "artefact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mid, entry in table.items():
        if mid == "base":
            b = entry["by_n"][0]
            cells = ["base (never saw them)", "—"] + [_f(b["new_finding_auc"])] * len(ns) + [
                f"retained AUC {_f(b['retained_auc'])}", "—", _f(b["fid"], 1), "—", "—"]
        else:
            at = entry["by_n"]
            drop = at.get(n_max, {}).get("retained_drop")
            aucs = [_f(at.get(n, {}).get("new_finding_auc")) for n in ns]
            cells = [f"`{entry['method']}`", entry["setting"], *aucs] + [
                _signed(None if drop is None else 0.0 - drop), _f(at.get(n_min, {}).get("near_copy_rate")),
                _f(at.get(n_max, {}).get("fid"), 1), _steps(at), _size(at.get(n_max, {}).get("artefact_bytes"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _loads(values: list[float] | None) -> str:
    return ", ".join(f"{v:.1f}" for v in values) if values else "–"


def _steps(at: dict[int, dict[str, Any]]) -> str:
    steps = [v["steps"] for v in at.values() if v.get("steps") is not None]
    return f"{min(steps):.0f}–{max(steps):.0f}" if steps else "–"


def confusion_table(rows: list[dict[str, Any]]) -> str:
    """Per run, the new finding's AUC against each base condition's images alone: a low cell is a condition the
    judge reads as the new finding (in the base's images too, if the base row shows it)."""
    from medsd.evaluate.report import table

    runs = [r for r in rows if r.get("new_finding_auc_against")]
    if not runs:
        return "<p>Not measured for these runs (measured by this version's runs).</p>"
    conditions = list(dict.fromkeys(c for r in runs for c in r["new_finding_auc_against"]))
    return table(["finding", "method", "N", *conditions],
                 [[r["finding"], r["method_id"], r["n_examples"],
                   *[_f(r["new_finding_auc_against"].get(c)) for c in conditions]] for r in runs])


def html_report(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any], verdict: dict[str, Any]) -> str:
    """The single-file report: notes, the summary and full tables, plots, and image grids per method."""
    import html

    from medsd.benchmark.report_figures import auc_against_n, image_grids, retained_against_new
    from medsd.evaluate.report import render_html, section, table

    plan = summary.get("plan", {})
    budget = f"{plan.get('run_minutes')} min of training (training.max_minutes)" if plan.get("run_minutes") else \
        f"{plan.get('max_steps')} training steps"
    notes = [f"Every run: {budget}, then "
             f"{summary.get('images_per_run')} images generated with "
             f"{plan.get('sample_steps')} DDIM steps at guidance {plan.get('guidance')}, judged by the phantom judge. "
             f"Load average (1, 5, 15 min) at the end: {_loads(summary.get('load_average'))}; torch threads: "
             f"{summary.get('torch_threads')}.",
             f"Stage seconds: {summary.get('seconds')}."]
    full = [[r.get(c) if c != "artefact_bytes" else _size(r.get(c)) for c in COLUMNS] for r in rows]
    markdown = markdown_table(rows, summary)
    summary_rows = [line.strip("|").split(" | ") for line in markdown.splitlines()[2:]]
    head = [h.strip() for h in markdown.splitlines()[0].strip("|").split(" | ")]
    sections = [
        section("Which method when (means over the held-out findings)",
                table(head, [[c.strip().strip("`") for c in r] for r in summary_rows])
                + f"<p>{html.escape(sampling_error_note(summary))}</p>"
                + f"<p>{html.escape(verdict['text']).replace(chr(10), '<br>')}</p>"),
        section("Plots", auc_against_n(rows) + retained_against_new(rows)),
        section("What the new finding is confused with: its AUC against each base condition alone",
                confusion_table(rows)),
        section("Every run", table(COLUMNS, full)),
        section("Images at the largest N: new finding asked by label, then by report; base conditions by label",
                image_grids(rows)),
        section("Judge on real held-out images (the ceiling)", table(
            ["finding", "AUC", "side accuracy"],
            [[k, v.get("auc"), v.get("side_accuracy")] for k, v in summary.get("judge_on_real_images", {}).items()
             if isinstance(v, dict)])),
    ]
    return render_html("medsd benchmark adaptation: which method teaches a pretrained model a new finding?",
                       sections, notes)
