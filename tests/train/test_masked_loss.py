"""The region-mask-weighted denoising loss (`training.masked_loss_weight`): its arithmetic, and masks that reach
the loss through the latent cache and without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medsd.config import RunConfig
from medsd.train.config import TrainingConfig
from medsd.train.methods import Method


def _loss(weight: float, pred, target, mask=None, snr=None) -> torch.Tensor:
    method = Method(None, None, TrainingConfig(masked_loss_weight=weight))
    return method.loss(pred, target, {} if mask is None else {"loss_mask": mask}, snr)


def test_errors_inside_the_mask_count_one_plus_w_times() -> None:
    target = torch.zeros(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:4, 2:6] = 1  # 8 of 64 cells
    inside = torch.zeros_like(target)
    inside[:, :, 2:4, 2:6] = 1.0
    outside = torch.zeros_like(target)
    outside[:, :, 6:8, 0:4] = 1.0  # as many cells, away from the mask
    plain = F.mse_loss(inside, target)
    assert torch.allclose(_loss(0.0, inside, target, mask), plain)  # W = 0: plain MSE, mask or not
    assert torch.allclose(_loss(4.0, inside, target), plain)  # no mask in the batch: plain MSE
    # averaged over the 64 cells: 8 cells of error 1 weighted 5 inside; outside, the plain loss, untouched
    assert _loss(4.0, inside, target, mask).item() == pytest.approx(5 * 8 / 64)
    assert _loss(4.0, outside, target, mask).item() == pytest.approx(plain.item()) == pytest.approx(8 / 64)
    # a larger mask elsewhere does not shrink what the error outside it counts
    wide = mask.clone()
    wide[:, :, 0:2, :] = 1
    assert _loss(4.0, outside, target, wide).item() == pytest.approx(8 / 64)
    # min-SNR weights still scale each image
    snr = torch.tensor([1.0, 0.0])
    assert _loss(4.0, inside, target, mask, snr).item() == pytest.approx(5 * 8 / 64 / 2)


def test_a_pixel_size_mask_weighs_like_its_latent_size_average() -> None:
    pred, target = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    pixels = (torch.rand(3, 1, 16, 16) > 0.7).float()
    cells = F.avg_pool2d(pixels, 2)  # what the latent cache stores
    assert torch.allclose(_loss(2.0, pred, target, pixels), _loss(2.0, pred, target, cells))


@pytest.mark.parametrize("cached", [True, False])
def test_masks_reach_the_loss_with_and_without_the_latent_cache(tiny_model_dir, tmp_path_factory, monkeypatch,
                                                                 cached: bool) -> None:
    import numpy as np

    from medsd.data.dataset import build_dataset
    from medsd.phantom.render import FINDINGS, mask_column, write_phantom_dataset
    from medsd.train.loop import train

    data = tmp_path_factory.getbasetemp() / "masked_phantom"
    if not data.is_dir():
        write_phantom_dataset(data, n=8, size=32, seed=2, workers=1, progress=False)
    out = tmp_path_factory.mktemp("masked_run")
    cfg = RunConfig.model_validate({
        "output_dir": str(out), "model": {"pretrained": str(tiny_model_dir), "device": "cpu"},
        "data": {"source": "phantom", "root": str(data), "resolution": 32, "labels": FINDINGS,
                 "mask_columns": [mask_column(f) for f in FINDINGS], "split_fractions": [1.0, 0.0, 0.0]},
        "training": {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "lr_warmup_steps": 0,
                     "masked_loss_weight": 4.0, "cache_latents": cached, "min_snr_gamma": 5.0},
        "method": {"name": "full"}, "validation": {"prompts": [], "steps": 1000},
    })
    seen: list[torch.Tensor] = []
    original = Method.loss

    def spy(self, model_pred, target, batch, weights):
        seen.append(batch["loss_mask"].detach().clone())
        return original(self, model_pred, target, batch, weights)

    monkeypatch.setattr(Method, "loss", spy)
    result = train(cfg)
    assert result.step == 2 and len(seen) == 2
    dataset = build_dataset(cfg.data, split="train")
    truth = torch.stack([dataset[i]["loss_mask"] for i in range(len(dataset))])
    assert truth.sum() > 0
    if cached:  # stored once, averaged down to the 16 x 16 latent grid (float16)
        stored = np.load(next(Path(out / "cache").glob("latents-*")) / "masks.npy")
        assert stored.shape == (len(dataset), 1, 16, 16)
        assert np.allclose(stored, F.avg_pool2d(truth, 2).numpy(), atol=1e-3)
        assert seen[0].shape == (8, 1, 16, 16)
    else:  # read with each batch at pixel size, averaged in the loss
        assert seen[0].shape == (8, 1, 32, 32)
    assert sorted(seen[0].sum(dim=(1, 2, 3)).tolist()) == pytest.approx(
        sorted((truth.sum(dim=(1, 2, 3)) / (4 if cached else 1)).tolist()), abs=0.05)
