"""`medsd data export`: a recipe's samples as PNG files plus `labels.csv`, the folder every evaluation reads.

Sources whose samples are not image files (PI-CAI studies, PCam's HDF5 rows) need this before `medsd evaluate`:
the exported images are exactly what training sees (preprocessed, prepared cache used when it matches), as
8-bit greyscale or RGB PNGs, and `labels.csv` has a `Path` column, the label columns (1 / 0, blank = unknown),
`patient_id` and `prompt`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from medsd.data.config import DataConfig
from medsd.data.dataset import build_dataset
from medsd.data.images import UnreadableImage

log = logging.getLogger(__name__)


def export_samples(cfg: DataConfig, out: str | Path, split: str | None = None, limit: int | None = None) -> dict:
    """Write `out/images/NNNNNN.png` and `out/labels.csv` for the samples of `split` (default `cfg.split`)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    ds = build_dataset(cfg.model_copy(update={"augment": False}), split)
    count = len(ds) if limit is None else min(limit, len(ds))
    rows, skipped = [], []
    for i in tqdm(range(count), desc="export", unit="img"):
        try:
            pixels = ds.load_pixels(i)
        except UnreadableImage as err:
            skipped.append((err.path, err.reason))
            continue
        array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
        name = f"images/{i:06d}.png"
        Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).save(out / name)
        row = ds.frame.loc[i]
        rows.append({"Path": name, "patient_id": row["patient_id"], "prompt": row["prompt"],
                     **{label: row[label] for label in ds.pathologies}})
    frame = pd.DataFrame(rows, columns=["Path", "patient_id", "prompt", *ds.pathologies])
    frame.to_csv(out / "labels.csv", index=False)
    for path, reason in skipped:
        log.warning("skipped unreadable sample %s (%s)", path, reason)
    return {"out": str(out), "written": len(rows), "skipped": skipped, "pathologies": ds.pathologies}
