"""Inpainting: regenerate a masked region of an image from a prompt, keeping the rest.

With a dedicated inpainting model (U-Net with 9 input channels: latents, mask, masked image) diffusers'
`StableDiffusionInpaintPipeline` does the work. With any ordinary model the sampler blends latents
RePaint-style: after every step the unmasked region is replaced by the image's own latents noised to the
next step's level, so the new content grows to fit its surroundings. In both cases the decoded result is
composited with the original pixels outside the mask (the VAE alone does not reproduce pixels exactly),
so the unmasked region is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from medsd.errors import MedsdError
from medsd.files import output_dir
from medsd.generate import jobs as J
from medsd.generate.api import check_settings, check_size, run_jobs
from medsd.generate.compose import parse_prompt
from medsd.generate.loading import LoadedModel, check_prompt, load_model
from medsd.generate.sampling import Condition, Inpainting, encode_image, sample
from medsd.generate.schedulers import canonical_scheduler_name, make_scheduler


def load_image_and_mask(
    image: str | Path, mask: str | Path | None = None, box: Sequence[int] | str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """RGB image as floats in [0, 1] [H, W, 3] and mask [H, W] (1 = regenerate) from a mask PNG or a box."""
    image_path = Path(image)
    if not image_path.is_file():
        raise MedsdError(f"--image {str(image)!r} not found")
    rgb = _as_rgb(_open(image_path, "--image"))
    h, w = rgb.shape[:2]
    if (mask is None) == (box is None):
        raise MedsdError("give exactly one of --mask PNG or --box x0,y0,x1,y1")
    if mask is not None:
        mask_path = Path(mask)
        if not mask_path.is_file():
            raise MedsdError(f"--mask {str(mask)!r} not found")
        m = np.asarray(_open(mask_path, "--mask").convert("L"), dtype=np.float32) / 255.0
        if m.shape != (h, w):
            raise MedsdError(
                f"mask {mask_path.name} is {m.shape[1]}x{m.shape[0]} px but image {image_path.name} is {w}x{h}; "
                "they must be the same size (white = regenerate, black = keep)"
            )
        return rgb, (m > 0.5).astype(np.float32)
    return rgb, box_mask(box, h, w)


def _as_rgb(img: Image.Image) -> np.ndarray:
    """[H, W, 3] floats in [0, 1]; 16-bit grayscale (common for radiographs) is scaled by its own maximum,
    because PIL's conversion to RGB would clip it to white."""
    if img.mode.startswith("I"):
        gray = np.asarray(img, dtype=np.float32)
        gray = gray / max(float(gray.max()), 1.0)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _open(path: Path, option: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, ValueError) as err:
        raise MedsdError(f"{option} {str(path)!r} is not a readable image (PNG, JPEG, ...): {err}") from err


