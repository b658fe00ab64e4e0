"""Evaluation in colour: channels survive loading, feature spaces, the report's per-channel table, the reader kit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsd.evaluate import features as feats
from medsd.evaluate.channels import channel_statistics, split_channels
from medsd.evaluate.fid import fid_from_features
from medsd.evaluate.io import load_image_folder, read_image
from medsd.evaluate.reader_study import make_reader_study
from medsd.evaluate.suite import ReportInputs, build_report


def stained(blobs, n: int, seed: int, size: int = 32) -> torch.Tensor:
    """H&E-like colour images [n, 3, size, size]: pink background, purple nuclei where the blobs are."""
    nuclei = blobs(n, size, seed=seed)
    pink, purple = torch.tensor([0.92, 0.65, 0.80]), torch.tensor([0.40, 0.15, 0.60])
    return (pink.view(1, 3, 1, 1) * (1 - nuclei) + purple.view(1, 3, 1, 1) * nuclei).clamp(0, 1)


def save_folder(path, images: torch.Tensor) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        array = (image.numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).save(path / f"{i:03d}.png")


def grey_of(images: torch.Tensor) -> torch.Tensor:
    return feats.to_channels(images, 1)


def colour_net() -> torch.nn.Module:
    """A fixed random 3-channel conv net with ``.features``: a colour feature space without a weights file."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
    ).eval()
    net.features = net.forward
    return net


def test_channels_survive_loading(tmp_path, blobs):
    colour = stained(blobs, 4, seed=1)
    save_folder(tmp_path / "colour", colour)
    images, _ = load_image_folder(tmp_path / "colour", None, channels=None)
    assert images.shape == (4, 3, 32, 32)
    assert torch.allclose(images, colour, atol=0.5 / 255 + 1e-6)
    # the default stays greyscale (what every caller got before); RGB becomes luminance as PIL computes it
    grey, _ = load_image_folder(tmp_path / "colour", None)
    assert grey.shape == (4, 1, 32, 32)
    assert torch.allclose(grey, grey_of(images), atol=1 / 255)
    # a greyscale set saved as RGB (equal channels) is greyscale, bit for bit as before
    plain = blobs(3, 32, seed=2)
    rgb_grey = tmp_path / "rgb_grey"
    save_folder(rgb_grey, plain.expand(-1, 3, -1, -1))
    auto, _ = load_image_folder(rgb_grey, 16, channels=None)
    before, _ = load_image_folder(rgb_grey, 16)
    assert auto.shape == (3, 1, 16, 16) and torch.equal(auto, before)
    # one colour image makes the set colour; its grey images are repeated
    save_folder(tmp_path / "mixed", plain[:2])
    Image.fromarray((colour[0].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / "mixed" / "c.png")
    mixed, _ = load_image_folder(tmp_path / "mixed", None, channels=None)
    assert mixed.shape == (3, 3, 32, 32) and torch.equal(mixed[0, 0], mixed[0, 2])
    assert read_image(tmp_path / "colour" / "000.png", 8, channels=3).shape == (3, 8, 8)


def test_colour_fid_tells_a_colour_set_from_the_same_set_in_grey(tmp_path, blobs):
    colour = stained(blobs, 64, seed=3)
    save_folder(tmp_path / "real", colour[:32])
    save_folder(tmp_path / "colour", colour[32:])  # other images of the same kind
    save_folder(tmp_path / "grey", grey_of(colour[32:]).expand(-1, 3, -1, -1))  # the same images without colour
    extractor = feats.make_extractor("phantom", phantom_classifier=colour_net())

    def fid(generated: str, channels: int | None) -> float:
        real, _ = load_image_folder(tmp_path / "real", 32, channels=channels)
        other, _ = load_image_folder(tmp_path / generated, 32, channels=real.shape[1])
        return fid_from_features(feats.extract_features(extractor, real), feats.extract_features(extractor, other))

    baseline, lost = fid("colour", None), fid("grey", None)
    print(f"FID colour vs colour {baseline:.4g}, colour vs grey {lost:.4g}")
    assert lost > 20 * baseline  # the colour set and the same set in grey differ clearly
    # read as greyscale (what evaluation did before) the two cannot be told apart
    assert fid("grey", 1) == pytest.approx(fid("colour", 1), rel=0.02)


def test_feature_spaces_get_the_channels_they_need(blobs, monkeypatch):
    colour = stained(blobs, 2, seed=4)
    seen = []

    class Recorder(torch.nn.Module):  # stands in for Inception-v3: records what it is fed
        def forward(self, x):
            seen.append(x)
            return [x.float().mean(dim=(2, 3))]

    monkeypatch.setattr(feats, "load_inception", lambda weights: Recorder())
    extractor = feats.make_extractor("inception", inception_weights="unused")
    extractor(colour)
    extractor(grey_of(colour))
    assert seen[0].shape == (2, 3, 32, 32) and seen[0].dtype == torch.uint8
    assert torch.equal(seen[0], (colour * 255).round().to(torch.uint8))  # colour reaches Inception as colour
    assert torch.equal(seen[1][:, 0], seen[1][:, 2])  # grey is repeated to RGB
    grey_net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    grey_net.features = grey_net.forward
    phantom = feats.phantom_extractor(grey_net)
    assert torch.allclose(phantom(colour), phantom(grey_of(colour)), atol=1e-6)  # a grey network sees luminance
    assert feats._xrv_input(colour).shape == (2, 1, 224, 224)  # torchxrayvision is greyscale too


def test_per_channel_statistics_find_the_wrong_channel(blobs):
    real = stained(blobs, 16, seed=5)
    generated = stained(blobs, 16, seed=6)
    generated[:, 1] = (generated[:, 1] + 0.25).clamp(0, 1)  # the "ADC" scan of every generated image is off
    stats = channel_statistics(real, generated, ["T2W", "ADC", "DWI"],
                               {"pool": lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)})
    w = {name: entry["wasserstein"] for name, entry in stats["per_channel"].items()}
    assert w["ADC"] > 0.2 and w["T2W"] < 0.05 and w["DWI"] < 0.05
    fid = {name: entry["fid"]["pool"] for name, entry in stats["per_channel"].items()}
    assert fid["ADC"] > 10 * max(fid["T2W"], fid["DWI"])
    assert stats["per_channel"]["ADC"]["generated_mean"] > stats["per_channel"]["ADC"]["real_mean"] + 0.2
    assert torch.equal(split_channels(real[:2])[3], real[1, 1:2])  # channel 1 of image 1


