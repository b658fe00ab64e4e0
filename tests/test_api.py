"""The top-level Python API: `medsd.generate(...)` is callable and `medsd.generate.*` stays a package."""

from __future__ import annotations

from pathlib import Path

import medsd


def test_medsd_generate_is_the_generation_api(tiny_model_dir: Path, tmp_path: Path) -> None:
    table = medsd.generate(
        str(tiny_model_dir), ["a chest x-ray with cardiomegaly"], num_images=2, steps=2, height=32, width=32,
        out_dir=tmp_path, device="cpu", progress=False,
    )
    assert len(table) == 2 and (tmp_path / "generation_results.csv").is_file()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(Path(f).name for f in table["file"])
    from medsd.generate.interpolate import interpolate

    assert callable(interpolate) and callable(medsd.generate.generate)
