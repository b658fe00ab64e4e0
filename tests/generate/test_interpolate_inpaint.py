"""Interpolation (frames, strip, endpoints) and inpainting (unmasked region unchanged, both paths, errors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsd.errors import MedsdError
from medsd.generate.inpaint import _known_region, inpaint
from medsd.generate.interpolate import interpolate
from medsd.generate.metadata import RESULTS_CSV, read_png_metadata
from medsd.generate.sampling import Condition, denoise, sample

FAST = {"steps": 2, "guidance": 3.0, "scheduler": "ddim", "progress": False}
START, END = "a normal chest x-ray", "a chest x-ray with cardiomegaly"


@pytest.mark.parametrize("method", ["embedding", "compose"])
def test_interpolation_frames_strip_and_endpoints(tiny, tmp_path, method):
    frame = interpolate(tiny, START, END, frames=4, method=method, seed=9, out_dir=tmp_path, **FAST)
    assert frame["file"].tolist() == [f"frame_{k:03d}.png" for k in range(4)]
    assert frame["alpha"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-3)
    assert (frame["seed"] == 9).all()
    with Image.open(tmp_path / "strip.png") as strip:
        assert strip.size == (4 * 32, 32)
    frames = [np.asarray(Image.open(tmp_path / f), dtype=float) for f in frame["file"]]
    plain = [sample(tiny, [Condition.from_prompt(p)], [9], 2, 3.0, "ddim")[0] * 255 for p in (START, END)]
    assert np.abs(frames[0] - plain[0]).max() <= 1.0 and np.abs(frames[-1] - plain[1]).max() <= 1.0
    assert np.abs(frames[1] - frames[0]).max() > 0
    assert read_png_metadata(tmp_path / "frame_001.png")["interpolation"] == method


def test_interpolation_errors(tiny, tmp_path):
    with pytest.raises(MedsdError, match="at least 2"):
        interpolate(tiny, START, END, frames=1, out_dir=tmp_path, **FAST)
    with pytest.raises(MedsdError, match="composable"):
        interpolate(tiny, "0.5*a AND 0.5*b", END, out_dir=tmp_path, **FAST)


@pytest.fixture
def source_png(tiny, tmp_path):
    array = sample(tiny, [Condition.from_prompt(START)], [1], 2, 3.0, "ddim")[0]
    path = tmp_path / "source.png"
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a"])
def test_inpainting_keeps_the_unmasked_region(tiny, tmp_path, source_png, scheduler):
    fast = {**FAST, "scheduler": scheduler}
    frame = inpaint(tiny, source_png, "a chest x-ray with edema", box="8,8,24,24", num_images=2,
                    out_dir=tmp_path / "out", **fast)
    assert len(frame) == 2 and (tmp_path / "out" / "mask.png").is_file()
    original = np.asarray(Image.open(source_png), dtype=int)
    inside = np.zeros((32, 32), bool)
    inside[8:24, 8:24] = True
    for name in frame["file"]:
        result = np.asarray(Image.open(tmp_path / "out" / name), dtype=int)
        assert np.abs(result - original)[~inside].max() == 0  # unmasked pixels untouched
        assert np.abs(result - original)[inside].mean() > 1.0  # masked pixels regenerated
    assert read_png_metadata(tmp_path / "out" / "000000.png")["inpainting"] == "latent_blend"


def test_repaint_resampling(tiny, tmp_path, source_png):
    once = inpaint(tiny, source_png, "edema", box="8,8,24,24", out_dir=tmp_path / "once", steps=3, scheduler="ddim",
                   progress=False)
    twice = inpaint(tiny, source_png, "edema", box="8,8,24,24", out_dir=tmp_path / "twice", steps=3,
                    scheduler="ddim", resample=2, progress=False)
    a, b = (np.asarray(Image.open(d / f["file"][0]), dtype=int) for d, f in ((tmp_path / "once", once),
                                                                              (tmp_path / "twice", twice)))
    original = np.asarray(Image.open(source_png), dtype=int)
    inside = np.zeros((32, 32), bool)
    inside[8:24, 8:24] = True
    assert np.abs(b - original)[~inside].max() == 0 and np.abs(a - b)[inside].max() > 0
    with pytest.raises(MedsdError, match="ddim or ddpm"):
        inpaint(tiny, source_png, "edema", box="8,8,24,24", out_dir=tmp_path / "x", resample=2, scheduler="pndm")


def test_latent_blending_pins_the_known_latents(tiny, source_png):
    """Before the final pixel composite: the last latents equal the image's own latents outside the mask."""
    rgb = np.asarray(Image.open(source_png).convert("RGB"), dtype=np.float32) / 255
    mask = np.zeros((32, 32), np.float32)
    mask[0:16, :] = 1
    known = _known_region(tiny, rgb, mask, 1)
    with torch.inference_mode():
        latents = denoise(tiny, [Condition.from_prompt("edema")], [0], 3, 3.0, "pndm", 32, 32, inpainting=known)
    keep = known.mask == 0
    assert keep.sum() > 0
    torch.testing.assert_close(latents.expand_as(known.latents)[keep.expand_as(latents)],
                               known.latents[keep.expand_as(latents)])
    assert (latents - known.latents)[~keep.expand_as(latents)].abs().max() > 1e-3