def box_mask(box: Sequence[int] | str, height: int, width: int) -> np.ndarray:
    """A [H, W] mask with ones inside x0,y0,x1,y1 (pixels, x1/y1 exclusive)."""
    try:
        x0, y0, x1, y1 = (int(v) for v in (box.split(",") if isinstance(box, str) else box))
    except ValueError:
        raise MedsdError(f"--box {box!r} must be four integers x0,y0,x1,y1") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise MedsdError(f"--box {box!r} must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    m = np.zeros((height, width), dtype=np.float32)
    m[y0:y1, x0:x1] = 1.0
    return m


def inpaint(
    model: str | Path | LoadedModel,
    image: str | Path,
    prompt: str,
    *,
    mask: str | Path | None = None,
    box: Sequence[int] | str | None = None,
    out_dir: str | Path = "inpainted",
    num_images: int = 1,
    negative_prompt: str = "",
    steps: int = 50,
    guidance: float = 7.5,
    scheduler: str = "pndm",
    seed: int = 0,
    batch_size: int = 8,
    resample: int = 1,
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
    embeddings: Sequence[str | Path] = (),
    device: str = "auto",
    dtype: str = "float32",
    progress: bool = True,
) -> pd.DataFrame:
    """Regenerate the masked region of `image` from `prompt`, `num_images` times (seeds seed, seed+1, ...).

    `resample` > 1 adds RePaint's resampling (that many denoising passes per step, with a forward-diffusion
    jump between them) to the latent blending; it needs the ddim or ddpm scheduler and costs `resample`× time.
    """
    rgb, mask_arr = load_image_and_mask(image, mask, box)  # size errors before the model is loaded
    check_settings(num_images=num_images, batch_size=batch_size, steps=steps, scheduler=scheduler,
                   guidance=guidance, lora_scale=lora_scale)
    terms = parse_prompt(prompt)  # bad weights fail before loading too
    output_dir(out_dir, "--out")
    if resample < 1 or (resample > 1 and canonical_scheduler_name(scheduler) not in ("ddim", "ddpm")):
        raise MedsdError(f"--resample {resample}: must be >= 1, and > 1 needs --scheduler ddim or ddpm")
    if not isinstance(model, LoadedModel):
        model = load_model(model, lora=lora, lora_scale=lora_scale, embeddings=embeddings, device=device, dtype=dtype)
    height, width = rgb.shape[:2]
    check_size(model, height, width)
    for term in terms:
        check_prompt(model, term.text)
    dedicated = model.unet.config.in_channels == 9

    def make(batch: list[J.Job]) -> np.ndarray:
        seeds = [job.seed for job in batch]
        if dedicated:
            out = _dedicated(model, rgb, mask_arr, prompt, negative_prompt, seeds, steps, guidance, scheduler)
        else:
            known = _known_region(model, rgb, mask_arr, len(batch), resample)
            conds = [Condition.from_prompt(prompt, negative_prompt) for _ in batch]
            out = sample(model, conds, seeds, steps, guidance, scheduler, height, width, inpainting=known)
        # Outside the mask the result is the original pixels exactly.
        return mask_arr[None, :, :, None] * out + (1 - mask_arr[None, :, :, None]) * rgb[None]

    jobs = [J.Job(k, f"{k:06d}.png", prompt, seed + k) for k in range(num_images)]
    settings = {"negative_prompt": negative_prompt, "steps": steps, "guidance": guidance,
                "scheduler": canonical_scheduler_name(scheduler), "height": height, "width": width,
                "inpainting": "dedicated" if dedicated else "latent_blend", "resample": resample,
                "source_image": str(image)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask_arr * 255).astype(np.uint8)).save(out / "mask.png")
    return run_jobs(model, jobs, make, out, settings, batch_size, progress=progress)


def _known_region(model: LoadedModel, rgb: np.ndarray, mask: np.ndarray, n: int, resample: int = 1) -> Inpainting:
    """Image latents and the mask at latent resolution (max-pooled: a latent cell touching the mask is redone)."""
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1
    with torch.inference_mode():
        latents = encode_image(model, pixels).to(model.dtype)
    factor = model.vae_scale_factor
    small = F.max_pool2d(torch.from_numpy(mask)[None, None], kernel_size=factor)
    return Inpainting(latents.expand(n, -1, -1, -1), small.to(model.device, model.dtype), resample)


def _dedicated(
    model: LoadedModel, rgb: np.ndarray, mask: np.ndarray, prompt: str, negative: str,
    seeds: list[int], steps: int, guidance: float, scheduler: str,
) -> np.ndarray:
    from diffusers import StableDiffusionInpaintPipeline

    if model.pipe is None:
        raise MedsdError(f"model {model.source!r} has a 9-channel inpainting U-Net but no diffusers pipeline")
    components = {**model.pipe.components, "scheduler": make_scheduler(scheduler, model.scheduler_config)}
    pipe = StableDiffusionInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    h, w = mask.shape
    result = pipe(
        prompt=[prompt] * len(seeds), negative_prompt=[negative] * len(seeds),
        image=Image.fromarray((rgb * 255).round().astype(np.uint8)),
        mask_image=Image.fromarray((mask * 255).astype(np.uint8)),
        height=h, width=w, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
    )
    return result.images
