"""The phantom text-to-image model: recipes that train it from scratch, a pipeline plain diffusers loads, and a
model that never sees the findings it is told to exclude."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medsd.errors import MedsdError
from medsd.phantom.report_language import names_any
from medsd.phantom.text_model import TextModelPlan, pretrain_text_model

# Two ResNets per level: not the test size's own one, so the test sees the plan's U-Net change applied.
TINY = TextModelPlan(n_train=24, size=32, model_size="test", batch_size=4, autoencoder_minutes=1.0,
                     autoencoder_steps=2, reader_steps=2, diffusion_minutes=1.0, diffusion_steps=3, sample_steps=2,
                     unet_config={"layers_per_block": 2})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text_model")
    pretrain_text_model(out, exclude_findings=["Pneumothorax", "Lung Lesion"], plan=TINY, seed=1)
    return out


def test_pipeline_loads_and_generates_in_plain_diffusers(trained: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(trained / "runs" / "text_to_image" / "pipeline")
    # The autoencoder trained in stage 3 (8 latent channels) is the pipeline's VAE, and the U-Net matches it.
    assert pipe.vae.config.latent_channels == 8 == pipe.unet.config.in_channels == pipe.unet.config.out_channels
    image = pipe("Moderate cardiomegaly. Small right pleural effusion.", num_inference_steps=2, height=32, width=32,
                 guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3) and float(image.std()) > 0
    assert pipe.unet.config.layers_per_block == 2  # the plan's U-Net change, saved in the pipeline's config


def test_the_demo_model_has_one_resnet_per_level(tmp_path: Path) -> None:
    from medsd.phantom.text_model import text_to_image_recipe

    # Measured: 1.4x the steps of the size's two per level in the same minutes, and more learned in them.
    recipe = text_to_image_recipe(tmp_path, tmp_path / "base", tmp_path / "data", tmp_path / "vae", TextModelPlan(),
                                  ["Cardiomegaly"])
    assert recipe["method"]["unet_config"] == {"layers_per_block": 1}
    recipe = text_to_image_recipe(tmp_path, tmp_path / "base", tmp_path / "data", tmp_path / "vae",
                                  TextModelPlan(unet_config={}), ["Cardiomegaly"])
    assert "unet_config" not in recipe["method"]


def test_the_demo_model_weights_the_loss_inside_the_heart_region_and_every_finding(tmp_path: Path,
                                                                                    trained: Path) -> None:
    from medsd.phantom.text_model import text_to_image_recipe

    everything = ["Cardiomegaly", "Consolidation", "Lung Lesion", "Pneumothorax", "Pleural Effusion"]
    recipe = text_to_image_recipe(tmp_path, tmp_path / "base", tmp_path / "data", tmp_path / "vae", TextModelPlan(),
                                  everything)
    # the heart's region (every image), not the enlarged heart's own mask, which it covers
    assert recipe["data"]["mask_columns"] == ["Mask Heart", *(f"Mask {f}" for f in everything[1:])]
    assert recipe["training"]["masked_loss_weight"] == 4.0
    plain = text_to_image_recipe(tmp_path, tmp_path / "base", tmp_path / "data", tmp_path / "vae",
                                 TextModelPlan(masked_loss_weight=0.0), everything)
    assert "mask_columns" not in plain["data"] and "masked_loss_weight" not in plain["training"]
    # The trained model's run (Pneumothorax and Lung Lesion excluded) cached the heart's and the other findings'
    # masks.
    cache = next((trained / "runs" / "text_to_image" / "cache").glob("latents-*"))
    masks, latents = np.load(cache / "masks.npy"), np.load(cache / "latents.npy", mmap_mode="r")
    assert masks.shape == (len(latents), 1, *latents.shape[-2:]) and 0 < float(masks.astype(np.float32).mean()) < 0.5
    config = (trained / "configs" / "text_to_image.yaml").read_text()
    assert "Mask Consolidation" in config and "Mask Lung Lesion" not in config and "Mask Cardiomegaly" not in config
    assert "Mask Heart" in config


def test_a_phantom_set_of_an_older_version_is_rendered_again(tmp_path: Path) -> None:
    from medsd.phantom.text_model import render_training_set

    folder = render_training_set(tmp_path / "set", 6, 32, 0, ["Lung Lesion"])
    stamp = (folder / "train.csv").stat().st_mtime_ns
    assert render_training_set(folder, 6, 32, 0, ["Lung Lesion"]) == folder  # the same set: reused
    assert (folder / "train.csv").stat().st_mtime_ns == stamp
    manifest = json.loads((folder / "phantom.json").read_text())
    (folder / "phantom.json").write_text(json.dumps({**manifest, "version": "1.1"}))  # before the mask columns
    frame = pd.read_csv(folder / "train.csv")
    frame.drop(columns=["Mask Lung Lesion"]).to_csv(folder / "train.csv", index=False)
    render_training_set(folder, 6, 32, 0, ["Lung Lesion"])
    assert "Mask Lung Lesion" in pd.read_csv(folder / "train.csv").columns


def test_both_unet_and_text_encoder_trained_on_reports(trained: Path) -> None:
    from safetensors.torch import load_file

    recipe = (trained / "configs" / "text_to_image.yaml").read_text()
    assert "train_text_encoder: true" in recipe and "caption_dropout: 0.1" in recipe and "source: report" in recipe
    # The text encoder changed twice: reading reports (report_reader), then with the U-Net (text_to_image).
    encoders = [load_file(str(folder / "text_encoder" / "model.safetensors")) for folder in (
        trained / "models" / "tiny-demo", trained / "runs" / "report_reader" / "pipeline",
        trained / "runs" / "text_to_image" / "pipeline")]
    for before, after in zip(encoders, encoders[1:]):
        assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((trained / "runs" / "text_to_image" / "training_done.json").read_text())["step"] == 3


def test_autoencoder_trains_with_the_ssim_term(trained: Path) -> None:
    from medsd.config import load_run_config

    # L1 alone blurred small lesions away (vae_ceiling.py: Lung Lesion 0.87 against 0.91 with SSIM, same budget).
    method = load_run_config(trained / "configs" / "autoencoder.yaml").method
    assert method.name == "autoencoder" and method.reconstruction == "l1" and method.ssim_weight == 1.0
    assert method.latent_channels == 8


def test_excluded_findings_are_neither_drawn_nor_named(trained: Path) -> None:
    data = trained / "data" / "phantom_train"
    frame = pd.read_csv(data / "train.csv")
    assert frame[["Pneumothorax", "Lung Lesion"]].to_numpy().sum() == 0
    assert frame[["Cardiomegaly", "Pleural Effusion", "Consolidation"]].to_numpy().sum() > 0
    assert not any(names_any(text, frozenset({"Pneumothorax", "Lung Lesion"})) for text in frame["Report"])
    assert json.loads((data / "phantom.json").read_text())["findings"] == [
        "Cardiomegaly", "Consolidation", "Pleural Effusion"]


def test_unknown_or_all_excluded_findings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MedsdError, match="not phantom findings"):
        pretrain_text_model(tmp_path, exclude_findings=["Edema"], plan=TINY)
    with pytest.raises(MedsdError, match="leaves no finding"):
        pretrain_text_model(tmp_path, exclude_findings=["Cardiomegaly", "Consolidation", "Lung Lesion",
                                                        "Pneumothorax", "Pleural Effusion"], plan=TINY)
