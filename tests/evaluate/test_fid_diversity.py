"""FID/KID/PRDC, feature extractors (offline) and MS-SSIM diversity on small synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsd.errors import MedsdError
from medsd.evaluate import features as feats
from medsd.evaluate.diversity import ms_ssim_diversity, ms_ssim_settings
from medsd.evaluate.fid import compare_features, fid_from_features, kid_from_features, prdc


def test_fid_self_is_zero_and_grows_with_noise(blobs, convnet):
    images = blobs(64)
    extractor = feats.make_extractor("phantom", phantom_classifier=convnet)
    real = feats.extract_features(extractor, images)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-6)
    values = []
    for sigma in (0.05, 0.15, 0.4):
        noisy = (images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        values.append(fid_from_features(real, feats.extract_features(extractor, noisy)))
    assert 0 < values[0] < values[1] < values[2]


def test_fid_matches_gaussian_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 3))
    b = rng.normal(1, 2, (4000, 3))
    # |mu diff|² = 3; tr(S1 + S2 - 2 sqrt(S1 S2)) = 3 * (1 + 4 - 4) = 3
    assert fid_from_features(a, b) == pytest.approx(6.0, rel=0.05)


def test_kid_and_prdc():
    rng = np.random.default_rng(0)
    a, a2 = rng.normal(0, 1, (200, 8)), rng.normal(0, 1, (200, 8))
    far = rng.normal(3, 1, (200, 8))
    kid_same, _ = kid_from_features(a, a2, subset_size=100, n_subsets=20)
    kid_far, _ = kid_from_features(a, far, subset_size=100, n_subsets=20)
    assert abs(kid_same) < 0.05 < kid_far
    same = prdc(a, a2)
    assert same["precision"] > 0.7 and same["recall"] > 0.7 and same["coverage"] > 0.7
    assert prdc(a, far)["precision"] < 0.05
    assert set(compare_features(a, a2)) >= {"fid", "kid_mean", "kid_std", "precision", "coverage"}


def test_missing_weights_name_the_option(tmp_path):
    with pytest.raises(MedsdError, match="--inception-weights"):
        feats.make_extractor("inception")
    with pytest.raises(MedsdError, match="--xrv-weights"):
        feats.make_extractor("xrv")
    with pytest.raises(MedsdError, match="does not exist"):
        feats.make_extractor("xrv", xrv_weights=tmp_path / "nope.safetensors")
    with pytest.raises(MedsdError, match="--phantom-classifier"):
        feats.make_extractor("phantom")


def test_xrv_from_local_safetensors(tmp_path, blobs):
    import torchxrayvision as xrv
    from safetensors.torch import save_file

    model = xrv.models.DenseNet(weights=None, num_classes=len(feats.XRV_PATHOLOGIES))
    save_file(model.state_dict(), tmp_path / "xrv.safetensors")
    scorer = feats.xrv_scorer(tmp_path / "xrv.safetensors")
    assert scorer.probs(blobs(1)).shape == (1, 18) and len(scorer.findings) == 18


def test_inception_from_local_safetensors(tmp_path, blobs):
    from unittest import mock

    from safetensors.torch import save_file
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # build random weights without any download: skip the weight loading once
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"), mock.patch(
        "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}
    ):
        state = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "inception.safetensors")
    extractor = feats.make_extractor("inception", inception_weights=tmp_path / "inception.safetensors")
    out = feats.extract_features(extractor, blobs(2))
    assert out.shape == (2, 2048)


def test_ms_ssim_settings_and_diversity(blobs):
    assert ms_ssim_settings(256) == (11, (0.0448, 0.2856, 0.3001, 0.2363, 0.1333))
    kernel, betas = ms_ssim_settings(64)
    assert kernel == 11 and len(betas) == 3 and sum(betas) == pytest.approx(1.0)
    same = blobs(1, 64).repeat(4, 1, 1, 1)
    varied = blobs(4, 64, seed=3)
    images = torch.cat([same, varied])
    result = ms_ssim_diversity(images, {"copy": [0, 1, 2, 3], "varied": [4, 5, 6, 7]})
    assert result["per_prompt"]["copy"] == pytest.approx(1.0, abs=1e-4)
    assert result["per_prompt"]["varied"] < 0.9
    small = ms_ssim_diversity(blobs(3, 16), {"a": [0, 1, 2]})
    assert 0 <= small["ms_ssim_mean"] <= 1
