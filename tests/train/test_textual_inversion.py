"""Textual inversion: only the new embedding rows change, and plain diffusers loads what it saves."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from medsd.train.loop import train
from medsd.train.method_configs import TextualInversionMethod


def _placeholder_shapes(shapes):
    """The shapes data set with class names written as placeholder tokens (data.prompt.placeholder_tokens)."""
    shapes.items = [(img, p.replace("cardiomegaly", "<cardiomegaly>").replace("effusion", "<effusion>"), labels)
                    for img, p, labels in shapes.items]
    return shapes


def test_only_placeholder_rows_train_and_diffusers_loads_them(tiny_model_dir, shapes, tmp_path, recipe):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "ti"
    cfg = recipe(tiny_model_dir, out, "textual_inversion", max_steps=3, checkpointing_steps=2, learning_rate=5e-2)
    cfg.method = TextualInversionMethod(num_vectors=3, initializer="heart")  # tokens from the data set's classes
    cfg.validation.prompts = ["a chest x-ray with <cardiomegaly>"]
    cfg.validation.num_inference_steps = 2
    result = train(cfg, _placeholder_shapes(shapes))

    base = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    c = result.method.components
    for part in ("unet", "vae"):
        old, new = getattr(base, part).state_dict(), getattr(c, part).state_dict()
        assert all(torch.equal(new[k].float(), old[k]) for k in old), part
    old_te, new_te = base.text_encoder.state_dict(), c.text_encoder.state_dict()
    table_key = next(k for k in old_te if k.endswith("token_embedding.weight"))
    assert all(torch.equal(new_te[k], old_te[k]) for k in old_te if k != table_key)
    rows = old_te[table_key].shape[0]
    assert torch.equal(new_te[table_key][:rows], old_te[table_key])  # every original row is bit-identical
    assert new_te[table_key].shape[0] == rows + 6  # 2 tokens x 3 vectors

    learned = load_file(str(out / "learned_embeds.safetensors"))
    assert set(learned) == {"<cardiomegaly>", "<effusion>"}
    assert all(v.shape == (3, base.text_encoder.config.hidden_size) for v in learned.values())
    start = base.text_encoder.get_input_embeddings().weight[base.tokenizer("heart", add_special_tokens=False)
                                                           .input_ids].mean(0)
    assert all((v - start).abs().amax(dim=1).min() > 0 for v in learned.values())  # every vector moved
    assert (out / "learned_embeds.safetensors").stat().st_size < 1_000_000

    # Plain diffusers: one token per file (multi-vector), and the A1111 file with its token named.
    base.load_textual_inversion(str(out / "embeddings" / "cardiomegaly.safetensors"))
    a1111 = load_file(str(out / "a1111" / "effusion.safetensors"))
    base.load_textual_inversion(a1111["emb_params"], token="<effusion>")
    ids = base.tokenizer.convert_tokens_to_ids(["<cardiomegaly>", "<cardiomegaly>_1", "<cardiomegaly>_2"])
    assert torch.equal(base.text_encoder.get_input_embeddings().weight[ids].detach(), learned["<cardiomegaly>"])
    expanded = base.maybe_convert_prompt("<effusion>", base.tokenizer)
    assert expanded == "<effusion> <effusion>_1 <effusion>_2"

    assert (out / "validation" / "step-000003.png").is_file()
    assert (out / "checkpoints" / "checkpoint-2" / "state.json").is_file()
    ckpt = load_file(str(out / "checkpoints" / "checkpoint-3" / "trainable.safetensors"))
    assert set(ckpt) == {"embeds.<cardiomegaly>", "embeds.<effusion>"}  # a checkpoint holds only the new rows

    # Resume from step 3 and train one more step.
    cfg.training.max_steps = 4
    resumed = train(cfg, _placeholder_shapes(type(shapes)()), resume="latest")
    assert sorted(resumed.losses) == [4]


def test_too_many_vectors_warns_and_taken_token_fails(tiny_model_dir, caplog):
    from medsd.errors import MedsdError
    from medsd.models import load_components
    from medsd.train.config import TrainingConfig
    from medsd.train.textual_inversion import TextualInversion

    cfg = TextualInversionMethod(tokens=["<a_finding>", "<b_finding>"], num_vectors=40)
    method = TextualInversion(cfg, load_components(str(tiny_model_dir)), TrainingConfig())
    with caplog.at_level(logging.WARNING):
        method.setup(torch.float32)
    assert "75" in caplog.text and "cut" in caplog.text
    assert method.encode_prompts(["<a_finding>"]).shape[1] == 77

    taken = TextualInversion(TextualInversionMethod(tokens=["heart"]), load_components(str(tiny_model_dir)),
                             TrainingConfig())
    with pytest.raises(MedsdError, match="already in the"):
        taken.setup(torch.float32)


def test_phantom_placeholder_prompts_drive_the_tokens(tiny_model_dir, tmp_path, recipe):
    """Data layer -> method: `placeholder_tokens` prompts on the phantom name exactly the tokens that train."""
    from medsd.phantom.render import write_phantom_dataset

    root = tmp_path / "phantom"
    write_phantom_dataset(root, n=24, size=32, workers=1, progress=False)
    cfg = recipe(tiny_model_dir, tmp_path / "ti", "textual_inversion", max_steps=2)
    cfg.data = cfg.data.model_validate({
        "source": "phantom", "root": str(root), "resolution": 32, "split": "all",
        "labels": ["Cardiomegaly", "Pleural Effusion"], "single_label_only": True, "include_no_finding": False,
        "prompt": {"template": "{labels}", "placeholder_tokens": True},
    })
    cfg.method = TextualInversionMethod(num_vectors=2)
    result = train(cfg)
    assert result.method.tokens == ["<cardiomegaly>", "<pleural_effusion>"]
    from medsd.train.cache import LatentCache

    prompts = LatentCache(result.latent_cache.split(":", 1)[1]).prompts
    assert prompts and set(prompts) <= {"<cardiomegaly>", "<pleural_effusion>"}  # the token alone
    learned = load_file(str(tmp_path / "ti" / "learned_embeds.safetensors"))
    assert set(learned) == {"<cardiomegaly>", "<pleural_effusion>"}


def test_bf16_frozen_unet_trains_float32_embeddings(tiny_model_dir, shapes, tmp_path, recipe):
    """Mixed precision: the frozen U-Net / VAE are held in bf16, the trained rows stay float32."""
    cfg = recipe(tiny_model_dir, tmp_path / "bf16", "textual_inversion", max_steps=2, mixed_precision="bf16")
    cfg.method = TextualInversionMethod(tokens=["<cardiomegaly>"], num_vectors=2)
    result = train(cfg, _placeholder_shapes(shapes))
    c = result.method.components
    assert next(c.unet.parameters()).dtype == torch.bfloat16
    assert c.text_encoder.get_input_embeddings().weight.dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
