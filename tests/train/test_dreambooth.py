"""DreamBooth: class images are generated once and reused, the prior loss counts, the U-Net trains."""

from __future__ import annotations

import torch

from medsd.train.loop import train
from medsd.train.method_configs import DreamBoothMethod


def _dreambooth(weight: float, class_dir) -> DreamBoothMethod:
    return DreamBoothMethod(num_class_images=3, class_inference_steps=2, class_batch_size=2, prior_loss_weight=weight,
                            class_images_dir=str(class_dir), class_prompt="a chest x-ray")


def test_prior_preservation_class_images_and_pipeline(tiny_model_dir, shapes, shared_cache, tmp_path, recipe):
    from diffusers import StableDiffusionPipeline

    class_dir = tmp_path / "class_images"
    out = tmp_path / "db"
    cfg = recipe(tiny_model_dir, out, "dreambooth", max_steps=2, checkpointing_steps=2, cache_dir=str(shared_cache))
    cfg.method = _dreambooth(1.0, class_dir)
    cfg.validation.prompts = ["a chest x-ray with cardiomegaly"]
    cfg.validation.num_inference_steps = 2
    with_prior = train(cfg, shapes)
    pngs = sorted(class_dir.glob("*.png"))
    assert len(pngs) == 3
    stamps = [p.stat().st_mtime_ns for p in pngs]

    # Same seed without the prior term: the instance part of step 1 is identical, so the difference is the
    # (positive) class loss. The class images are found, not generated again.
    cfg0 = recipe(tiny_model_dir, tmp_path / "db0", "dreambooth", max_steps=1, cache_dir=str(shared_cache))
    cfg0.method = _dreambooth(0.0, class_dir)
    without = train(cfg0, shapes)
    assert with_prior.losses[1] > without.losses[1] + 1e-4
    assert [p.stat().st_mtime_ns for p in sorted(class_dir.glob("*.png"))] == stamps

    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None)
    base = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    new, old = pipe.unet.state_dict(), base.unet.state_dict()
    assert sum(not torch.equal(new[k], old[k]) for k in old) > len(old) // 2
    for part in ("vae", "text_encoder"):  # the text encoder trains only with train_text_encoder
        new, old = getattr(pipe, part).state_dict(), getattr(base, part).state_dict()
        assert all(torch.equal(new[k], old[k]) for k in old), part
    assert (out / "validation" / "step-000002.png").is_file()

    cfg.training.max_steps = 3
    resumed = train(cfg, shapes, resume="latest")
    assert sorted(resumed.losses) == [3]


def test_class_images_default_folder_is_keyed_by_model_and_prompt(tiny_model_dir):
    from medsd.models import load_components
    from medsd.train.config import TrainingConfig
    from medsd.train.dreambooth import DreamBooth

    a = DreamBooth(DreamBoothMethod(class_prompt="a chest x-ray"), load_components(str(tiny_model_dir)),
                   TrainingConfig())
    b = DreamBooth(DreamBoothMethod(class_prompt="a knee x-ray"), a.components, TrainingConfig())
    a.output_dir = b.output_dir = tiny_model_dir.parent / "run"
    assert a.class_images_dir().parent == tiny_model_dir.parent / "run" / "class_images"
    assert a.class_images_dir() != b.class_images_dir()
    assert a.resolution == 32
