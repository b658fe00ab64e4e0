"""PI-CAI prostate MRI: one packed RGB slice per study, prepared as the budget paper did.

Layout (the PI-CAI public training set: images from zenodo, annotations from the picai_labels repository):

    images/[fold/]<patient>/<patient>_<study>_{t2w,adc,hbv}.mha            data.root
    labels/clinical_information/marksheet.csv                            case_csPCa (YES/NO), case_ISUP
    labels/csPCa_lesion_delineations/human_expert/resampled/<patient>_<study>.nii.gz   lesions, value = ISUP
    labels/anatomical_delineations/whole_gland/AI/Guerbet23/<patient>_<study>.nii.gz   prostate

Every study becomes one sample:

1. A reference grid in the T2W scan's orientation, spacing 3 x 0.5 x 0.5 mm (z, y, x), size 90 x 150 x 150 mm,
   centred on the prostate mask's centre of mass (the T2W volume's centre when there is no mask).
2. T2W, ADC, DWI (high b-value) and the masks are resampled onto that grid through their physical geometry
   (origin, spacing, direction): linear for images, nearest neighbour for masks. ADC and DWI are acquired with
   other spacings, origins and fields of view than T2W; only this puts the same point of the patient into the
   same pixel of every channel.
3. The slice: the largest tumour area for csPCa-positive studies, the median prostate slice for the others.
4. Each scan is scaled to [0, 1] by its percentiles inside the box (MRI has no units); outside a scan's field
   of view stays 0.
5. The scans' slices become the R, G, B channels, in `data.picai.modalities` order.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import Field, PositiveFloat

from medsd.config_base import StrictModel
from medsd.data.images import UnreadableImage
from medsd.errors import MedsdError

if TYPE_CHECKING:
    import SimpleITK as sitk

    from medsd.data.config import DataConfig

log = logging.getLogger(__name__)

LABEL = "csPCa"
MASK_FILES = ("{patient}_{study}.nii.gz", "{patient}_{study}.nii", "{patient}_{study}.mha")


class PicaiConfig(StrictModel):
    """Settings of the `picai` source (`data.picai`); the defaults are the budget paper's."""

    labels_dir: str = Field(
        "../labels",
        description="Clone of the picai_labels repository, relative to data.root or absolute (PI-CAI's own "
        "layout puts images/ and labels/ side by side).",
    )
    marksheet: str | None = Field(
        "clinical_information/marksheet.csv",
        description="Clinical marksheet relative to labels_dir (case_csPCa / case_ISUP give each study's label); "
        "None or a missing file: a study is positive when one of its lesion masks is not empty.",
    )
    lesion_masks: list[str] = Field(
        ["csPCa_lesion_delineations/human_expert/resampled", "csPCa_lesion_delineations/AI/Bosma22a"],
        description="Lesion mask folders relative to labels_dir, tried in order: the first non-empty mask of a "
        "positive study picks its slice (expert delineations first, AI-derived ones for cases without).",
    )
    prostate_masks: list[str] = Field(
        ["anatomical_delineations/whole_gland/AI/Guerbet23", "anatomical_delineations/whole_gland/AI/Bosma22b"],
        description="Whole-gland mask folders relative to labels_dir, tried in order (the first file found).",
    )
    modalities: list[str] = Field(
        ["t2w", "adc", "hbv"],
        min_length=1,
        max_length=3,
        description="Scan suffixes packed into R, G, B (`<patient>_<study>_<suffix>.mha`); the first is the "
        "reference whose orientation the grid takes.",
    )
    spacing_mm: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        (3.0, 0.5, 0.5), description="Voxel spacing of the resampled grid in mm, (z, y, x)."
    )
    box_mm: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        (90.0, 150.0, 150.0), description="Physical size of the box cropped around the prostate in mm, (z, y, x)."
    )
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="Intensity percentiles of each scan inside the box that map to 0 and 1."
    )


