"""The judge trained also on autoencoder reconstructions: what it sees, what it reports, its option errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medsd.cli import main
from medsd.phantom import judge as J
from medsd.phantom import render as P
from medsd.phantom.reconstruct import reconstruct_images


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("recon") / "data"
    P.write_phantom_dataset(data, n=24, size=32, seed=3, workers=1, progress=False)
    return data


def test_reconstructions_are_uint8_images_of_the_same_shape_and_deterministic(tiny_model_dir: Path) -> None:
    images = (torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    recon = reconstruct_images(tiny_model_dir, images, batch_size=2)  # a model folder: its vae/
    assert recon.dtype == torch.uint8 and recon.shape == images.shape
    assert not torch.equal(recon, images)  # a random autoencoder does not give the image back
    assert torch.equal(recon, reconstruct_images(tiny_model_dir / "vae", images))
    as_float = reconstruct_images(tiny_model_dir, images.float() / 255)  # float in, float out, same pictures
    assert as_float.dtype == torch.float32 and 0 <= as_float.min() and as_float.max() <= 1
    assert (as_float * 255 - recon.float()).abs().max() <= 0.5 + 1e-3


def test_training_draws_reconstructions_in_their_share(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    real_augment = J._augment
    monkeypatch.setattr(J, "_augment", lambda x, g: (seen.append(x.clone()), real_augment(x, g))[1])
    x = torch.zeros(16, 1, 32, 32, dtype=torch.uint8)
    alt = torch.full_like(x, 255)
    y, sides = torch.zeros(16, len(J.PHANTOM_FINDINGS)), torch.full((16, len(J.LATERAL_FINDINGS), 2), float("nan"))
    severity = torch.full((16, len(J.PHANTOM_FINDINGS)), float("nan"))
    for share, expected in ((1.0, 1.0), (0.0, 0.0), (0.5, 0.5)):
        seen.clear()
        model = J.PhantomClassifier(input_size=32).to(memory_format=torch.channels_last)
        J._fit(model, x, y, sides, severity, epochs=8, batch_size=8, lr=1e-3, seed=0, x_alt=alt, alt_share=share)
        drawn = torch.cat([s.flatten(1).mean(1) for s in seen])  # 0 = the image, 1 = its reconstruction
        assert set(drawn.tolist()) <= {0.0, 1.0} and drawn.mean().item() == pytest.approx(expected, abs=0.15)


def test_judge_trained_on_reconstructions_reports_their_auc(tiny_model_dir: Path, phantom_set: Path,
                                                            tmp_path: Path) -> None:
    metrics = J.train_reference_classifier(phantom_set, tmp_path / "clf", epochs=1, batch_size=8, input_size=32,
                                           val_fraction=0.3, autoencoder=tiny_model_dir, reconstruction_share=0.5)
    saved = json.loads((tmp_path / "clf" / "metrics.json").read_text())
    assert set(saved["auc_reconstructed"]) == set(J.PHANTOM_FINDINGS) == set(saved["auc"])
    assert saved["autoencoder"] == str(tiny_model_dir) and saved["reconstruction_share"] == 0.5
    assert json.dumps(metrics["auc_reconstructed"]) == json.dumps(saved["auc_reconstructed"])  # NaN: one class
    plain = J.train_reference_classifier(phantom_set, tmp_path / "plain", epochs=1, batch_size=8, input_size=32,
                                         val_fraction=0.3)
    assert "auc_reconstructed" not in plain and "autoencoder" not in plain


@pytest.mark.parametrize(("extra", "messages"), [
    (["--reconstruction-share", "1.5"], ["--reconstruction-share must be in [0, 1], got 1.5"]),
    (["--autoencoder", "{tmp}/no_such_vae"], ["--autoencoder=", "holds no AutoencoderKL"]),
    (["--autoencoder", "{tmp}/truncated_vae"],
     ["--autoencoder=", "cannot be loaded (OSError); train it again or pass another folder"]),
])
def test_classifier_option_errors_exit_2(extra: list[str], messages: list[str], phantom_set: Path, tmp_path: Path,
                                         tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truncated = tmp_path / "truncated_vae"
    shutil.copytree(tiny_model_dir / "vae", truncated)
    for weights in truncated.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:1000])
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    code = main(["data", "phantom-classifier", "--data", str(phantom_set), "--out", str(tmp_path / "clf"),
                 "--epochs", "1", "--input-size", "32", *args])
    err = capsys.readouterr().err
    assert code == 2 and all(m in err for m in messages) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "clf" / "model.safetensors").exists()