def test_report_in_colour(tmp_path, blobs):
    real_dir, gen_dir = tmp_path / "real", tmp_path / "gen"
    save_folder(real_dir, stained(blobs, 12, seed=7))
    generated = stained(blobs, 8, seed=8)
    generated[:, 2] *= 0.5
    save_folder(gen_dir / "images", generated)
    pd.DataFrame({"file": [f"images/{i:03d}.png" for i in range(8)],
                  "prompt": ["<metastasis>"] * 4 + ["<normal>"] * 4}).to_csv(gen_dir / "generation_results.csv")

    class PoolNet(torch.nn.Module):  # a colour feature space with the extractor protocol
        findings = ["Metastasis"]

        def features(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

        def forward(self, x):
            return x.mean(dim=(1, 2, 3))[:, None]

    metrics = build_report(ReportInputs(real=real_dir, generated=gen_dir, out=tmp_path / "report", train=real_dir,
                                        phantom_classifier=PoolNet(), size=32, channel_names=["H", "E", "D"]))
    assert metrics["sets"]["channels"] == 3
    assert set(metrics["channels"]["per_channel"]) == {"H", "E", "D"}
    per_channel = metrics["channels"]["per_channel"]
    assert per_channel["D"]["wasserstein"] > per_channel["H"]["wasserstein"]
    assert metrics["diversity"]["per_prompt"]["<normal>"] < 1.0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Channels" in html and "one row per channel" in html
    from medsd.evaluate.report import grid_image

    assert grid_image(generated[:4], ncols=4).mode == "RGB" and grid_image(grey_of(generated[:4])).mode == "L"


def test_reader_study_keeps_colour_and_one_mode_for_all_cases(tmp_path, blobs):
    save_folder(tmp_path / "real", stained(blobs, 4, seed=9))
    save_folder(tmp_path / "syn", grey_of(stained(blobs, 4, seed=10)))  # a give-away if modes differed
    paths = make_reader_study(tmp_path / "real", tmp_path / "syn", tmp_path / "kit", n_each=4, size=24)
    modes = {Image.open(p).mode for p in paths["cases"].glob("case_*.png")}
    assert modes == {"RGB"}