# ---------------------------------------------------------------- finding the studies (load time)
def _resolve(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def find_studies(root: Path, modalities: list[str]) -> dict[tuple[str, str], Path]:
    """(patient, study) → folder of every `<patient>_<study>_<reference>.mha` under `root`."""
    pattern = re.compile(rf"^(?P<patient>[^_]+)_(?P<study>[^_]+)_{re.escape(modalities[0])}\.mha$")
    found = {}
    for path in sorted(root.rglob(f"*_{modalities[0]}.mha")) if root.is_dir() else []:
        match = pattern.match(path.name)
        if match:
            found[(match["patient"], match["study"])] = path.parent
    return found


def read_marksheet(path: Path) -> dict[tuple[str, str], tuple[float, float]]:
    """(patient, study) → (csPCa 1/0, case ISUP grade or NaN) from PI-CAI's marksheet.csv."""
    sheet = pd.read_csv(path, dtype={"patient_id": str, "study_id": str})
    missing = [c for c in ("patient_id", "study_id") if c not in sheet.columns]
    if missing or not {"case_csPCa", "case_ISUP"} & set(sheet.columns):
        raise MedsdError(
            f"PI-CAI marksheet {path} needs patient_id, study_id and case_csPCa or case_ISUP columns; "
            f"it has {', '.join(map(str, sheet.columns))}"
        )
    isup = pd.to_numeric(sheet.get("case_ISUP"), errors="coerce") if "case_ISUP" in sheet else None
    if "case_csPCa" in sheet:
        flag = sheet["case_csPCa"].astype(str).str.strip().str.upper().map({"YES": 1.0, "NO": 0.0})
    else:  # csPCa is defined as ISUP >= 2
        flag = (isup >= 2).astype(float).where(isup.notna())
    isup = isup if isup is not None else pd.Series(np.nan, index=sheet.index)
    return {
        (p, s): (float(f), float(g))
        for p, s, f, g in zip(sheet["patient_id"], sheet["study_id"], flag, isup, strict=True)
    }


def _first_files(folders: list[Path], patient: str, study: str) -> list[Path]:
    """Every existing mask of a study across `folders`, in folder order."""
    names = [n.format(patient=patient, study=study) for n in MASK_FILES]
    return [folder / n for folder in folders for n in names if (folder / n).is_file()]


def _mask_is_positive(path: Path) -> bool:
    import SimpleITK as sitk

    return bool(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).max() >= 1)


def encode_study(scans: list[Path], prostate: Path | None, lesions: list[Path]) -> str:
    """One sample path: the scans in channel order, then `prostate=` and `lesion=` masks, joined by `|`."""
    parts = [str(p) for p in scans] + ([f"prostate={prostate}"] if prostate else [])
    return "|".join(parts + [f"lesion={p}" for p in lesions])


def decode_study(path: str) -> tuple[list[str], str | None, list[str]]:
    """Inverse of `encode_study`: (scans, prostate mask or None, lesion masks)."""
    scans, prostate, lesions = [], None, []
    for part in path.split("|"):
        if part.startswith("prostate="):
            prostate = part[len("prostate="):]
        elif part.startswith("lesion="):
            lesions.append(part[len("lesion="):])
        else:
            scans.append(part)
    return scans, prostate, lesions


