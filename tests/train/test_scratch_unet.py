"""A text-to-image U-Net from scratch with another architecture (`method.unet_config`): trained, saved as a
pipeline plain diffusers loads, and misspelt or misplaced settings refused before training."""

from __future__ import annotations

import pytest
import torch

from medsd.config import load_run_config
from medsd.errors import MedsdError
from medsd.train.config import FullMethod
from medsd.train.loop import train

ADAGN_AND_POOLED_TEXT = {"resnet_time_scale_shift": "scale_shift", "addition_embed_type": "text",
                         "addition_embed_type_num_heads": 2}


def test_scratch_unet_with_other_settings_trains_and_loads_in_diffusers(tiny_model_dir, shapes, shared_cache,
                                                                         tmp_path, recipe):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "full"
    cfg = recipe(tiny_model_dir, out, "full", max_steps=2, cache_dir=str(shared_cache))
    cfg.method = FullMethod(init="scratch", train_text_encoder=True, caption_dropout=0.1,
                            unet_config=ADAGN_AND_POOLED_TEXT)
    trained = train(cfg, shapes)
    unet = trained.method.components.unet
    assert unet.config.resnet_time_scale_shift == "scale_shift" and unet.add_embedding is not None

    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline")
    for key, value in ADAGN_AND_POOLED_TEXT.items():
        assert pipe.unet.config[key] == value
    # The saved weights are the trained ones, the pooled-text embedding included.
    trained_state, loaded_state = unet.state_dict(), pipe.unet.state_dict()
    assert any(k.startswith("add_embedding.") for k in loaded_state)
    assert all(torch.equal(trained_state[k].cpu(), loaded_state[k]) for k in loaded_state)
    image = pipe("a chest x-ray with cardiomegaly", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3)

    # A longer run resumes from the last checkpoint into the same architecture.
    cfg.training.max_steps = 3
    resumed = train(cfg, shapes, resume="latest")
    assert sorted(resumed.losses) == [3]  # only the step after the checkpoint at 2
    assert resumed.method.components.unet.config.resnet_time_scale_shift == "scale_shift"

    # Resuming it into another architecture is refused with one line naming the checkpoint and the way out.
    cfg.training.max_steps = 4
    cfg.method = FullMethod(init="scratch", train_text_encoder=True, caption_dropout=0.1)
    refused = r"checkpoint .*checkpoint-3 does not fit this recipe's model .*new output_dir"
    with pytest.raises(MedsdError, match=refused):
        train(cfg, shapes, resume="latest")


def test_misspelt_unet_setting_is_refused_before_training(tiny_model_dir, shapes, tmp_path, recipe):
    out = tmp_path / "full"
    cfg = recipe(tiny_model_dir, out, "full", max_steps=1)
    cfg.method = FullMethod(init="scratch", unet_config={"resnet_time_scale_shfit": "scale_shift"})
    with pytest.raises(MedsdError, match="resnet_time_scale_shfit is not a UNet2DConditionModel setting"):
        train(cfg, shapes)
    assert not (out / "pipeline").exists()

    cfg.method = FullMethod(init="scratch", unet_config={"addition_embed_type": "no-such-embedding"})
    with pytest.raises(MedsdError, match="does not build a U-Net"):
        train(cfg, shapes)


def test_unet_config_needs_a_scratch_unet(tiny_model_dir, tmp_path):
    recipe_file = tmp_path / "full.yaml"
    recipe_file.write_text(f"model: {{pretrained: {tiny_model_dir}}}\ndata: {{source: phantom}}\n"
                           f"output_dir: {tmp_path / 'out'}\nmethod: {{name: full}}\n")
    with pytest.raises(MedsdError, match="set init: scratch"):
        load_run_config(recipe_file, ["method.unet_config.resnet_time_scale_shift=scale_shift"])
    cfg = load_run_config(recipe_file, ["method.init=scratch", "method.unet_config.resnet_time_scale_shift=scale_shift",
                                        "method.unet_config.addition_embed_type_num_heads=2"])
    assert cfg.method.unet_config == {"resnet_time_scale_shift": "scale_shift", "addition_embed_type_num_heads": 2}
