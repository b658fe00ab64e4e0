"""PI-CAI source: the exact file layout, volumes of known geometry, the paper's slice rule and channel alignment.

Every scan is sampled from one analytic patient defined in physical (LPS, mm) coordinates: a prostate
ellipsoid, a tumour with one wide 4 mm cap (its largest cross-section is known), and two bright rods along z.
T2W, ADC and DWI are written with different spacings, origins, fields of view and directions (ADC flipped in
x, DWI rotated 6 degrees), so only resampling through the physical geometry lines the channels up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image

from medsd.data.config import DataConfig
from medsd.data.dataset import build_dataset
from medsd.data.picai import PicaiConfig, decode_study, prepare_study, study_table

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
ANGLE = np.deg2rad(6.0)
ROTATED = (np.cos(ANGLE), -np.sin(ANGLE), 0.0, np.sin(ANGLE), np.cos(ANGLE), 0.0, 0.0, 0.0, 1.0)
FLIPPED_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RODS = np.array([[-30.0, -20.0], [25.0, 30.0]])  # (x, y) offsets from the prostate centre
TUMOUR_OFFSET = np.array([8.0, 5.0, 12.0])  # cap centre relative to the prostate centre
# per scan: base value, gradient (per mm), rod brightness, tumour contrast (dark on T2W / ADC, bright on DWI)
FIELDS = {"t2w": (600.0, (2.0, 1.0, 0.5), 500.0, -300.0), "adc": (1400.0, (-1.0, 3.0, 0.0), 800.0, -900.0),
          "hbv": (50.0, (0.2, -0.3, 0.4), 60.0, 150.0)}


def voxel_points(size, spacing, origin, direction) -> np.ndarray:
    """Physical position of every voxel, array [z, y, x, 3] (the ITK convention origin + D @ (spacing * index))."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([xx, yy, zz], axis=-1) * np.asarray(spacing)
    return np.asarray(origin) + index @ np.asarray(direction, dtype=float).reshape(3, 3).T


def scan_value(points: np.ndarray, scan: str, centre: np.ndarray, tumour: bool) -> np.ndarray:
    base, gradient, rods, contrast = FIELDS[scan]
    rel = points - centre
    value = base + rel @ np.asarray(gradient)
    for rx, ry in RODS:  # rods along z: visible in every slice, they pin down x and y
        value = value + rods * np.exp(-((rel[..., 0] - rx) ** 2 + (rel[..., 1] - ry) ** 2) / (2 * 3.0**2))
    if tumour:
        value = value + contrast * np.exp(-np.sum((rel - TUMOUR_OFFSET) ** 2, axis=-1) / (2 * 4.0**2))
    return value


def prostate_mask(points, centre) -> np.ndarray:
    return (np.sum(((points - centre) / np.array([22.0, 16.0, 15.0])) ** 2, axis=-1) <= 1).astype(np.uint8)


def tumour_mask(points, centre, isup: int = 3) -> np.ndarray:
    """A 4 mm thick cap of radius 7 mm (the largest cross-section) on a thin 2 mm stalk reaching 10 mm below."""
    rel = points - centre - TUMOUR_OFFSET
    radial = np.hypot(rel[..., 0], rel[..., 1])
    cap = (np.abs(rel[..., 2]) <= 2.0) & (radial <= 7.0)
    stalk = (rel[..., 2] <= 0) & (rel[..., 2] >= -22.0) & (radial <= 2.0)
    return ((cap | stalk) * isup).astype(np.uint8)


