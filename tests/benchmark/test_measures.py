"""What every adapted model is asked, and how the judge's probabilities become the benchmark's numbers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medsd.benchmark.measures import NEW, asked_frame, evaluation_cases, faithfulness
from medsd.phantom.report_language import names_any

BASE = ["Cardiomegaly", "Consolidation", "Pleural Effusion"]
PLAN = SimpleNamespace(new_images=4, base_images=2)


def test_cases_ask_the_new_finding_first_then_every_base_condition_in_both_forms() -> None:
    cases = evaluation_cases("Pneumothorax", BASE, PLAN)
    assert len(cases) == 2 * 4 + 2 * 2 * 4
    new, base = cases[:8], cases[8:]
    assert all(c.condition == NEW and [s.name for s in c.specs] == ["Pneumothorax"] for c in new)
    assert [c.kind for c in new] == ["label"] * 4 + ["report"] * 4
    assert new[0].prompt == "A chest X-ray with Pneumothorax"
    assert all(names_any(c.prompt, frozenset({"Pneumothorax"})) for c in new[4:])
    # The base conditions never name the new finding (nor the other held-out one): the base's own vocabulary.
    assert not any(names_any(c.prompt, frozenset({"Pneumothorax", "Lung Lesion"})) for c in base)
    assert {c.condition for c in base} == {"no finding", *BASE}
    assert sum(c.kind == "report" for c in base) == 8


def test_textual_inversion_is_asked_with_its_token_and_the_same_base_prompts() -> None:
    words = evaluation_cases("Lung Lesion", BASE, PLAN)
    token = evaluation_cases("Lung Lesion", BASE, PLAN, trigger="<lung_lesion>")
    assert [c.prompt for c in token[:8]] == ["A chest X-ray with <lung_lesion>"] * 8
    # Same prompts at the same indices (hence seeds) for everything that is not the new finding.
    assert [c.prompt for c in token[8:]] == [c.prompt for c in words[8:]]
    assert evaluation_cases("Lung Lesion", BASE, PLAN)[4].prompt == words[4].prompt  # deterministic


def _judged(finding: str, trigger: str | None = None, new_p: float = 0.9, swap: int = 0):
    cases = evaluation_cases(finding, BASE, PLAN, trigger=trigger)
    frame = asked_frame(cases)
    frame[f"{finding}|p"] = np.where(frame["condition"] == NEW, new_p, 0.1)
    for name in BASE:
        frame[f"{name}|p"] = np.where(frame[name] == 1, 0.8, 0.2)
    if swap:  # the first `swap` Cardiomegaly images lose it, as many normal ones gain it
        asked = frame.index[frame["Cardiomegaly"] == 1][:swap]
        normal = frame.index[frame["condition"] == "no finding"][:swap]
        frame.loc[asked, "Cardiomegaly|p"], frame.loc[normal, "Cardiomegaly|p"] = 0.2, 0.8
    return frame


def test_perfect_answers_score_one_and_forgetting_lowers_retained() -> None:
    perfect = faithfulness(_judged("Pneumothorax"), "Pneumothorax", BASE)
    assert perfect["new_finding_auc"] == perfect["new_finding_auc_label"] == perfect["new_finding_auc_report"] == 1.0
    assert perfect["new_finding_accuracy"] == 1.0 and perfect["new_finding_false_positive"] == 0.0
    assert perfect["retained_auc"] == 1.0 and set(perfect["retained_auc_per_finding"]) == set(BASE)
    assert perfect["new_finding_auc_se"] == 0.0  # every pair ranked right: no room to move

    unlearned = faithfulness(_judged("Pneumothorax", new_p=0.1), "Pneumothorax", BASE)
    assert unlearned["new_finding_auc"] == 0.5 and unlearned["new_finding_detected"] == 0.0
    assert unlearned["new_finding_accuracy"] == pytest.approx(16 / 24)
    assert 0.05 < unlearned["new_finding_auc_se"] < 0.15  # 24 images asked against 24 others, at chance

    forgot = faithfulness(_judged("Pneumothorax", swap=2), "Pneumothorax", BASE)
    # 4 Cardiomegaly images (two at 0.8, two at 0.2) against 12 others (two at 0.8, ten at 0.2): of 48 pairs,
    # 20 ranked right, 4 + 20 tied (half each): AUC 32 / 48.
    assert forgot["retained_auc_per_finding"]["Cardiomegaly"] == pytest.approx(32 / 48)
    assert forgot["retained_auc"] == pytest.approx((2 + 32 / 48) / 3)


def test_token_prompts_have_no_report_auc() -> None:
    measures = faithfulness(_judged("Lung Lesion", trigger="<lung_lesion>"), "Lung Lesion", BASE)
    assert measures["new_finding_auc"] == 1.0 and measures["new_finding_auc_report"] is None


def test_auc_against_each_base_condition_names_what_the_new_finding_is_confused_with() -> None:
    judged = _judged("Lung Lesion")
    consolidation = judged["condition"] == "Consolidation"
    judged.loc[consolidation, "Lung Lesion|p"] = 0.95  # the base's consolidation reads as a lesion
    measures = faithfulness(judged, "Lung Lesion", BASE)
    against = measures["new_finding_auc_against"]
    assert set(against) == {"no finding", *BASE}
    assert against["Consolidation"] == 0.0
    assert against["no finding"] == against["Cardiomegaly"] == against["Pleural Effusion"] == 1.0
    # 4 negatives of 16 rank above every positive: the overall AUC is capped at 12 / 16.
    assert measures["new_finding_auc"] == pytest.approx(12 / 16)


def test_a_finished_run_gains_new_measures_from_its_judged_answers_and_a_damaged_file_loses_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medsd.benchmark.runs import read_back

    run = tmp_path / "run"
    run.mkdir()
    done = run / "measures.json"
    older = {"new_finding_auc": 1.0, "steps": 7}  # written before new_finding_auc_against existed
    done.write_text(json.dumps(older))
    _judged("Lung Lesion").to_csv(run / "judged.csv", index=False)
    row = read_back(done, "Lung Lesion", BASE)
    assert row["steps"] == 7 and row["new_finding_auc_against"]["Consolidation"] == 1.0
    assert json.loads(done.read_text()) == row  # stored, so the next reuse reads it back

    done.write_text(json.dumps(older))
    (run / "judged.csv").write_bytes(b"prompt,kind\n\"unclosed,1\n")
    with caplog.at_level(logging.WARNING):
        assert read_back(done, "Lung Lesion", BASE) == older
    assert "judged.csv cannot be read" in caplog.text and json.loads(done.read_text()) == older
