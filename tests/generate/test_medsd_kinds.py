"""Integration with the training code's own loaders: class-conditional and text-encoder-swap folders load
through `medsd_model.json` (the loader modules are imported automatically) and generate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medsd.generate import generate


def _copy(src: Path, dst: Path, parts: tuple[str, ...]) -> None:
    from diffusers import DDPMScheduler

    dst.mkdir()
    for sub in parts:
        shutil.copytree(src / sub, dst / sub)
    DDPMScheduler.from_pretrained(src / "scheduler").save_pretrained(dst / "scheduler")


def test_class_conditional_folder(tiny_model_dir, tmp_path):
    pytest.importorskip("medsd.train.class_conditional")
    from safetensors.torch import save_file

    folder = tmp_path / "cc"
    _copy(tiny_model_dir, folder, ("unet", "vae"))
    labels = ["Cardiomegaly", "Edema", "Pleural Effusion"]
    save_file({"weight": torch.randn(len(labels) + 2, 16)}, str(folder / "label_embedding.safetensors"))
    (folder / "medsd_model.json").write_text(json.dumps({"kind": "class_conditional", "labels": labels,
                                                         "mode": "sequence"}))
    frame = generate(str(folder), all_labels=True, out_dir=tmp_path / "out", steps=2, device="cpu", progress=False)
    assert frame["prompt"].tolist() == ["No Finding", "Cardiomegaly", "Edema", "Pleural Effusion"]
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


def test_text_encoder_swap_folder(tiny_model_dir, tmp_path):
    swap = pytest.importorskip("medsd.train.text_encoder_swap")
    from safetensors.torch import save_file

    folder = tmp_path / "swap"
    _copy(tiny_model_dir, folder, ("unet", "vae", "text_encoder", "tokenizer"))
    projection = swap.build_projection("linear", 16, 16)
    save_file({k: v.contiguous() for k, v in projection.state_dict().items()}, str(folder / "projection.safetensors"))
    (folder / "medsd_model.json").write_text(json.dumps({
        "kind": "text_encoder_swap", "base_model": str(tiny_model_dir), "text_encoder": "clip", "projection": "linear",
        "hidden_size": 16, "cross_attention_dim": 16, "max_length": 32, "unet": "unet",
    }))
    frame = generate(str(folder), ["a chest x-ray with edema", "0.5*edema AND 0.5*cardiomegaly"],
                     out_dir=tmp_path / "out", steps=2, device="cpu", progress=False)
    assert len(frame) == 2 and len(list((tmp_path / "out").glob("*.png"))) == 2
