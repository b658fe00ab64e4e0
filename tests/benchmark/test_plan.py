"""The benchmark's plan: grid sizes, image counts, the base's budget, and a base that saw the findings refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from medsd.benchmark.methods import METHODS
from medsd.benchmark.plan import QUICK_METHODS, AdaptationPlan
from medsd.benchmark.stages import check_base, run_adaptation_benchmark
from medsd.errors import MedsdError


def test_default_grid_quick_grid_and_images_per_run() -> None:
    plan = AdaptationPlan()
    assert plan.n_examples == (5, 25, 100) and plan.held_out == ("Pneumothorax", "Lung Lesion")
    assert plan.base_findings == ["Cardiomegaly", "Consolidation", "Pleural Effusion"]
    assert len(METHODS) * len(plan.n_examples) * len(plan.held_out) == 78
    # 12 + 12 new-finding images, 3 + 3 for each of no finding and the three base findings.
    assert plan.images_per_run == 48 and plan.new_finding_images == plan.other_images == 24
    assert replace(plan, held_out=("Pneumothorax",)).images_per_run == 24 + 6 * 5
    quick = AdaptationPlan.quick()
    assert quick.n_examples == (100,) and quick.methods == QUICK_METHODS and set(QUICK_METHODS) <= set(METHODS)
    assert {METHODS[m].family for m in QUICK_METHODS} == {s.family for s in METHODS.values()}
    # The base keeps the U-Net and the loss its measured table was made with, not the demo's one ResNet per level
    # and mask-weighted loss.
    assert plan.base.unet_config == {} and quick.base.unet_config == {}
    assert plan.base.masked_loss_weight == 0 == quick.base.masked_loss_weight


def test_base_minutes_keep_the_default_split() -> None:
    plan = AdaptationPlan().with_base_minutes(27.0)
    b, d = plan.base, AdaptationPlan().base
    assert b.autoencoder_minutes + b.reader_minutes + b.diffusion_minutes == pytest.approx(27.0)
    assert b.diffusion_minutes / b.autoencoder_minutes == pytest.approx(d.diffusion_minutes / d.autoencoder_minutes)


def _fake_base(root: Path, findings: list[str]) -> Path:
    pipeline = root / "runs" / "text_to_image" / "pipeline"
    pipeline.mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (root / "data").mkdir()
    (root / "data" / "phantom.json").write_text(json.dumps({"findings": findings}))
    (root / "configs").mkdir()
    (root / "configs" / "text_to_image.yaml").write_text(yaml.safe_dump({"data": {"root": str(root / "data")}}))
    return root


def test_a_base_that_saw_a_held_out_finding_is_refused(tmp_path: Path) -> None:
    plan = AdaptationPlan()
    clean = _fake_base(tmp_path / "clean", ["Cardiomegaly", "Consolidation", "Pleural Effusion"])
    assert check_base(clean, plan) == (clean / "runs" / "text_to_image" / "pipeline").resolve()
    seen = _fake_base(tmp_path / "seen", ["Cardiomegaly", "Pneumothorax"])
    with pytest.raises(MedsdError, match="Pneumothorax"):
        check_base(seen, plan)
    with pytest.raises(MedsdError, match="model_index.json"):
        check_base(tmp_path / "nothing", plan)


def test_a_base_that_never_saw_a_finding_the_benchmark_keeps_is_refused(tmp_path: Path) -> None:
    # The default base left out Pneumothorax and Lung Lesion; holding out Lung Lesion alone would measure
    # forgetting on a Pneumothorax the base never drew.
    base = _fake_base(tmp_path / "base", ["Cardiomegaly", "Consolidation", "Pleural Effusion"])
    with pytest.raises(MedsdError, match="never saw Pneumothorax, which --findings does not hold out.*"
                                         "--findings 'Lung Lesion' 'Pneumothorax'"):
        check_base(base, replace(AdaptationPlan(), held_out=("Lung Lesion",)))
    # The whole benchmark says so before rendering any set.
    with pytest.raises(MedsdError, match="never saw Pneumothorax"):
        run_adaptation_benchmark(tmp_path / "out", replace(AdaptationPlan.smoke(), held_out=("Lung Lesion",)),
                                 base=base)
    assert not (tmp_path / "out").exists()
