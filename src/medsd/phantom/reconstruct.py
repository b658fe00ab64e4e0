"""Phantom images as an autoencoder gives them back: what every image a latent diffusion model draws goes through.

A judge trained on real images only reads the autoencoder's smoothing and faint blotches as findings (it called
38 % of the demo autoencoder's reconstructions of lesion-free images a lung lesion); trained on reconstructions
too, with the images' true labels, it learns that those traces are not findings (10 %; docs/phantom.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


@torch.no_grad()
def reconstruct_images(autoencoder: str | Path, images: Tensor, batch_size: int = 100) -> Tensor:
    """Encode and decode grayscale images [N, 1, H, W] with an AutoencoderKL (a folder, an `autoencoder` run or
    a model folder); uint8 images come back as uint8, float ones (in [0, 1]) as float.

    The latent mean, not a sample: the decoder sees what the diffusion model is trained to produce.
    """
    from medsd.train.class_conditional import load_vae

    vae = load_vae(autoencoder, "autoencoder").eval()
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    out = torch.empty_like(images)
    for i in range(0, len(images), batch_size):
        pixels = (images[i : i + batch_size].float() / scale * 2 - 1).expand(-1, vae.config.in_channels, -1, -1)
        recon = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1).mean(1, keepdim=True)
        recon = (recon + 1) / 2 * scale
        out[i : i + batch_size] = torch.round(recon) if images.dtype == torch.uint8 else recon
    return out
