"""The budget paper's augmentation protocol: best-validation checkpoint, its augmentations, ImageNet weights from a
local file, absolute counts next to ratios, colour sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from medsd.errors import MedsdError
from medsd.evaluate.augment import (
    AugmentConfig,
    ChannelDropout,
    augmentation_table,
    augmenter,
    build_classifier,
    evaluate_auc,
    run_augmentation,
    train_classifier,
)


def labelled(blobs, n: int, seed: int, colour: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Blob images; label 1 = full intensity, 0 = dimmed to 40 %; colour: the label sits in the red channel only."""
    labels = (np.arange(n) % 2).astype(float)[:, None]
    images = blobs(n, 32, seed=seed)
    gain = torch.tensor(0.4 + 0.6 * labels[:, 0], dtype=torch.float32).view(-1, 1, 1, 1)
    if not colour:
        return images * gain, labels
    return torch.cat([images * gain, images * 0.7, images * 0.7], dim=1), labels


def test_paper_augmentations_each_change_the_image(blobs):
    image = torch.cat([blobs(1, 32, seed=1)[0]] * 3)
    base = AugmentConfig(rotate_degrees=0, translate=0)
    for change in ({"hflip": True}, {"vflip": True}, {"rotate_degrees": 30}, {"translate": 0.2},
                   {"scale": (0.7, 0.8)}, {"intensity": 0.5}, {"noise_std": 0.1}, {"channel_dropout": 1.0}):
        transform = augmenter(base.model_copy(update=change))
        torch.manual_seed(3)
        outputs = [transform(image) for _ in range(4)]
        assert any(not torch.allclose(o, image) for o in outputs), change
        assert all(o.shape == image.shape and 0 <= o.min() and o.max() <= 1 for o in outputs), change
    torch.manual_seed(0)
    assert torch.equal(augmenter(base)(image), image)  # nothing on: the identity
    dropped = ChannelDropout(1.0)(image)
    assert int((dropped.flatten(1).abs().sum(dim=1) == 0).sum()) == 1  # exactly one scan blanked
    assert torch.equal(ChannelDropout(1.0)(image[:1]), image[:1])  # a grey image has no channel to lose


def test_imagenet_weights_from_a_local_file(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    save_file(reference.state_dict(), tmp_path / "resnet18.safetensors")
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    for name in ("resnet18.safetensors", "resnet18.pth"):
        model = build_classifier("resnet18", 2, tmp_path / name)
        assert torch.equal(model.conv1.weight, reference.conv1.weight)
        assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
        assert model.fc.out_features == 2
    save_file(torchvision.models.densenet121(weights=None).state_dict(), tmp_path / "densenet.safetensors")
    with pytest.raises(MedsdError, match="not a torchvision resnet18 state dict"):
        build_classifier("resnet18", 2, tmp_path / "densenet.safetensors")
    torch.save(reference, tmp_path / "pickled_model.pth")  # a whole pickled model is never unpickled
    with pytest.raises(MedsdError, match="weights_only"):
        build_classifier("resnet18", 2, tmp_path / "pickled_model.pth")


def test_best_validation_checkpoint_is_the_one_tested(blobs):
    train, val = labelled(blobs, 24, seed=1), labelled(blobs, 12, seed=2)
    config = AugmentConfig(image_size=16, batch_size=4, max_steps=6, eval_every=1, selection="best_val", lr=3e-3,
                           rotate_degrees=0, translate=0)
    model, info = train_classifier(*train, config, seed=0, val=val)
    history = np.array(info["val_history"])
    assert len(history) == 6 and history[:, 0].tolist() == list(range(1, 7))
    best_step = int(history[np.argmax(history[:, 1]), 0])  # first of the best
    assert info["selected_step"] == best_step and info["val_auc"] == pytest.approx(history[:, 1].max())
    assert np.mean(evaluate_auc(model, *val, config)) == pytest.approx(info["val_auc"])  # its weights, restored
    _, last = train_classifier(*train, config.model_copy(update={"selection": "last"}), seed=0, val=val)
    assert last["selected_step"] == 6 and last["val_history"] == []


def test_absolute_counts_next_to_ratios_with_mean_and_std(blobs):
    config = AugmentConfig(image_size=16, batch_size=4, max_steps=1, runs=2, ratios=[0.0, 0.25], real_count=8,
                           synthetic_counts=[20], selection="best_val", val_fraction=0.25, rotate_degrees=0)
    result = run_augmentation(labelled(blobs, 16, 1), labelled(blobs, 30, 2), labelled(blobs, 12, 3), ["Bright"],
                              config)
    rows = {r["name"]: r for r in result["conditions"]}
    assert list(rows) == ["real only", "real + 25% synthetic", "real + 20 synthetic", "synthetic only"]
    assert (rows["real only"]["n_real"], rows["real only"]["n_synthetic"]) == (8, 0)  # 16 - 4 held out → 8 drawn
    assert (rows["real + 25% synthetic"]["n_real"], rows["real + 25% synthetic"]["n_synthetic"]) == (8, 3)
    assert (rows["real + 20 synthetic"]["n_real"], rows["real + 20 synthetic"]["n_synthetic"]) == (8, 20)
    assert (rows["synthetic only"]["n_real"], rows["synthetic only"]["n_synthetic"]) == (0, 20)
    assert rows["real + 20 synthetic"]["ratio"] == pytest.approx(20 / 28)
    for row in rows.values():
        runs = row["auc_runs"]["Bright"]
        assert len(runs) == 2 and row["auc_mean"]["Bright"] == pytest.approx(np.mean(runs))
        assert row["auc_std"]["Bright"] == pytest.approx(np.std(runs))
        assert len(row["selected_steps"]) == 2 and all(v is not None for v in row["val_auc"])
    table = augmentation_table(result)
    assert "| real + 20 synthetic | 8 | 20 |" in table and "±" in table
    with pytest.raises(MedsdError, match="synthetic_counts"):
        run_augmentation(labelled(blobs, 4, 1), labelled(blobs, 4, 2), labelled(blobs, 4, 3), ["Bright"],
                         AugmentConfig(synthetic_counts=[0]))


def test_colour_sets_stay_colour(blobs):
    """A colour real set keeps its channels into the network; grey synthetic images join it as grey RGB."""
    from medsd.evaluate.augment import _prepare

    colour, _ = labelled(blobs, 2, 1, colour=True)
    prepared = _prepare(colour, 16)
    assert prepared.shape == (2, 3, 16, 16) and not torch.allclose(prepared[:, 0], prepared[:, 1], atol=0.1)
    grey = _prepare(labelled(blobs, 2, 1)[0], 16) * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(grey[:, 0] + 0.485, grey[:, 1] + 0.456, atol=1e-5)  # the same plane, ImageNet-normalised
    config = AugmentConfig(image_size=16, batch_size=4, max_steps=1, runs=1, ratios=[0.5], synthetic_only=False,
                           rotate_degrees=0)
    result = run_augmentation(labelled(blobs, 8, 1, colour=True), labelled(blobs, 8, 2), labelled(blobs, 8, 3, True),
                              ["Red"], config)
    assert result["conditions"][0]["n_synthetic"] == 8 and result["conditions"][0]["auc_mean"]["Red"] is not None
