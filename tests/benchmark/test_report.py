"""The benchmark's tables: forgetting against the base, the README table, and the target verdict."""

from __future__ import annotations

from pathlib import Path

from medsd.benchmark.report import markdown_table, target_verdict, with_drops, write_report


def _row(method_id: str, finding: str, n: int, new: float, retained: float, family: str = "lora") -> dict:
    return {"method": "base" if method_id == "base" else family, "setting": method_id, "method_id": method_id,
            "finding": finding, "n_examples": n, "new_finding_auc": new, "retained_auc": retained, "fid": 100.0,
            "near_copy_rate": 0.1 if n == 5 else 0.0, "steps": 200, "train_seconds": 40.0,
            "artefact_bytes": 2048, "diversity_ms_ssim": 0.6, "peak_memory_mb": 1200.0, "run": "/nowhere"}


ROWS = [_row("base", f, 0, 0.5, 0.95) for f in ("Pneumothorax", "Lung Lesion")] + [
    _row(m, f, n, new, retained)
    for f in ("Pneumothorax", "Lung Lesion")
    for m, by_n in {"good": {5: (0.7, 0.94), 100: (0.95, 0.93)}, "forgets": {5: (0.8, 0.8), 100: (0.99, 0.7)}}.items()
    for n, (new, retained) in by_n.items()
]


def test_drops_are_measured_against_the_base_of_the_same_finding() -> None:
    rows = with_drops(ROWS)
    assert {r["retained_drop"] for r in rows if r["method"] == "base"} == {0.0}
    good = [r for r in rows if r["method_id"] == "good" and r["n_examples"] == 100]
    assert [r["retained_drop"] for r in good] == [0.02, 0.02]


def test_target_is_met_only_by_a_method_that_learns_without_forgetting() -> None:
    verdict = target_verdict(with_drops(ROWS))
    assert verdict["met_by"] == ["good"] and verdict["n_max"] == 100 and verdict["n_min"] == 5
    assert "met by good" in verdict["text"] and "at N = 5 Pneumothorax AUC 0.70" in verdict["text"]
    worse = [dict(r, retained_auc=0.85) if r["method_id"] == "good" else r for r in ROWS]
    assert target_verdict(with_drops(worse))["met_by"] == []
    # Met for one finding only: the overall verdict is no, and the per-finding line says where it was met.
    half = [dict(r, new_finding_auc=0.8) if r["method_id"] == "good" and r["finding"] == "Lung Lesion" else r
            for r in ROWS]
    verdict = target_verdict(with_drops(half))
    assert verdict["met_by"] == [] and verdict["met_by_finding"] == {"Lung Lesion": [], "Pneumothorax": ["good"]}
    assert "Per finding: Lung Lesion: by none; Pneumothorax: met by good." in verdict["text"]


def test_markdown_table_has_a_line_per_method_and_the_means_over_findings(tmp_path: Path) -> None:
    table = markdown_table(with_drops(ROWS), {})
    lines = table.splitlines()
    assert lines[0].startswith("| method | setting | new AUC N=5 | new AUC N=100 | base findings Δ AUC N=100 |")
    assert len(lines) == 2 + 3 and lines[2].startswith("| base (never saw them)")
    assert "| `lora` | forgets | 0.80 | 0.99 | -0.250 | 0.10 |" in table
    plan = {"run_minutes": 0.5, "held_out": ["Pneumothorax", "Lung Lesion"]}
    paths = write_report(tmp_path, ROWS, {"plan": plan, "images_per_run": 48, "new_finding_images": 24,
                                          "other_images": 24})
    written = Path(paths["table"]).read_text()
    assert written.startswith(lines[0])
    assert "(24 images asked for it against 24 others) has a standard error of 0.08 near 0.7 and 0.03 near 0.95" \
        in written
    assert "<table>" in Path(paths["report"]).read_text() and paths["target"]["met_by"] == ["good"]


def test_report_shows_what_each_new_finding_is_confused_with(tmp_path: Path) -> None:
    against = {"no finding": 0.97, "Cardiomegaly": 0.95, "Consolidation": 0.31}
    rows = [dict(r, new_finding_auc_against=against) if r["finding"] == "Lung Lesion" else r for r in ROWS]
    report = Path(write_report(tmp_path, rows, {})["report"]).read_text()
    section = report.split("What the new finding is confused with")[1].split("</table>")[0]
    assert "<th>Consolidation</th>" in section and section.count("<td>0.31</td>") == 5  # base, two methods at two N
    assert "Pneumothorax" not in section  # runs measured before the per-condition AUC are left out
    before = Path(write_report(tmp_path, ROWS, {})["report"]).read_text()
    assert "Not measured for these runs" in before


def test_sampling_error_note_speaks_of_a_mean_only_over_several_adapted_findings() -> None:
    from medsd.benchmark.report import sampling_error_note

    both = {"new_finding_images": 24, "other_images": 24,
            "plan": {"held_out": ["Pneumothorax", "Lung Lesion"], "adapt": None}}
    assert "a mean over 2 findings, 0.05 near 0.7" in sampling_error_note(both)
    one = {**both, "plan": {**both["plan"], "adapt": ["Lung Lesion"]}}
    note = sampling_error_note(one)
    assert "a mean over" not in note and "standard error of 0.08 near 0.7" in note
