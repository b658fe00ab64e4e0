"""The adaptation benchmark end to end at smoke sizes: base without the held-out finding, runs, results, report,
resume, and the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from medsd.benchmark.plan import AdaptationPlan
from medsd.benchmark.stages import run_adaptation_benchmark
from medsd.config import load_run_config
from medsd.errors import MedsdError

METHODS = ("ti_v8", "lora_unet_te_r4", "dreambooth_prior", "full_unet_te_rehearsal")
REQUIRED = ("method", "setting", "n_examples", "new_finding_auc", "retained_auc", "fid", "near_copy_rate",
            "train_seconds", "artefact_bytes")


def _plan() -> AdaptationPlan:
    # Both default findings held out, Pneumothorax adapted to: Lung Lesion's runs are another call's.
    return replace(AdaptationPlan.smoke(), adapt=("Pneumothorax",), methods=METHODS)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("adaptation")
    # A relative --out, as users type it: recipes written inside must still find their data.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(out.parent)
        return out, run_adaptation_benchmark(Path(out.name), _plan())


def test_rows_for_the_base_and_every_method(bench: tuple[Path, dict]) -> None:
    out, summary = bench
    rows = json.loads((out / "results.json").read_text())
    assert [r["method_id"] for r in rows] == ["base", *METHODS]
    for row in rows:
        assert all(key in row for key in REQUIRED), row
        assert 0.0 <= row["new_finding_auc"] <= 1.0 and 0.0 <= row["retained_auc"] <= 1.0
        assert row["fid"] >= 0 and row["peak_memory_mb"] > 0
        assert set(row["new_finding_auc_against"]) == {"no finding", *row["retained_auc_per_finding"]}
    runs = rows[1:]
    assert all(r["n_examples"] == 2 and r["steps"] == 2 and r["train_seconds"] > 0 for r in runs)
    assert all(r["artefact_bytes"] > 0 and 0.0 <= r["near_copy_rate"] <= 1.0 for r in runs)
    assert rows[0]["retained_drop"] == 0.0 and rows[0]["near_copy_rate"] is None
    assert {r["method"] for r in runs} == {"textual_inversion", "lora", "dreambooth", "full"}
    rehearsed = next(r for r in runs if r["method_id"] == "full_unet_te_rehearsal")
    assert rehearsed["rehearsal_images"] == _plan().rehearsal_images and runs[0]["rehearsal_images"] == 0
    assert rehearsed["example_repeats"] == 1  # once each unless --example-share
    trained_on = pd.read_csv(load_run_config(rehearsed["recipe"]).data.csv)
    assert len(trained_on) == rehearsed["n_examples"] + _plan().rehearsal_images
    # Each image the judge read is on disk, with the prompt it was asked.
    judged = pd.read_csv(Path(runs[0]["run"]) / "judged.csv")
    assert len(judged) == _plan().images_per_run
    assert all((Path(runs[0]["run"]) / "generated" / f).is_file() for f in judged["file"])
    assert judged["prompt"].str.contains("<pneumothorax>").sum() == 2 * _plan().new_images


def test_the_base_never_saw_the_held_out_finding(bench: tuple[Path, dict]) -> None:
    out, summary = bench
    manifest = json.loads((out / "base" / "data" / "phantom_train" / "phantom.json").read_text())
    assert {"Pneumothorax", "Lung Lesion"}.isdisjoint(manifest["findings"]) and "Cardiomegaly" in manifest["findings"]
    # Only the adapted finding's pool is rendered.
    assert (out / "data" / "phantom_pool_pneumothorax").is_dir()
    assert not (out / "data" / "phantom_pool_lung_lesion").exists()
    assert summary["base_model"] == str(out / "base" / "runs" / "text_to_image" / "pipeline")


def test_every_run_is_a_rerunnable_recipe_without_leftover_checkpoints(bench: tuple[Path, dict]) -> None:
    out, _ = bench
    for method in METHODS:
        cfg = load_run_config(out / "configs" / f"pneumothorax_n002_{method}.yaml")
        assert cfg.training.max_minutes == _plan().run_minutes
        run = Path(cfg.output_dir)
        assert (run / "training_done.json").is_file() and not (run / "checkpoints").exists()
    assert len(list((out / "class_images").glob("*.png"))) == _plan().class_images


def test_report_table_and_verdict(bench: tuple[Path, dict]) -> None:
    out, summary = bench
    page = (out / "report.html").read_text()
    assert page.count("<img") >= 2 + 1 + len(METHODS)  # two plots, base and method grids
    table = (out / "table.md").read_text()
    assert table.startswith("| method | setting | new AUC N=2 |") and "`lora`" in table and "Target" in table
    # 2 label + 2 report images ask for the new finding; 1 + 1 for no finding and each of the 3 base findings
    assert "(4 images asked for it against 8 others)" in table and "Sampling error" in page
    assert "a mean over" not in table  # one finding adapted: no mean over findings to speak of
    assert summary["target"]["met_by"] == [] or set(summary["target"]["met_by"]) <= set(METHODS)
    assert set(summary["seconds"]) >= {"phantom sets", "judge", "base model", "adaptation grid"}


def test_second_call_reuses_every_run_and_other_settings_are_refused(bench: tuple[Path, dict],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import medsd.train.loop

    out, _ = bench
    before = json.loads((out / "results.json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(medsd.train.loop, "train", no_training)
    # A run measured by an older version lacks a judge-derived measure: it is computed from its judged.csv.
    older = Path(before[1]["run"]) / "measures.json"
    row = json.loads(older.read_text())
    del row["new_finding_auc_against"]
    older.write_text(json.dumps(row))
    run_adaptation_benchmark(out, _plan())
    after = json.loads((out / "results.json").read_text())
    assert after == before
    assert "new_finding_auc_against" in json.loads(older.read_text())
    with pytest.raises(MedsdError, match="other settings"):
        run_adaptation_benchmark(out, replace(_plan(), new_images=3))


def test_a_base_and_a_judge_are_reused_from_another_folder(bench: tuple[Path, dict], tmp_path: Path) -> None:
    first, summary = bench
    out = tmp_path / "again"
    again = run_adaptation_benchmark(out, replace(_plan(), methods=()), base=first / "base", judge=first / "judge")
    assert again["base_model"] == summary["base_model"] and again["judge"] == str(first / "judge")
    assert not (out / "data" / "phantom_judge").exists() and not (out / "base").exists()
    rows = json.loads((out / "results.json").read_text())
    assert [r["method_id"] for r in rows] == ["base"]
    # The same base, judge, prompts and seeds: the base's row is measured again to the same numbers.
    first_base = json.loads((first / "results.json").read_text())[0]
    assert rows[0]["new_finding_auc"] == pytest.approx(first_base["new_finding_auc"])
    # The other held-out finding on the same base, in the same folder; one not held out is refused.
    run_adaptation_benchmark(out, replace(_plan(), adapt=("Lung Lesion",), methods=()), base=first / "base",
                             judge=first / "judge")
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method_id"], r["finding"]) for r in rows] == [("base", "Lung Lesion")]
    with pytest.raises(MedsdError, match="--adapt Cardiomegaly: not held out"):
        run_adaptation_benchmark(tmp_path / "refused", replace(_plan(), adapt=("Cardiomegaly",)), base=first / "base")
    assert not (tmp_path / "refused").exists()


def test_adaptation_runs_can_weight_the_loss_inside_the_findings_masks(bench: tuple[Path, dict],
                                                                      tmp_path: Path) -> None:
    first, _ = bench
    out = tmp_path / "masked"
    plan = replace(_plan(), methods=("full_unet_te_rehearsal",), masked_loss_weight=4.0)
    run_adaptation_benchmark(out, plan, base=first / "base", judge=first / "judge")
    rows = json.loads((out / "results.json").read_text())
    assert [r["method_id"] for r in rows] == ["base", "full_unet_te_rehearsal"] and rows[1]["steps"] > 0
    cfg = load_run_config(next((out / "configs").glob("*full_unet_te_rehearsal.yaml")))
    # the heart's region and every finding's mask, the new finding's included
    assert cfg.data.mask_columns == ["Mask Heart", "Mask Consolidation", "Mask Pneumothorax", "Mask Pleural Effusion"]
    assert cfg.training.masked_loss_weight == 4.0
    table = pd.read_csv(cfg.data.csv)
    named = [m for c in cfg.data.mask_columns for m in table[c].dropna()]
    assert named and all((Path(cfg.data.root) / m).is_file() for m in named)
    # the plain-loss runs of the first folder are not mixed with these
    with pytest.raises(MedsdError, match="other settings"):
        run_adaptation_benchmark(first, replace(_plan(), masked_loss_weight=4.0))


def test_cli_rejects_an_unknown_method_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medsd.cli import main

    assert main(["benchmark", "adaptation", "--smoke", "--methods", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "ti_v1" in err[0]


@pytest.mark.parametrize("pair", ["ti_v1=abc", "ti_v1=-1", "=1e-3"])
def test_cli_rejects_a_malformed_learning_rate_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           pair: str) -> None:
    from medsd.cli import main

    assert main(["benchmark", "adaptation", "--smoke", "--learning-rate", pair, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ID=RATE" in err[0]


def test_cli_rehearsal_adapt_and_base_options_reach_the_plan_and_bad_values_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from medsd.benchmark import stages
    from medsd.cli import main

    for option, value in (("--rehearsal-images", "0"), ("--example-share", "1"), ("--example-share", "0"),
                          ("--base-layers-per-block", "0"), ("--masked-loss-weight", "-1")):
        assert main(["benchmark", "adaptation", "--smoke", option, value, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and option in err[0]

    seen = []

    def record(out, plan, **kwargs):
        seen.append(plan)
        (out / "table.md").parent.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text("table")
        return {"table": str(out / "table.md"), "report": "r", "results": "j", "seconds": {}}

    monkeypatch.setattr(stages, "run_adaptation_benchmark", record)
    assert main(["benchmark", "adaptation", "--smoke", "--rehearsal-images", "7", "--example-share", "0.33",
                 "--adapt", "Lung Lesion", "--base-layers-per-block", "1", "--masked-loss-weight", "4",
                 "--out", str(tmp_path)]) == 0
    assert seen[0].rehearsal_images == 7 and seen[0].example_share == 0.33 and seen[0].masked_loss_weight == 4
    assert seen[0].base.unet_config == {"layers_per_block": 1}
    assert seen[0].held_out == ("Pneumothorax", "Lung Lesion") and seen[0].adapted == ("Lung Lesion",)


@pytest.mark.slow
def test_cli_smoke_runs_every_method_for_both_findings(tmp_path: Path) -> None:
    from medsd.cli import main

    assert main(["benchmark", "adaptation", "--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert len(rows) == 2 + 2 * 13
    assert {r["finding"] for r in rows} == {"Pneumothorax", "Lung Lesion"}
    assert all(r["steps"] == 2 for r in rows if r["method"] != "base")
