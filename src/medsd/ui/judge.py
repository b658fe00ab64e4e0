"""The judge beside each image: per-finding probabilities from the phantom reference classifier.

It is the same scorer `medsd evaluate faithfulness --space phantom` uses (`medsd.evaluate.features`), so a
score on the page is the number the report would give that image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsd.errors import MedsdError

log = logging.getLogger(__name__)


@dataclass
class Judge:
    """Scores images with a classifier: `score(files)` → one {finding: probability} per file."""

    findings: list[str]
    source: str
    _probs: object  # Scorer.probs: images [B, 1|3, H, W] in [0, 1] -> probabilities [B, F]

    @torch.no_grad()
    def score(self, files: Sequence[str | Path]) -> list[dict[str, float]]:
        if not files:
            return []
        images = torch.stack([_as_tensor(f) for f in files])
        probs = self._probs(images).float().cpu().numpy()
        return [{name: float(p) for name, p in zip(self.findings, row, strict=True)} for row in probs]


def load_judge(folder: str | Path) -> Judge:
    """The phantom reference classifier in `folder` (model.safetensors + config.json) as a Judge."""
    from medsd.evaluate.features import load_phantom_classifier, phantom_scorer

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MedsdError(f"--judge {str(folder)!r} is not a folder; pass the phantom reference classifier folder "
                         "(the demo writes demo_out/classifier), or leave --judge out")
    scorer = phantom_scorer(load_phantom_classifier(folder))
    return Judge(findings=scorer.findings, source=str(folder.resolve()), _probs=scorer.probs)


def default_judge_folder(runs: str | Path | None) -> Path | None:
    """The demo's layout: the reference classifier lives in `classifier/` beside `runs/`."""
    if runs is None:
        return None
    candidate = Path(runs).expanduser().resolve().parent / "classifier"
    return candidate if (candidate / "model.safetensors").is_file() else None


def _as_tensor(path: str | Path) -> torch.Tensor:
    """A PNG as float [3, H, W] in [0, 1]; gray and 16-bit images are scaled by their bit depth."""
    with Image.open(path) as img:
        if img.mode.startswith("I"):
            gray = np.asarray(img, dtype=np.float32) / 65535.0
            array = np.repeat(gray[:, :, None], 3, axis=2)
        else:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)