def study_table(settings: PicaiConfig, root: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per study: sample path (scans + masks), patient_id, study_id, ISUP, label `csPCa` (1 / 0)."""
    studies = find_studies(root, settings.modalities)
    if not studies:
        raise MedsdError(
            f"no PI-CAI studies under data.root {root}: expected <patient>/<patient>_<study>_"
            f"{settings.modalities[0]}.mha (the unpacked picai_public_images_fold*.zip)"
        )
    labels_dir = _resolve(root, settings.labels_dir)
    marks: dict = {}
    if settings.marksheet and (labels_dir / settings.marksheet).is_file():
        marks = read_marksheet(labels_dir / settings.marksheet)
    lesion_dirs = [_resolve(labels_dir, d) for d in settings.lesion_masks]
    prostate_dirs = [_resolve(labels_dir, d) for d in settings.prostate_masks]
    if not marks and not any(d.is_dir() for d in lesion_dirs):
        raise MedsdError(
            f"PI-CAI labels not found: neither {labels_dir / str(settings.marksheet)} nor any of the lesion mask "
            f"folders {[str(d) for d in lesion_dirs]} exist; clone picai_labels and set data.picai.labels_dir"
        )
    rows, unlabelled = [], 0
    for (patient, study), folder in sorted(studies.items()):
        lesions = _first_files(lesion_dirs, patient, study)
        cspca, isup = marks.get((patient, study), (np.nan, np.nan))
        if np.isnan(cspca):  # not in the marksheet: the lesion masks decide
            cspca = float(any(_mask_is_positive(p) for p in lesions)) if lesions else np.nan
        if np.isnan(cspca):
            unlabelled += 1
            continue
        prostate = next(iter(_first_files(prostate_dirs, patient, study)), None)
        scans = [folder / f"{patient}_{study}_{m}.mha" for m in settings.modalities]
        rows.append({
            # negatives take the median prostate slice: their lesion masks (if any) play no part
            "path": encode_study(scans, prostate, lesions if cspca == 1 else []),
            "patient_id": patient, "study_id": study, "view": "axial", "ISUP": isup, LABEL: np.float32(cspca),
        })
    if unlabelled:
        log.warning("PI-CAI: %d studies have no label (not in the marksheet, no lesion mask); left out", unlabelled)
    if not rows:
        raise MedsdError(f"none of the {len(studies)} PI-CAI studies under {root} has a label in {labels_dir}")
    return pd.DataFrame(rows), [LABEL]


# ---------------------------------------------------------------- geometry (read time)
def reference_grid(reference: sitk.Image, centre: tuple[float, float, float], spacing_zyx, box_zyx) -> sitk.Image:
    """An empty image in `reference`'s orientation: `box_zyx` mm at `spacing_zyx` mm, centred on `centre`."""
    import SimpleITK as sitk

    spacing = np.asarray(spacing_zyx[::-1], dtype=float)  # SimpleITK orders axes x, y, z
    size = np.maximum(1, np.round(np.asarray(box_zyx[::-1], dtype=float) / spacing)).astype(int)
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    # the physical point of index i is origin + direction @ (spacing * i): put the grid's middle on `centre`
    origin = np.asarray(centre, dtype=float) - direction @ (spacing * (size - 1) / 2)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def mask_centre(mask: sitk.Image) -> tuple[float, float, float] | None:
    """Physical centre of mass of a mask's non-zero voxels (None for an empty mask)."""
    import SimpleITK as sitk

    zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if not len(zyx):
        return None
    return mask.TransformContinuousIndexToPhysicalPoint(zyx.mean(axis=0)[::-1].tolist())


def volume_centre(image: sitk.Image) -> tuple[float, float, float]:
    """Physical position of a volume's middle voxel."""
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])


