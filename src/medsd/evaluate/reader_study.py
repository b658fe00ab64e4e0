"""Reader study kit: a blinded, shuffled mix of real and synthetic images, a hidden key and a scorer.

As in the budget paper's blinded comparison, a radiologist labels each case real or synthetic. Images are
re-encoded to one size and format without any metadata (generated PNGs carry a "synthetic" text chunk), and
renamed ``case_001.png`` ... in a random order; the key is written to a separate folder to keep from readers.
All cases share one colour mode, chosen by the real images (greyscale X-rays, colour histopathology or
packed MRI), so that the file format cannot give a synthetic image away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import binomtest

from medsd.errors import MedsdError
from medsd.evaluate.io import is_colour, list_images

ANSWER_COLUMNS = ["case", "answer (real/synthetic)", "confidence (1-5)", "comment"]


def _pick(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    files = [root / f for f in list_images(root)["file"]]
    if len(files) < n:
        raise MedsdError(f"{root} holds {len(files)} images, fewer than the {n} the reader study asks for")
    return [files[i] for i in sorted(rng.choice(len(files), n, replace=False))]


def _is_colour_file(path: Path) -> bool:
    with Image.open(path) as img:
        return is_colour(img)


def make_reader_study(
    real_dir: str | Path, synthetic_dir: str | Path, out: str | Path, n_each: int = 25, size: int = 256, seed: int = 0
) -> dict[str, Path]:
    """Write ``out/cases/case_XXX.png``, ``out/answer_sheet.csv`` and the hidden ``out/key/key.csv``."""
    rng = np.random.default_rng(seed)
    sources = [(p, "real") for p in _pick(Path(real_dir), n_each, rng)]
    sources += [(p, "synthetic") for p in _pick(Path(synthetic_dir), n_each, rng)]
    order = rng.permutation(len(sources))
    colour = any(_is_colour_file(path) for path, truth in sources if truth == "real")
    out = Path(out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    (out / "key").mkdir(exist_ok=True)
    key_rows = []
    for number, index in enumerate(order, start=1):
        source, truth = sources[index]
        case = f"case_{number:03d}"
        with Image.open(source) as img:
            # a fresh image: no text chunks, EXIF, original size or colour mode can give the source away
            clean = img.convert("RGB" if colour else "L").resize((size, size), Image.BICUBIC)
            clean.save(out / "cases" / f"{case}.png", optimize=False)
        key_rows.append({"case": case, "truth": truth, "source": str(source)})
    pd.DataFrame(key_rows).to_csv(out / "key" / "key.csv", index=False)
    sheet = pd.DataFrame({c: [""] * len(key_rows) for c in ANSWER_COLUMNS})
    sheet["case"] = [r["case"] for r in key_rows]
    sheet.to_csv(out / "answer_sheet.csv", index=False)
    (out / "README.txt").write_text(
        "Reader study: each image in cases/ is either a real image or a synthetic one.\n"
        "Fill answer_sheet.csv: answer = real or synthetic, confidence 1 (guess) to 5 (certain).\n"
        "Do not open key/ (the study organiser keeps it).\n"
    )
    return {"cases": out / "cases", "sheet": out / "answer_sheet.csv", "key": out / "key" / "key.csv"}


def score_reader_study(key_csv: str | Path, answers_csv: str | Path) -> dict:
    """Accuracy of the reader at telling synthetic from real, with a binomial test against guessing (50 %)."""
    key = pd.read_csv(key_csv)
    answers = pd.read_csv(answers_csv)
    column = next((c for c in answers.columns if str(c).lower().startswith("answer")), None)
    if column is None or "case" not in answers.columns:
        raise MedsdError(f"{answers_csv} needs a 'case' column and an 'answer' column (real/synthetic)")
    merged = key.merge(answers[["case", column]], on="case", how="left")
    given = merged[column].astype(str).str.strip().str.lower().str[:1]
    valid = given.isin(["r", "s"])
    if not valid.any():
        raise MedsdError(f"{answers_csv} has no answers; write 'real' or 'synthetic' for each case")
    truth = merged["truth"].str[:1]
    correct = (given == truth)[valid]
    synthetic = (truth == "s")[valid]
    n, k = int(valid.sum()), int(correct.sum())
    return {
        "n_answered": n,
        "n_cases": len(key),
        "accuracy": k / n,
        "synthetic_detected": float(correct[synthetic].mean()) if synthetic.any() else None,
        "real_recognised": float(correct[~synthetic].mean()) if (~synthetic).any() else None,
        "p_value_vs_chance": float(binomtest(k, n, 0.5).pvalue),
        "confusion": {
            "real_called_real": int(((truth == "r") & (given == "r"))[valid].sum()),
            "real_called_synthetic": int(((truth == "r") & (given == "s"))[valid].sum()),
            "synthetic_called_real": int(((truth == "s") & (given == "r"))[valid].sum()),
            "synthetic_called_synthetic": int(((truth == "s") & (given == "s"))[valid].sum()),
        },
    }
