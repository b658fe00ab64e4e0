"""The N examples of a new finding: images that show it, reports that name it and nothing held out besides."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from medsd.benchmark.data import example_repeats, render_sets, training_subset, with_rehearsal
from medsd.benchmark.plan import AdaptationPlan
from medsd.errors import MedsdError
from medsd.phantom.report_language import names_any, report_labels

BASE = ["Cardiomegaly", "Consolidation", "Pleural Effusion"]


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    plan = replace(AdaptationPlan.smoke(), n_judge=4, n_heldout=4, n_pool=14, held_out=("Pneumothorax", "Lung Lesion"))
    return render_sets(tmp_path_factory.mktemp("data"), plan, seed=0, rehearsal=6)


def test_pools_hold_only_their_finding(pools: dict[str, Path]) -> None:
    for finding in ("Pneumothorax", "Lung Lesion"):
        frame = pd.read_csv(pools[f"pool_{finding.lower().replace(' ', '_')}"] / "train.csv")
        others = [f for f in ("Cardiomegaly", "Consolidation", "Lung Lesion", "Pneumothorax", "Pleural Effusion")
                  if f != finding]
        assert frame[finding].sum() >= 4 and frame[others].to_numpy().sum() == 0


@pytest.mark.parametrize("finding, other", [("Pneumothorax", "Lung Lesion"), ("Lung Lesion", "Pneumothorax")])
def test_examples_are_nested_show_the_finding_and_never_name_the_other_held_out_one(
        pools: dict[str, Path], finding: str, other: str) -> None:
    pool = pools[f"pool_{finding.lower().replace(' ', '_')}"]
    small, large = training_subset(pool, finding, 2, BASE), training_subset(pool, finding, 4, BASE)
    a, b = pd.read_csv(small.csv), pd.read_csv(large.csv)
    assert len(a) == 2 and len(b) == 4 and list(a["Path"]) == list(b["Path"][:2])
    assert b[finding].eq(1).all()
    assert all(names_any(text, frozenset({finding})) for text in b["Report"])
    assert not any(names_any(text, frozenset({other})) for text in b["Report"])
    assert all((pool / p).is_file() for p in b["Path"])


def test_too_few_examples_is_one_clear_error(pools: dict[str, Path]) -> None:
    with pytest.raises(MedsdError, match="n_pool"):
        training_subset(pools["pool_pneumothorax"], "Pneumothorax", 100, BASE)


def test_rehearsal_adds_base_finding_images_that_never_show_or_name_a_held_out_finding(
        pools: dict[str, Path]) -> None:
    pool = pools["pool_pneumothorax"]
    examples = training_subset(pool, "Pneumothorax", 4, BASE)
    subset = with_rehearsal(examples, pools["rehearsal"], 5)
    assert subset.csv == examples.csv and subset.rehearsal == 5 and len(pd.read_csv(subset.csv)) == 4
    train = pd.read_csv(subset.training_csv)
    assert len(train) == 9 and list(train["Path"][:4]) == list(pd.read_csv(examples.csv)["Path"])
    extra = train.iloc[4:]
    assert all((pool / p).is_file() for p in extra["Path"])  # read from the pool, as data.root
    masks = [m for c in extra.columns if c.startswith("Mask ") for m in extra[c].dropna()]
    assert masks and all((pool / m).is_file() for m in masks)  # and so are their masks
    assert extra[["Pneumothorax", "Lung Lesion"]].to_numpy().sum() == 0
    assert extra[BASE].to_numpy().sum() > 0  # the base findings, which rehearsal is for
    assert not any(names_any(text, frozenset({"Lung Lesion"})) for text in extra["Report"])
    assert not any("Pneumothorax" in report_labels(text) for text in extra["Report"])  # denied at most
    with pytest.raises(MedsdError, match="fewer than"):
        with_rehearsal(examples, pools["rehearsal"], 50)


def test_examples_repeat_to_their_share_of_the_rehearsal_rows(pools: dict[str, Path]) -> None:
    assert [example_repeats(5, 200, s) for s in (None, 1 / 3, 0.5)] == [1, 20, 40]
    assert example_repeats(100, 200, 1 / 3) == 1 and example_repeats(100, 100, 0.1) == 1  # never fewer than once
    examples = training_subset(pools["pool_pneumothorax"], "Pneumothorax", 2, BASE)
    subset = with_rehearsal(examples, pools["rehearsal"], 6, share=0.5)
    train = pd.read_csv(subset.training_csv)
    assert subset.example_repeats == 3 and subset.training_csv.name.endswith("_rehearsal006_x3.csv")
    shown = int(pd.read_csv(examples.csv)["Pneumothorax"].sum())
    assert len(train) == 12 and int(train["Pneumothorax"].sum()) == 3 * shown
    assert list(train["Path"][:6]) == list(pd.read_csv(examples.csv)["Path"]) * 3
    # Once each (the default) is another CSV: both settings can sit in one pool.
    assert with_rehearsal(examples, pools["rehearsal"], 6).training_csv != subset.training_csv


@pytest.mark.parametrize("damage", ["empty csv", "no finding column", "garbled params"])
def test_a_damaged_rendered_set_is_one_clear_error(pools: dict[str, Path], tmp_path: Path, damage: str) -> None:
    pool = tmp_path / "phantom_pool_pneumothorax"
    shutil.copytree(pools["pool_pneumothorax"], pool, ignore=shutil.ignore_patterns("examples_*"))
    if damage == "empty csv":
        (pool / "train.csv").write_text("")
    elif damage == "no finding column":
        pd.read_csv(pool / "train.csv").drop(columns=["Pneumothorax"]).to_csv(pool / "train.csv", index=False)
    else:
        (pool / "params.jsonl").write_text('{"path": "truncated')
    with pytest.raises(MedsdError, match=f"delete {pool} so that the benchmark renders it again"):
        training_subset(pool, "Pneumothorax", 2, BASE)
    assert not list(pool.glob("examples_*"))  # nothing half-written is left to be reused


def test_a_damaged_rehearsal_set_is_one_clear_error(pools: dict[str, Path], tmp_path: Path) -> None:
    rehearsal = tmp_path / "phantom_rehearsal"
    shutil.copytree(pools["rehearsal"], rehearsal)
    (rehearsal / "train.csv").write_bytes(b"Path,Cardiomegaly\n\"unclosed,1\n")
    examples = training_subset(pools["pool_pneumothorax"], "Pneumothorax", 2, BASE)
    with pytest.raises(MedsdError, match="cannot be read"):
        with_rehearsal(examples, rehearsal, 3)
