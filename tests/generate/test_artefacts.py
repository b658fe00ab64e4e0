"""Every artefact kind loads and generates: base, LoRA, textual inversion, full fine-tune, registered kinds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medsd.errors import MedsdError
from medsd.generate import generate
from medsd.generate.loading import LoadedModel, load_model, register_model_kind
from medsd.generate.metadata import RESULTS_CSV, read_png_metadata
from medsd.generate.sampling import Condition, sample

FAST = {"steps": 2, "guidance": 3.0, "scheduler": "ddim", "progress": False}


def _image(model, prompt="a chest x-ray with <cardiomegaly>", seed=4):
    return sample(model, [Condition.from_prompt(prompt)], [seed], 2, 3.0, "ddim")


def test_lora_changes_the_image_and_is_recorded(tiny, tiny_model_dir, lora_dir, tmp_path):
    with_lora = load_model(tiny_model_dir, lora=lora_dir, device="cpu")
    assert np.abs(_image(with_lora) - _image(tiny)).max() > 1e-3
    half = load_model(tiny_model_dir, lora=lora_dir / "pytorch_lora_weights.safetensors", lora_scale=0.0,
                      device="cpu")
    np.testing.assert_allclose(_image(half), _image(tiny), atol=1e-5)  # scale 0 is the base model
    generate(with_lora, "a chest x-ray", out_dir=tmp_path, **FAST)
    meta = read_png_metadata(tmp_path / "000000.png")
    assert meta["adapters"].startswith("lora:") and "pytorch_lora_weights.safetensors@1" in meta["adapters"]


def test_textual_inversion_token_is_known(tiny, tiny_model_dir, ti_file, tmp_path, caplog):
    model = load_model(tiny_model_dir, embeddings=[ti_file], device="cpu")
    assert model.placeholder_tokens == ["<cardiomegaly>"]
    # three vectors: "<cardiomegaly>" expands to three tokens that the base tokenizer does not have
    ids = model.tokenizer(model.pipe.maybe_convert_prompt("<cardiomegaly>", model.tokenizer)).input_ids
    assert len(ids) == 2 + 3
    assert np.abs(_image(model) - _image(tiny)).max() > 1e-3
    with caplog.at_level(logging.WARNING, logger="medsd.generate.loading"):
        generate(model, ["a chest x-ray with <cardiomegaly>", "a chest x-ray with <edema>"], out_dir=tmp_path, **FAST)
    assert "<edema>" in caplog.text and "Known tokens: <cardiomegaly>" in caplog.text
    assert "<cardiomegaly> that" not in caplog.text
    assert "ti:" in read_png_metadata(tmp_path / "000000.png")["adapters"]


def test_textual_inversion_emb_params_needs_a_token(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "learned_embeds.safetensors"
    save_file({"emb_params": torch.randn(2, 16)}, str(path))
    with pytest.raises(MedsdError, match="name the token"):
        load_model(tiny_model_dir, embeddings=[path], device="cpu")
    model = load_model(tiny_model_dir, embeddings=[f"<healthy>={path}"], device="cpu")
    assert model.placeholder_tokens == ["<healthy>"]


def test_full_fine_tune_folder(tiny, tmp_path):
    """A full fine-tune is a diffusers folder: save a modified copy and check it loads and differs."""
    pipe = tiny.pipe
    original = {k: v.clone() for k, v in pipe.unet.conv_out.state_dict().items()}
    try:
        with torch.no_grad():
            pipe.unet.conv_out.bias.add_(0.5)
        pipe.save_pretrained(tmp_path / "full")
    finally:
        pipe.unet.conv_out.load_state_dict(original)
    tuned = load_model(tmp_path / "full", device="cpu")
    assert np.abs(_image(tuned) - _image(tiny)).max() > 1e-3


class _LabelEncoder(torch.nn.Module):
    """A stand-in class-conditional encoder: one learned vector per finding, averaged; zeros = null label."""

    def __init__(self, findings: list[str], dim: int):
        super().__init__()
        self.findings = findings
        self.table = torch.nn.Embedding(len(findings), dim)

    def forward(self, conditions: list[str]) -> torch.Tensor:
        out = []
        for text in conditions:
            names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "No Finding"]
            idx = torch.tensor([self.findings.index(n) for n in names], dtype=torch.long)
            out.append(self.table(idx).mean(0, keepdim=True) if names else torch.zeros(1, self.table.embedding_dim))
        return torch.stack(out)


def test_registered_class_conditional_kind(tiny, tmp_path, monkeypatch):
    from medsd.generate import loading
    from medsd.generate.jobs import CHEXPERT_FINDINGS

    monkeypatch.setattr(loading, "_KINDS", dict(loading._KINDS))  # the test loader must not outlive the test

    def loader(folder: Path, spec: dict, device: str, dtype: torch.dtype) -> LoadedModel:
        torch.manual_seed(0)
        encoder = _LabelEncoder(spec["findings"], tiny.unet.config.cross_attention_dim)
        return LoadedModel(unet=tiny.unet, vae=tiny.vae, scheduler_config=tiny.scheduler_config,
                           encode=encoder, source=str(folder), kind="class_conditional", conditioning="labels",
                           labels=spec.get("labels"))

    register_model_kind("class_conditional", loader)
    folder = tmp_path / "cc"
    folder.mkdir()
    (folder / "medsd_model.json").write_text(json.dumps({"kind": "class_conditional", "findings": CHEXPERT_FINDINGS}))
    frame = generate(str(folder), all_labels=True, out_dir=tmp_path / "out", num_images=1, batch_size=14, **FAST)
    assert len(frame) == 14
    table = pd.read_csv(tmp_path / "out" / RESULTS_CSV)
    assert table["prompt"].iloc[0] == "No Finding" and "Cardiomegaly" in table["prompt"].tolist()
    assert read_png_metadata(tmp_path / "out" / "000001.png")["model_kind"] == "class_conditional"
    # a model that declares its labels gets exactly those (plus "no finding") from --all-labels
    (folder / "medsd_model.json").write_text(json.dumps({"kind": "class_conditional", "findings": CHEXPERT_FINDINGS,
                                                          "labels": ["Cardiomegaly", "Edema"]}))
    frame = generate(str(folder), all_labels=True, out_dir=tmp_path / "own", num_images=1, **FAST)
    assert frame["prompt"].tolist() == ["No Finding", "Cardiomegaly", "Edema"]
    assert frame[["Cardiomegaly", "Edema"]].values.tolist() == [[0, 0], [1, 0], [0, 1]]


def test_unknown_kind_is_a_clear_error(tmp_path):
    (tmp_path / "medsd_model.json").write_text(json.dumps({"kind": "time_machine"}))
    with pytest.raises(MedsdError, match="no loader"):
        load_model(tmp_path, device="cpu")
    (tmp_path / "medsd_model.json").write_text("{kind: broken")
    with pytest.raises(MedsdError, match="not valid JSON"):
        load_model(tmp_path, device="cpu")


def test_missing_adapter_files(tiny_model_dir, tmp_path):
    with pytest.raises(MedsdError, match="LoRA"):
        load_model(tiny_model_dir, lora=tmp_path / "nothing", device="cpu")
    with pytest.raises(MedsdError, match="embeddings file"):
        load_model(tiny_model_dir, embeddings=[tmp_path / "none.safetensors"], device="cpu")
