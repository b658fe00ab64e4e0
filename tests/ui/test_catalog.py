"""Finding models, adapters and reports on disk, without loading weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsd.errors import MedsdError
from medsd.ui.catalog import build_catalog, describe_model
from medsd.ui.judge import default_judge_folder


def _diffusers_folder(path: Path, sample_size: int = 16, vae_blocks: int = 2) -> Path:
    for sub, config in (("unet", {"sample_size": sample_size}), ("vae", {"block_out_channels": [4] * vae_blocks})):
        (path / sub).mkdir(parents=True)
        (path / sub / "config.json").write_text(json.dumps(config))
    (path / "model_index.json").write_text("{}")
    return path


def test_runs_folder_offers_trained_models_then_bases_adapters_and_reports(tmp_path: Path) -> None:
    base = _diffusers_folder(tmp_path / "models" / "base", sample_size=32, vae_blocks=4)
    runs = tmp_path / "runs"
    cc = _diffusers_folder(runs / "class_conditional" / "model")
    (cc / "medsd_model.json").write_text(json.dumps({"kind": "class_conditional", "labels": ["Cardiomegaly", "Edema"]}))
    (runs / "lora").mkdir(parents=True)
    (runs / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (runs / "lora" / "artefacts.json").write_text(json.dumps({"base_model": str(base)}))
    (runs / "lora" / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (runs / "lora" / "checkpoints" / "checkpoint-5" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (runs / "ti").mkdir()
    (runs / "ti" / "learned_embeds.safetensors").write_bytes(b"")
    (runs / "ti" / "config.yaml").write_text(f"model:\n  pretrained: {base}\n")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.html").write_text("<h1>r</h1>")

    catalog = build_catalog([], runs)
    assert catalog.model_names == ["runs/class_conditional/model", "models/base"]
    first = catalog.models[0]
    assert first.kind == "class_conditional" and first.conditioning == "labels"
    assert first.labels == ("Cardiomegaly", "Edema") and first.size == 32  # 16 px latents x 2
    assert catalog.models[1].size == 32 * 8 and catalog.models[1].conditioning == "text"
    assert catalog.adapter_names("lora") == ["runs/lora"]  # the checkpoint copy is not offered
    assert catalog.adapter("runs/lora").base_model == str(base)
    assert catalog.adapter("runs/ti").kind == "ti" and catalog.adapter("runs/ti").base_model == str(base)
    assert catalog.report_names() == ["report/report.html"]
    assert catalog.report("report/report.html") == (tmp_path / "report" / "report.html").resolve()


def test_the_demo_text_model_comes_before_its_report_reader_stage(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for stage, method in (("report_reader", "report_reader"), ("text_to_image", "full")):
        _diffusers_folder(runs / stage / "pipeline")
        (runs / stage / "artefacts.json").write_text(json.dumps({"method": method, "base_model": "x"}))
    catalog = build_catalog([], runs)
    assert catalog.model_names == ["runs/text_to_image/pipeline", "runs/report_reader/pipeline"]


def test_given_models_come_first_and_hub_ids_pass_through(tmp_path: Path) -> None:
    mine = _diffusers_folder(tmp_path / "mine")
    catalog = build_catalog([str(mine), "org/model"], None)
    assert [m.source for m in catalog.models] == [str(mine.resolve()), "org/model"]
    assert describe_model(mine).kind == "diffusers"


def test_nothing_to_offer_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MedsdError, match="medsd demo"):
        build_catalog([], tmp_path / "missing")
    (tmp_path / "runs").mkdir()
    with pytest.raises(MedsdError, match="no model folders found"):
        build_catalog([], tmp_path / "runs")
    with pytest.raises(MedsdError, match="not a folder"):
        build_catalog([str(tmp_path / "nowhere")], None)
    with pytest.raises(MedsdError, match="not offered"):
        build_catalog([str(_diffusers_folder(tmp_path / "m"))], None).model("other")


def test_default_judge_is_the_classifier_beside_runs(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    assert default_judge_folder(tmp_path / "runs") is None
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "model.safetensors").write_bytes(b"")
    assert default_judge_folder(tmp_path / "runs") == (tmp_path / "classifier").resolve()
