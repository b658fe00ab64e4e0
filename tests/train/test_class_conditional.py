"""Class-conditional latent diffusion: label tokens, CFG label dropout, a U-Net from scratch, a loadable folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from medsd.errors import MedsdError
from medsd.train.class_conditional import LabelEmbedding, load_class_conditional
from medsd.train.loop import train
from medsd.train.method_configs import ClassConditionalMethod


def test_label_tokens_sequence_and_sum():
    torch.manual_seed(0)
    emb = LabelEmbedding(["Cardiomegaly", "Edema", "Pleural Effusion"], dim=4, mode="sequence")
    table = emb.table.weight
    labels = torch.tensor([[0, 1, 1], [0, 0, 0], [1, float("nan"), 0]])
    tokens = emb(labels)
    assert tokens.shape == (3, 3, 4)
    assert torch.equal(tokens[0], table[[1, 2, 4]])  # positives first, null padding
    assert torch.equal(tokens[1], table[[3, 4, 4]])  # no finding is its own row, not the null label
    assert torch.equal(tokens[2], table[[0, 4, 4]])  # NaN counts as negative
    assert torch.equal(emb(labels, drop=torch.tensor([True, False, False]))[0], table[[4, 4, 4]])

    # Condition strings, as `medsd generate` passes them.
    assert torch.equal(emb.encode(["Edema, pleural effusion"]), tokens[:1])
    assert torch.equal(emb.encode(["no finding"]), tokens[1:2])
    assert torch.equal(emb.encode([""])[0], table[[4, 4, 4]])
    with pytest.raises(MedsdError, match="not a label"):
        emb.encode(["Fracture"])

    summed = LabelEmbedding(["Cardiomegaly", "Edema"], dim=4, mode="sum")
    out = summed(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert out.shape == (2, 1, 4)
    assert torch.allclose(out[0, 0], summed.table.weight[0] + summed.table.weight[1])
    assert torch.equal(out[1, 0], summed.table.weight[2])


def test_trains_from_scratch_with_labels_and_reloads(tiny_model_dir, shapes, shared_cache, tmp_path, recipe):
    out = tmp_path / "cc"
    cfg = recipe(tiny_model_dir, out, "class_conditional", max_steps=3, checkpointing_steps=3,
                 cache_dir=str(shared_cache))
    cfg.method = ClassConditionalMethod(mode="sequence", label_dropout=0.2)  # labels from the data set
    cfg.validation.prompts = ["Cardiomegaly", "no finding"]
    cfg.validation.num_inference_steps = 2
    result = train(cfg, shapes)
    method = result.method
    assert method.label_embedding.labels == shapes.pathologies
    assert set(method.trainable_modules()) == {"unet", "label_embedding"}

    folder = out / "model"
    spec = json.loads((folder / "medsd_model.json").read_text())
    assert spec["kind"] == "class_conditional" and spec["labels"] == ["Cardiomegaly", "Effusion"]
    assert spec["mode"] == "sequence" and spec["null_index"] == 3
    table = load_file(str(folder / "label_embedding.safetensors"))["weight"]
    assert table.shape == (4, 16)

    from diffusers import AutoencoderKL, UNet2DConditionModel

    base_unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    # From scratch: a fresh random init, not the base model's weights.
    assert all(not torch.equal(a, b) for a, b in zip(unet.state_dict().values(), base_unet.state_dict().values(),
                                                     strict=True) if a.numel() > 16)
    vae, base_vae = AutoencoderKL.from_pretrained(folder / "vae"), AutoencoderKL.from_pretrained(tiny_model_dir / "vae")
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), base_vae.state_dict().values(),
                                                 strict=True))
    assert (out / "validation" / "step-000003.png").is_file()

    loaded = load_class_conditional(folder, spec, "cpu", torch.float32)
    assert loaded.conditioning == "labels"
    assert torch.equal(loaded.encode(["Effusion"])[0], table[[1, 3]])

    # Dropout 1.0 turns every training condition into the null label.
    method.cfg = ClassConditionalMethod(label_dropout=0.999999)
    cond = method.encode_condition({"labels": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
    assert torch.equal(cond, method.label_embedding.table.weight[[3, 3]].expand(2, 2, -1))

    cfg.training.max_steps = 4
    assert sorted(train(cfg, shapes, resume="latest").losses) == [4]

    # `medsd generate` draws images from the folder; conditions are finding names.
    gen = tmp_path / "gen"
    assert _generate(["--model", str(folder), "--prompt", "Cardiomegaly", "--prompt", "no finding",
                      "--out", str(gen)]) == 0
    assert len(list(gen.glob("*.png"))) == 2
    every = tmp_path / "every"  # --all-labels enumerates this model's own labels
    assert _generate(["--model", str(folder), "--all-labels", "--out", str(every)]) == 0
    assert len(list(every.glob("*.png"))) >= 2


def _generate(argv: list[str]) -> int:
    import argparse

    from medsd.generate.cli import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args([*argv, "--steps", "2", "--guidance", "2", "--scheduler", "ddim", "--quiet",
                              "--device", "cpu"])
    return args.func(args)


def test_labels_that_disagree_with_the_data_fail(tiny_model_dir, shapes, tmp_path, recipe):
    cfg = recipe(tiny_model_dir, tmp_path / "bad", "class_conditional", max_steps=1)
    cfg.method = ClassConditionalMethod(labels=["Edema", "Cardiomegaly"])
    with pytest.raises(MedsdError, match="differ from the data set"):
        train(cfg, shapes)
