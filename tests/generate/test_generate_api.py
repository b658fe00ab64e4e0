"""`generate(...)`: files, metadata, the results table, label modes, resume and errors before work."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsd.errors import MedsdError
from medsd.generate import generate
from medsd.generate.jobs import CHEXPERT_FINDINGS, prompt_for_labels
from medsd.generate.metadata import BASE_COLUMNS, RESULTS_CSV, read_png_metadata

FAST = {"steps": 2, "guidance": 3.0, "scheduler": "ddim", "progress": False}


def test_prompts_make_files_with_metadata(tiny, tmp_path):
    prompts = ["a chest x-ray with edema", "0.3*a normal chest x-ray AND 0.7*a chest x-ray with edema"]
    frame = generate(tiny, prompts, out_dir=tmp_path, num_images=3, batch_size=4, seed=100,
                     negative_prompt="blurry", dicom=True, **FAST)
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 6 and len(frame) == 6
    table = pd.read_csv(tmp_path / RESULTS_CSV, keep_default_na=False)
    assert list(table.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    assert table["seed"].tolist() == list(range(100, 106))
    assert table["prompt"].tolist() == [prompts[0]] * 3 + [prompts[1]] * 3
    meta = read_png_metadata(tmp_path / table["file"][4])
    assert meta["prompt"] == prompts[1] and meta["negative_prompt"] == "blurry" and meta["seed"] == "104"
    assert meta["steps"] == "2" and meta["scheduler"] == "ddim" and meta["guidance"] == "3.0"
    assert meta["synthetic"] == "true" and meta["model"] == tiny.source
    with Image.open(pngs[0]) as img:
        assert img.size == (32, 32)


def test_dicom_is_marked_synthetic_without_patient_data(tiny, tmp_path):
    import pydicom

    generate(tiny, "a chest x-ray", out_dir=tmp_path, num_images=2, dicom=True, **FAST)
    a, b = (pydicom.dcmread(p) for p in sorted(tmp_path.glob("*.dcm")))
    assert list(a.ImageType) == ["DERIVED", "SECONDARY"] and a.BurnedInAnnotation == "NO"
    assert a.ConversionType == "SYN" and "SYNTHETIC" in str(a.ImageComments)
    assert a.SOPInstanceUID != b.SOPInstanceUID and a.StudyInstanceUID != b.StudyInstanceUID
    assert str(a.PatientName) == "" and a.PatientID == "" and a.PatientBirthDate == ""
    assert a.pixel_array.shape == (32, 32)


def test_all_single_findings(tiny, tmp_path):
    frame = generate(tiny, all_labels=True, out_dir=tmp_path, num_images=2, batch_size=8, **FAST)
    assert len(list(tmp_path.glob("*.png"))) == 14 * 2 == len(frame)
    table = pd.read_csv(tmp_path / RESULTS_CSV)
    assert set(CHEXPERT_FINDINGS) <= set(table.columns)
    first, cardio = table.iloc[0], table[table["Cardiomegaly"] == 1]
    assert first["No Finding"] == 1 and first["prompt"] == "A chest X-ray with no finding"
    assert len(cardio) == 2 and cardio["prompt"].iloc[0] == "A chest X-ray with cardiomegaly"
    assert (table[CHEXPERT_FINDINGS].sum(axis=1) == 1).all()


def test_label_combinations_from_csv(tiny, tmp_path):
    csv = tmp_path / "labels.csv"
    pd.DataFrame({
        "Path": [f"p{i}.jpg" for i in range(6)],
        "No Finding": [1, None, None, None, None, 1],
        "Cardiomegaly": [None, 1, 1, 1, -1, 0],
        "Edema": [None, 1, None, 1, None, None],
    }).to_csv(csv, index=False)
    out = tmp_path / "out"
    generate(tiny, all_labels=True, labels_from=csv, out_dir=out, num_images=1, **FAST)
    table = pd.read_csv(out / RESULTS_CSV)
    # combinations: none (3 rows: two "No Finding" + one uncertain), cardiomegaly+edema (2), cardiomegaly (1)
    assert table["prompt"].tolist() == [
        "A chest X-ray with no finding", "A chest X-ray with cardiomegaly and edema", "A chest X-ray with cardiomegaly"
    ]
    assert table["data_count"].tolist() == [3, 2, 1]
    assert table[["No Finding", "Cardiomegaly", "Edema"]].values.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 0]]
    # proportional: 12 images in total, split 3:2:1 like the data
    frame = generate(tiny, all_labels=True, labels_from=csv, proportional=True, out_dir=tmp_path / "prop",
                     num_images=12, batch_size=12, **FAST)
    assert frame["data_count"].value_counts().to_dict() == {3: 6, 2: 4, 1: 2}
    assert frame["file"].tolist() == [f"{k:06d}.png" for k in range(12)]


def test_proportional_counts():
    from medsd.generate.jobs import proportional_counts

    assert proportional_counts(10, [5, 3, 2]) == [5, 3, 2]
    assert proportional_counts(4, [1, 1, 1]) == [2, 1, 1] and sum(proportional_counts(7, [9, 5, 1, 1])) == 7


def test_prompt_for_labels():
    assert prompt_for_labels(["Cardiomegaly", "Edema", "Pleural Effusion"]) == (
        "A chest X-ray with cardiomegaly, edema and pleural effusion"
    )
    assert prompt_for_labels([]) == "A chest X-ray with no finding"
    assert prompt_for_labels(["No Finding"], template="{labels}", no_finding="normal") == "normal"


def test_resume_skips_existing_and_same_seed_same_image(tiny, tmp_path):
    generate(tiny, "a chest x-ray", out_dir=tmp_path, num_images=3, **FAST)
    first = {p.name: np.asarray(Image.open(p)) for p in tmp_path.glob("*.png")}
    stamp = (tmp_path / "000000.png").stat().st_mtime_ns
    (tmp_path / "000001.png").unlink()
    frame = generate(tiny, "a chest x-ray", out_dir=tmp_path, num_images=3, **FAST)
    assert len(frame) == 3 and (tmp_path / "000000.png").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "000001.png")), first["000001.png"])


def test_prompts_file(tiny, tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("# findings\na chest x-ray with edema\n\na chest x-ray with pneumothorax\n")
    frame = generate(tiny, prompts_file=txt, out_dir=tmp_path / "out", num_images=1, **FAST)
    assert frame["prompt"].tolist() == ["a chest x-ray with edema", "a chest x-ray with pneumothorax"]
    csv = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": ["edema", "normal"], "Edema": [1, None], "Path": ["a", "b"]}).to_csv(csv, index=False)
    generate(tiny, prompts_file=csv, out_dir=tmp_path / "csv", num_images=2, **FAST)
    table = pd.read_csv(tmp_path / "csv" / RESULTS_CSV)
    assert table["Edema"].tolist() == [1, 1, 0, 0]


def test_errors_before_any_work(tiny, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MedsdError, match="not a number"):
        generate(tiny, ["fine", "x*<edema> AND 0.5*<healthy>"], out_dir=out, **FAST)
    with pytest.raises(MedsdError, match="not a number"):  # before the (missing) model is even looked at
        generate(str(tmp_path / "no_such_model"), "x*<edema> AND 0.5*<healthy>", out_dir=out, **FAST)
    with pytest.raises(MedsdError, match="does not exist"):
        generate(str(tmp_path / "no_such_model"), "x", out_dir=out, **FAST)
    with pytest.raises(MedsdError, match="could not load model"):
        generate("nobody/no-such-model", "x", out_dir=out, **FAST)  # hub id while offline (HF_HUB_OFFLINE=1)
    with pytest.raises(MedsdError, match="multiples of 2"):
        generate(tiny, "x", out_dir=out, height=33, **FAST)
    with pytest.raises(MedsdError, match="exactly one"):
        generate(tiny, "x", all_labels=True, out_dir=out, **FAST)
    with pytest.raises(MedsdError, match="scheduler"):
        generate(tiny, "x", out_dir=out, steps=2, scheduler="nope", progress=False)
    assert not out.exists() or not list(out.glob("*.png"))


def test_warnings_for_unknown_token_and_long_prompt(tiny, tmp_path, caplog):
    long_prompt = "a chest x-ray with " + " and ".join(["cardiomegaly"] * 60) + " and a pacemaker"
    with caplog.at_level(logging.WARNING, logger="medsd.generate.loading"):
        generate(tiny, ["a chest x-ray with <mystery>", long_prompt], out_dir=tmp_path, **FAST)
    text = caplog.text
    assert "<mystery>" in text and "Known tokens: none" in text
    assert "is cut" in text and "pacemaker" in text