def test_mask_png_and_size_errors(tiny, tmp_path, source_png):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "mask.png.txt").write_text("not an image")
    frame = inpaint(tiny, source_png, "edema", mask=tmp_path / "mask.png", out_dir=tmp_path / "o", **FAST)
    result = np.asarray(Image.open(tmp_path / "o" / frame["file"][0]), dtype=int)
    assert np.abs(result - np.asarray(Image.open(source_png), dtype=int))[:, :16].max() == 0
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(MedsdError, match="same size"):
        inpaint(tiny, source_png, "edema", mask=tmp_path / "small.png", out_dir=tmp_path / "x", **FAST)
    with pytest.raises(MedsdError, match="x0 < x1"):
        inpaint(tiny, source_png, "edema", box="10,10,5,40", out_dir=tmp_path / "x", **FAST)
    with pytest.raises(MedsdError, match="not a readable image"):
        inpaint(tiny, source_png, "edema", mask=tmp_path / "mask.png.txt", out_dir=tmp_path / "x", **FAST)
    with pytest.raises(MedsdError, match="exactly one"):
        inpaint(tiny, source_png, "edema", out_dir=tmp_path / "x", **FAST)
    assert not (tmp_path / "x").exists()


def test_sixteen_bit_grayscale_image(tmp_path):
    from medsd.generate.inpaint import load_image_and_mask

    ramp = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 12-bit-like values
    Image.fromarray(ramp).save(tmp_path / "xray16.png")
    rgb, mask = load_image_and_mask(tmp_path / "xray16.png", box="0,0,8,8")
    assert rgb.shape == (32, 32, 3) and rgb.max() == pytest.approx(1.0) and rgb[0, 1, 0] > 0
    assert mask.sum() == 64


def test_dedicated_inpainting_model(tiny, tiny_model_dir, tmp_path, source_png):
    """A U-Net with 9 input channels goes through diffusers' StableDiffusionInpaintPipeline."""
    from diffusers import StableDiffusionPipeline

    from medsd.generate.loading import load_model
    from medsd.models import tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet("test", cross_attention_dim=16)
    unet.register_to_config(in_channels=9)
    unet.conv_in = torch.nn.Conv2d(9, unet.conv_in.out_channels, 3, padding=1)
    components = {**tiny.pipe.components, "unet": unet}
    StableDiffusionPipeline(**components).save_pretrained(tmp_path / "inpaint_model")
    model = load_model(tmp_path / "inpaint_model", device="cpu")
    frame = inpaint(model, source_png, "edema", box="0,0,16,32", out_dir=tmp_path / "out", **FAST)
    table = pd.read_csv(tmp_path / "out" / RESULTS_CSV)
    assert table["inpainting"].tolist() == ["dedicated"] and len(frame) == 1
    result = np.asarray(Image.open(tmp_path / "out" / "000000.png"), dtype=int)
    assert np.abs(result - np.asarray(Image.open(source_png), dtype=int))[:, 16:].max() == 0
