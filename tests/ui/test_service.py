"""What the page's buttons do, without a browser: medsd's own generation into a folder per request, the
PNGs read back with their metadata and judge scores, progress per denoising step, adapters, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsd.errors import MedsdError
from medsd.ui.catalog import build_catalog
from medsd.ui.judge import load_judge
from medsd.ui.service import Choice, GenerationService


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, ui_root: Path, judge_dir: Path, tmp_path_factory) -> GenerationService:
    catalog = build_catalog([str(tiny_model_dir)], ui_root / "runs")
    return GenerationService(catalog, tmp_path_factory.mktemp("ui_out"), load_judge(judge_dir), device="cpu")


def _choice(service: GenerationService, **kw) -> Choice:
    return Choice(model=service.catalog.models[0].name, **kw)


def test_generate_writes_medsd_pngs_and_reads_back_metadata_scores_and_progress(service) -> None:
    seen: list[float] = []
    batch = service.generate("A chest X-ray with edema", _choice(service, num_images=3, negative_prompt="noise"),
                             steps=4, guidance=2.0, seed=10, progress=lambda f, desc: seen.append(f))
    assert [p.name for p in batch.folder.iterdir() if p.suffix == ".png"] != []
    assert len(batch.images) == 3 and batch.folder.parent == service.out_dir
    for k, image in enumerate(batch.images):
        assert image.path == batch.folder / f"{k:06d}.png"
        assert image.metadata["seed"] == str(10 + k) and image.metadata["negative_prompt"] == "noise"
        assert image.metadata["steps"] == "4" and image.metadata["synthetic"] == "true"
        assert set(image.scores) == set(service.judge.findings)
        assert all(0.0 <= p <= 1.0 for p in image.scores.values())
        assert f"seed {10 + k}" in image.caption
    table = batch.table()
    assert list(table.columns) == ["#", "seed", "prompt", *service.judge.findings] and len(table) == 3
    assert batch.downloads()[-1].endswith("generation_results.csv") and len(batch.downloads()) == 4
    # One report per U-Net call (4 DDIM steps, one batch), rising to 1.
    denoising = seen[1:-1]
    assert len(denoising) == 4 and denoising == sorted(denoising) and seen[-1] == 1.0


def test_the_same_settings_give_the_same_pixels(service) -> None:
    a = service.generate("A chest X-ray", _choice(service, num_images=1), steps=3, guidance=3.0, seed=4)
    b = service.generate("A chest X-ray", _choice(service, num_images=1), steps=3, guidance=3.0, seed=4)
    assert a.folder != b.folder
    assert np.array_equal(np.asarray(Image.open(a.images[0].path)), np.asarray(Image.open(b.images[0].path)))


def test_lora_and_embeddings_from_the_runs_folder_are_applied_and_recorded(service) -> None:
    choice = _choice(service, num_images=1, lora="runs/lora", lora_scale=0.5, embeddings=("runs/ti",))
    batch = service.generate("A chest X-ray with <cardiomegaly>", choice, steps=2, guidance=2.0, seed=0)
    adapters = batch.images[0].metadata["adapters"]
    assert "lora:" in adapters and "@0.5#" in adapters and "ti:" in adapters and "<cardiomegaly>" in adapters
    plain = service.generate("A chest X-ray with <cardiomegaly>", _choice(service, num_images=1), steps=2,
                             guidance=2.0, seed=0)
    assert plain.images[0].metadata["adapters"] == ""  # another choice reloads the plain model


def test_every_finding_and_interpolation(service) -> None:
    batch = service.all_labels(_choice(service, num_images=1), steps=2, guidance=2.0, seed=0)
    prompts = [image.metadata["prompt"] for image in batch.images]
    assert len(prompts) == 14 and "A chest X-ray with no finding" in prompts  # no finding + 13 CheXpert findings
    frames = service.interpolate("A chest X-ray with no finding", "A chest X-ray with edema", 3, "embedding",
                                 _choice(service), steps=2, guidance=2.0, seed=1)
    assert [image.metadata["alpha"] for image in frames.images] == ["0.0", "0.5", "1.0"]
    assert (frames.folder / "strip.png").is_file()


def test_inpaint_keeps_the_unmasked_pixels(service) -> None:
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 4:28] = True
    batch = service.inpaint(image, mask, "A chest X-ray with edema", _choice(service, num_images=2), steps=3,
                            guidance=2.0, seed=0)
    assert np.array_equal(np.asarray(Image.open(batch.folder / "mask_drawn.png")) > 0, mask)
    for item in batch.images:
        out = np.asarray(Image.open(item.path).convert("RGB"))
        assert np.array_equal(out[~mask], image[~mask]) and (out[mask] != image[mask]).any()


def test_bad_requests_are_medsd_errors(service) -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    cases = [
        (lambda: service.generate("  ", _choice(service), 2, 2.0, 0), "prompt is empty"),
        (lambda: service.generate("x", _choice(service, scheduler="warp"), 2, 2.0, 0), "scheduler 'warp'"),
        (lambda: service.generate("x", _choice(service), 0, 2.0, 0), "at least 1"),
        (lambda: service.generate("x", Choice(model="nope"), 2, 2.0, 0), "not offered"),
        (lambda: service.inpaint(image, np.zeros((32, 32)), "x", _choice(service), 2, 2.0, 0), "no mask"),
        (lambda: service.inpaint(None, None, "x", _choice(service), 2, 2.0, 0), "no image"),
        (lambda: service.inpaint(np.zeros((31, 31, 3), np.uint8), np.ones((31, 31)), "x", _choice(service), 2, 2.0,
                                 0), "multiples of"),
    ]
    for call, message in cases:
        with pytest.raises(MedsdError, match=message):
            call()