def resample_onto(image: sitk.Image, grid: sitk.Image, is_mask: bool = False) -> np.ndarray:
    """`image` sampled at the physical positions of `grid`'s voxels, as an array [z, y, x].

    Images are interpolated linearly and are NaN outside their field of view; masks take the nearest voxel's
    value and are 0 outside.
    """
    import SimpleITK as sitk

    if is_mask:
        out = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayFromImage(out)
    image = sitk.Cast(image, sitk.sitkFloat32) if image.GetNumberOfComponentsPerPixel() == 1 else image
    out = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def choose_slice(prostate: np.ndarray | None, lesion: np.ndarray | None) -> int:
    """The paper's slice: largest tumour area when `lesion` is given, else the median prostate slice.

    Arrays are [z, y, x] on the resampled grid; without a prostate mask the middle slice is taken. Ties in
    tumour area go to the lowest slice.
    """
    if lesion is not None:
        return int(np.argmax((lesion > 0).sum(axis=(1, 2))))
    if prostate is None or not prostate.any():
        raise ValueError("median prostate slice needs a non-empty prostate mask")
    slices = np.flatnonzero(prostate.any(axis=(1, 2)))
    return int(slices[(len(slices) - 1) // 2])  # the lower middle of an even count


def scale_intensities(image: np.ndarray, volume: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the [p_low, p_high] percentiles of a scan's `volume` inside its field of view to [0, 1] in `image`
    (a slice of it); NaN (outside the field of view) becomes 0."""
    inside = volume[np.isfinite(volume)]
    if not inside.size:
        return np.zeros_like(image)
    lo, hi = np.percentile(inside, percentiles)
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0).astype(np.float32)


# ---------------------------------------------------------------- one study → one RGB slice
def _read(path: str) -> sitk.Image:
    import SimpleITK as sitk

    if not Path(path).is_file():
        raise UnreadableImage(path, "file not found")
    image = sitk.ReadImage(path)
    if image.GetDimension() == 4:  # a 4D series (several b-values / echoes): its first volume
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise UnreadableImage(path, f"expected a 3D volume, got {image.GetDimension()}D")
    return image


def prepare_study(scans: list[str], prostate: str | None, lesions: list[str], settings: PicaiConfig) -> dict:
    """The whole recipe for one study: grid, resampled channels, chosen slice. Returns arrays for inspection.

    Keys: `image` (H, W, C) in [0, 1], `slice` (index on the grid), `grid` (the SimpleITK reference image),
    `rule` ("tumour" or "prostate" or "middle"), `prostate` / `lesion` (resampled masks or None).
    """
    reference = _read(scans[0])
    prostate_mask = _read(prostate) if prostate else None
    centre = mask_centre(prostate_mask) if prostate_mask is not None else None
    grid = reference_grid(reference, centre or volume_centre(reference), settings.spacing_mm, settings.box_mm)
    prostate_box = resample_onto(prostate_mask, grid, is_mask=True) if prostate_mask is not None else None
    lesion_box = None
    for lesion in lesions:
        candidate = resample_onto(_read(lesion), grid, is_mask=True)
        if candidate.any():
            lesion_box = candidate
            break
    if lesions and lesion_box is None:
        raise UnreadableImage(scans[0], "csPCa-positive study whose lesion masks are empty inside the box: "
                              "no tumour slice to choose (add AI lesion masks to data.picai.lesion_masks)")
    if lesion_box is not None:
        index, rule = choose_slice(None, lesion_box), "tumour"
    elif prostate_box is not None and prostate_box.any():
        index, rule = choose_slice(prostate_box, None), "prostate"
    else:
        index, rule = (grid.GetSize()[2] - 1) // 2, "middle"
    channels = []
    for scan in scans:
        volume = resample_onto(_read(scan), grid)
        if volume.ndim == 4:  # vector pixels: their mean
            volume = volume.mean(axis=-1)
        channels.append(scale_intensities(volume[index], volume, settings.percentiles))
    return {"image": np.stack(channels, axis=-1), "slice": index, "grid": grid, "rule": rule,
            "prostate": prostate_box, "lesion": lesion_box}


def read_study(path: str, cfg: DataConfig) -> np.ndarray:
    """Decode one `picai` sample path into an (H, W, C) float32 image in [0, 1]; raises UnreadableImage."""
    scans, prostate, lesions = decode_study(path)
    try:
        return prepare_study(scans, prostate, lesions, cfg.picai)["image"]
    except UnreadableImage:
        raise
    except Exception as err:  # a corrupt volume or mask spoils this study only
        raise UnreadableImage(scans[0], f"{type(err).__name__}: {err}") from err