def write_volume(path: Path, array: np.ndarray, geometry: dict, pixel=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    sitk.WriteImage(sitk.Cast(image, pixel or sitk.sitkInt16), str(path))


def scan_geometries(centre: np.ndarray, scale: float = 1.0) -> dict[str, dict]:
    """T2W 0.75 x 0.75 x 3 mm; ADC 2 x 2 x 3.6 mm flipped in x; DWI 1.6 x 1.6 x 4 mm rotated; other origins."""
    c = centre
    return {
        "t2w": {"size": (int(200 * scale), int(200 * scale), 32), "spacing": (0.75, 0.75, 3.0),
                "origin": tuple(c - np.array([75 * scale - 0.3, 75 * scale + 0.2, 47.3])), "direction": IDENTITY},
        "adc": {"size": (int(84 * scale), int(84 * scale), 27), "spacing": (2.0, 2.0, 3.6),
                "origin": tuple(c + np.array([83 * scale, -84 * scale + 1.1, -46.9])), "direction": FLIPPED_X},
        "hbv": {"size": (int(100 * scale), int(100 * scale), 24), "spacing": (1.6, 1.6, 4.0),
                "origin": tuple(c - np.array([72 * scale, 86 * scale, 45.5])), "direction": ROTATED},
    }


def write_study(images: Path, labels: Path, patient: str, study: str, centre, tumour: bool, scale: float = 1.0,
                prostate: bool = True) -> dict:
    """One study in PI-CAI's layout; returns its geometries."""
    geometries = scan_geometries(np.asarray(centre, dtype=float), scale)
    for scan, geometry in geometries.items():
        points = voxel_points(**geometry)
        write_volume(images / patient / f"{patient}_{study}_{scan}.mha", scan_value(points, scan, centre, tumour),
                     geometry)
    t2w = geometries["t2w"]
    points = voxel_points(**t2w)
    name = f"{patient}_{study}.nii.gz"
    lesion = tumour_mask(points, centre) if tumour else np.zeros(points.shape[:3], np.uint8)
    write_volume(labels / "csPCa_lesion_delineations/human_expert/resampled" / name, lesion, t2w, sitk.sitkUInt8)
    if prostate:
        write_volume(labels / "anatomical_delineations/whole_gland/AI/Guerbet23" / name,
                     prostate_mask(points, centre), t2w, sitk.sitkUInt8)
    return geometries


def physical_of_pixels(grid, index: int) -> np.ndarray:
    """Physical position [H, W, 3] of every pixel of slice `index` of a SimpleITK grid."""
    size = grid.GetSize()
    points = voxel_points((size[0], size[1], 1), grid.GetSpacing(), grid.GetOrigin(), grid.GetDirection())[0]
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    return points + direction @ np.array([0.0, 0.0, grid.GetSpacing()[2] * index])


def rod_centroids(channel: np.ndarray, points: np.ndarray, centre) -> np.ndarray:
    """Intensity-weighted physical (x, y) centre of each rod in one channel (background removed by a local fit)."""
    found = []
    for rx, ry in RODS:
        rel = points[..., :2] - np.asarray(centre)[:2] - [rx, ry]
        near = np.hypot(rel[..., 0], rel[..., 1]) < 9.0
        ring = (np.hypot(rel[..., 0], rel[..., 1]) >= 9.0) & (np.hypot(rel[..., 0], rel[..., 1]) < 12.0)
        weights = np.clip(channel[near] - np.median(channel[ring]), 0, None)
        found.append((points[near][:, :2] * weights[:, None]).sum(axis=0) / weights.sum())
    return np.array(found)


@pytest.fixture(scope="module")
def picai_tree(tmp_path_factory) -> dict:
    """PI-CAI layout: images/<patient>/..., labels/ with marksheet, lesion and prostate masks."""
    top = tmp_path_factory.mktemp("picai")
    images, labels = top / "images", top / "labels"
    positive_centre = np.array([12.0, -30.0, 40.0])
    negative_centre = np.array([-6.0, 14.0, -22.0])
    geometry = write_study(images, labels, "10001", "1000001", positive_centre, tumour=True)
    write_study(images, labels, "10002", "1000002", negative_centre, tumour=False)
    sheet = labels / "clinical_information" / "marksheet.csv"
    sheet.parent.mkdir(parents=True)
    pd.DataFrame({"patient_id": [10001, 10002], "study_id": [1000001, 1000002], "case_ISUP": [3, 1],
                  "case_csPCa": ["YES", "NO"]}).to_csv(sheet)
    return {"top": top, "images": images, "labels": labels, "geometry": geometry,
            "centres": {"10001": positive_centre, "10002": negative_centre}}


_PREPARED: dict[tuple[str, str], dict] = {}


def _study(tree, patient: str) -> dict:
    """prepare_study of one patient's study with the paper's settings (once per test module: ~1 s each)."""
    key = (str(tree["top"]), patient)
    if key not in _PREPARED:
        frame, _ = study_table(PicaiConfig(), tree["images"])
        path = frame.loc[frame["patient_id"] == patient, "path"].item()
        _PREPARED[key] = prepare_study(*decode_study(path), PicaiConfig())
    return _PREPARED[key]


def test_layout_labels_and_sample_paths(picai_tree):
    frame, labels = study_table(PicaiConfig(), picai_tree["images"])  # labels found at ../labels
    assert labels == ["csPCa"]
    assert frame[["patient_id", "study_id", "csPCa", "ISUP"]].values.tolist() == [
        ["10001", "1000001", 1.0, 3.0], ["10002", "1000002", 0.0, 1.0]]
    scans, prostate, lesions = decode_study(frame.loc[0, "path"])
    assert [Path(s).name for s in scans] == ["10001_1000001_t2w.mha", "10001_1000001_adc.mha",
                                             "10001_1000001_hbv.mha"]
    assert prostate.endswith("Guerbet23/10001_1000001.nii.gz") and len(lesions) == 1
    assert decode_study(frame.loc[1, "path"])[2] == []  # a negative's lesion mask plays no part


def test_grid_is_the_papers_box_centred_on_the_prostate(picai_tree):
    result = _study(picai_tree, "10001")
    grid = result["grid"]
    assert grid.GetSpacing() == pytest.approx((0.5, 0.5, 3.0))
    assert grid.GetSize() == (300, 300, 30)  # 150 x 150 x 90 mm
    assert grid.GetDirection() == pytest.approx(IDENTITY)  # the T2W scan's orientation
    middle = grid.TransformContinuousIndexToPhysicalPoint([149.5, 149.5, 14.5])
    assert np.allclose(middle, picai_tree["centres"]["10001"], atol=0.5)  # the prostate's centre of mass
    assert result["image"].shape == (300, 300, 3) and result["image"].dtype == np.float32
    assert 0.0 <= result["image"].min() and result["image"].max() <= 1.0


def test_slice_rule_largest_tumour_versus_median_prostate(picai_tree):
    positive = _study(picai_tree, "10001")
    z_of = lambda r: physical_of_pixels(r["grid"], r["slice"])[0, 0, 2]  # noqa: E731
    cap_z = picai_tree["centres"]["10001"][2] + TUMOUR_OFFSET[2]
    assert positive["rule"] == "tumour" and abs(z_of(positive) - cap_z) <= 3.5  # cap 4 mm, T2W 3 mm, box 3 mm
    areas = (positive["lesion"] > 0).sum(axis=(1, 2))
    assert areas[positive["slice"]] == areas.max() > 2.5 * np.sort(areas)[-3]  # the cap, not the thin stalk
    negative = _study(picai_tree, "10002")
    assert negative["rule"] == "prostate"
    assert abs(z_of(negative) - picai_tree["centres"]["10002"][2]) <= 3.0  # median slice of a 30 mm gland
    slices = np.flatnonzero(negative["prostate"].any(axis=(1, 2)))
    assert negative["slice"] == slices[(len(slices) - 1) // 2]
    # the same positive study read as a negative takes the median prostate slice, 4 slices below the cap
    scans, prostate, _ = decode_study(study_table(PicaiConfig(), picai_tree["images"])[0].loc[0, "path"])
    as_negative = prepare_study(scans, prostate, [], PicaiConfig())
    assert positive["slice"] - as_negative["slice"] >= 3


def test_channels_are_registered_by_physical_geometry(picai_tree):
    result = _study(picai_tree, "10001")
    centre = picai_tree["centres"]["10001"]
    points = physical_of_pixels(result["grid"], result["slice"])
    for c, scan in enumerate(("t2w", "adc", "hbv")):
        expected = scan_value(points, scan, centre, tumour=True)
        channel = result["image"][..., c]
        inside = (channel > 0) & (channel < 1)  # in the scan's field of view, not clipped by the percentiles
        assert inside.mean() > 0.95
        assert np.corrcoef(channel[inside], expected[inside])[0, 1] > 0.999, scan
        rods = rod_centroids(channel, points, centre)
        assert np.allclose(rods, centre[:2] + RODS, atol=0.6), (scan, rods)  # 0.6 mm: about one pixel
    # packing the scans by slice index and resizing them in pixel space (the old csv-source way) misplaces them
    t2w_geometry = picai_tree["geometry"]["t2w"]
    t2w_points = voxel_points(**t2w_geometry)[t2w_geometry["size"][2] // 2]
    adc_volume = sitk.GetArrayFromImage(sitk.ReadImage(str(picai_tree["images"] / "10001" / "10001_1000001_adc.mha")))
    naive = np.asarray(Image.fromarray(adc_volume[len(adc_volume) // 2].astype(np.float32)).resize((200, 200)))
    expected = scan_value(t2w_points, "adc", centre, tumour=True)
    assert np.corrcoef(naive.ravel(), expected.ravel())[0, 1] < 0.8


def test_real_mri_volume_from_nibabel_is_read_and_registered(tmp_path):
    """nibabel's real T1 volume (33 x 41 x 25, 2 mm) as T2W; ADC / DWI are the same anatomy on other grids."""
    nib_data = Path(nibabel.__file__).parent / "tests" / "data"
    real = sitk.Cast(sitk.ReadImage(str(nib_data / "anatomical.nii")), sitk.sitkFloat32)
    images, labels = tmp_path / "images", tmp_path / "labels"
    (images / "20001").mkdir(parents=True)
    sitk.WriteImage(real, str(images / "20001" / "20001_2000001_t2w.mha"))
    for scan, spacing, shift, direction in (("adc", (3.0, 3.0, 2.5), (1.3, -2.1, 0.7), FLIPPED_X),
                                           ("hbv", (2.5, 2.5, 4.0), (-0.9, 1.7, -1.1), ROTATED)):
        grid = sitk.Image([30, 34, 16], sitk.sitkFloat32)
        grid.SetSpacing(spacing)
        grid.SetDirection(direction)
        centre = np.asarray(real.TransformContinuousIndexToPhysicalPoint([16, 20, 12]))
        grid.SetOrigin((centre + shift - np.asarray(direction).reshape(3, 3) @ (np.array(spacing) * [14.5, 16.5, 7.5]))
                       .tolist())
        moved = sitk.Resample(real, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        sitk.WriteImage(moved, str(images / "20001" / f"20001_2000001_{scan}.mha"))
    array = sitk.GetArrayFromImage(real)
    gland = sitk.GetImageFromArray((array > np.percentile(array, 70)).astype(np.uint8))
    gland.CopyInformation(real)
    (labels / "whole_gland").mkdir(parents=True)
    sitk.WriteImage(gland, str(labels / "whole_gland" / "20001_2000001.nii.gz"))
    pd.DataFrame({"patient_id": ["20001"], "study_id": ["2000001"], "case_csPCa": ["NO"]}).to_csv(
        labels / "marksheet.csv", index=False)
    settings = PicaiConfig(labels_dir=str(labels), marksheet="marksheet.csv", lesion_masks=[],
                           prostate_masks=["whole_gland"], spacing_mm=(2.0, 1.0, 1.0), box_mm=(30.0, 50.0, 50.0))
    frame, _ = study_table(settings, images)
    result = prepare_study(*decode_study(frame.loc[0, "path"]), settings)
    image = result["image"]
    assert image.shape == (50, 50, 3) and result["rule"] == "prostate"
    inside = (image > 0).all(axis=-1)
    assert inside.mean() > 0.5
    for c in (1, 2):  # the same anatomy in every channel, pixel for pixel
        assert np.corrcoef(image[..., 0][inside], image[..., c][inside])[0, 1] > 0.9


def test_missing_layout_and_labels_are_clear_errors(tmp_path, picai_tree, caplog):
    from medsd.errors import MedsdError

    with pytest.raises(MedsdError, match="no PI-CAI studies"):
        study_table(PicaiConfig(), tmp_path)
    with pytest.raises(MedsdError, match="clone picai_labels"):
        study_table(PicaiConfig(labels_dir=str(tmp_path / "nowhere")), picai_tree["images"])
    # without a marksheet the lesion masks decide; a study with neither is left out with a warning
    images = tmp_path / "images"
    for patient in ("10001", "10002"):
        (images / patient).mkdir(parents=True)
        for scan in ("t2w", "adc", "hbv"):
            name = f"{patient}_{'1000001' if patient == '10001' else '1000002'}_{scan}.mha"
            (images / patient / name).symlink_to(picai_tree["images"] / patient / name)
    (images / "10003").mkdir()
    (images / "10003" / "10003_1000003_t2w.mha").symlink_to(
        picai_tree["images"] / "10001" / "10001_1000001_t2w.mha")
    settings = PicaiConfig(labels_dir=str(picai_tree["labels"]), marksheet=None)
    with caplog.at_level(logging.WARNING):
        frame, _ = study_table(settings, images)
    assert frame["csPCa"].tolist() == [1.0, 0.0] and "1 studies have no label" in caplog.text


def test_data_config_builds_a_dataset(picai_tree):
    cfg = DataConfig(source="picai", root=str(picai_tree["images"]), resolution=32, channels=3,
                     picai={"spacing_mm": (3.0, 1.0, 1.0)})
    ds = build_dataset(cfg)
    item = ds[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["labels"].tolist() == [1.0]
    assert item["patient_id"] == "10001" and ds.pathologies == ["csPCa"]
    with pytest.raises(ValueError):
        DataConfig(source="picai", picai={"spacing_mm": (0.0, 1.0, 1.0)})


def test_end_to_end_inspect_prepare_train_generate_evaluate(tmp_path, tiny_model_dir, train_generate_report):
    """Eight studies of six patients, small volumes and a small box: every stage a user runs, in order."""
    from medsd.data.inspect import inspect_dataset
    from medsd.data.prepare import prepare_cache

    images, labels = tmp_path / "images", tmp_path / "labels"
    rng = np.random.default_rng(0)
    rows = []
    for k in range(8):
        patient, study = f"{10010 + min(k, 5)}", f"{1000010 + k}"  # patient 10015 has three studies
        positive = k % 2 == 0
        write_study(images, labels, patient, study, rng.uniform(-20, 20, 3), tumour=positive, scale=0.5)
        rows.append({"patient_id": patient, "study_id": study, "case_csPCa": "YES" if positive else "NO"})
    (labels / "clinical_information").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(labels / "clinical_information" / "marksheet.csv", index=False)
    data = {"source": "picai", "root": str(images), "resolution": 32, "channels": 3, "split": "train",
            "cache_dir": str(tmp_path / "cache"), "workers": 1,
            "picai": {"spacing_mm": (3.0, 1.0, 1.0), "box_mm": (45.0, 64.0, 64.0)},
            "prompt": {"template": "{labels}", "placeholder_tokens": True, "no_finding": "<benign>"}}
    cfg = DataConfig.model_validate(data)

    report = inspect_dataset(cfg.model_copy(update={"split": "all"}), tmp_path / "inspect", check_all=True)
    assert report["size"] == 8 and report["patients"] == 6 and report["unreadable"] == []
    assert report["label_counts"]["csPCa"]["positive"] == 4 and report["image_shape"] == [3, 32, 32]
    assert set(report["sample_prompts"]) == {"<cspca>", "<benign>"}

    prepared = prepare_cache(cfg, workers=1)
    assert prepared["samples"] == 8 and prepared["skipped"] == 0
    cache = np.load(tmp_path / "cache" / "images.npy")
    assert cache.shape == (8, 3, 32, 32) and (cache[:, 0] != cache[:, 1]).mean() > 0.5  # three different scans

    made = train_generate_report(data, tiny_model_dir, tmp_path, ["<cspca>", "<benign>"], ["T2W", "ADC", "DWI"])
    assert made["real"]["written"] == 8 and made["trained"].step == 2
    assert made["trained"].latent_cache is not None
    exported = pd.read_csv(tmp_path / "real" / "labels.csv")
    assert exported["csPCa"].sum() == 4 and Image.open(tmp_path / "real" / exported["Path"][0]).mode == "RGB"
    metrics = made["metrics"]
    assert metrics["sets"]["n_real"] == 8 and metrics["sets"]["n_generated"] == 4 and metrics["sets"]["channels"] == 3
    assert list(metrics["channels"]["per_channel"]) == ["T2W", "ADC", "DWI"]
    assert set(metrics["diversity"]["per_prompt"]) == {"<cspca>", "<benign>"}


def test_shipped_recipes_are_the_papers():
    from medsd.config import load_run_config
    from medsd.config_base import load_yaml_section
    from medsd.data.prompts import build_prompt
    from medsd.evaluate.augment import AugmentConfig

    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_run_config(configs / "picai_textual_inversion.yaml")
    assert (cfg.data.source, cfg.method.name, cfg.method.num_vectors, cfg.data.n_per_class) == (
        "picai", "textual_inversion", 64, 100)
    assert cfg.data.picai.spacing_mm == (3.0, 0.5, 0.5) and cfg.data.picai.box_mm == (90.0, 150.0, 150.0)
    prompts = [build_prompt({"csPCa": v}, cfg.data.prompt) for v in (1.0, 0.0)]
    assert prompts == cfg.method.tokens == ["<cspca>", "<benign>"]  # each class's prompt is its token
    augment = load_yaml_section(configs / "picai_augment.yaml", "augment", AugmentConfig)
    assert (augment.real_count, augment.synthetic_counts, augment.ratios) == (200, [2000], [0.0, 0.1, 0.25, 0.5])
    assert augment.selection == "best_val" and augment.arch == "resnet18" and augment.weights is not None
