"""Read each source's metadata into one table: path, patient_id, view, raw labels (1 / 0 / -1 / NaN), text.

Labels stay raw here (-1 = uncertain, NaN = not mentioned); the uncertainty policy is applied later so that
`medsd data inspect` can count positive / uncertain / negative per label.
"""

from __future__ import annotations

import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medsd.data import pcam, picai
from medsd.data.config import DataConfig
from medsd.errors import MedsdError
from medsd.files import read_csv

log = logging.getLogger(__name__)

# CheXpert's 14 observations minus "No Finding", which is the absence of the others, not a finding
CHEXPERT_LABELS = [
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
NIH_LABELS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii", ".nii.gz")
NO_FINDING_NAMES = {"no finding", "no_finding", "nofinding", "normal", "healthy"}
META_COLUMNS = {"no finding", "patient_id", "patient id", "patientid", "index", "seed", "split", "study_id"}


@dataclass
class SourceData:
    """A source's table (path, patient_id, view, label columns, optional text / caption) and its label names."""

    frame: pd.DataFrame
    pathologies: list[str]


def _resolve(root: Path, name: str | None, default: str | None = None) -> Path | None:
    if name is None and default is None:
        return None
    p = Path(name or default)
    return p if p.is_absolute() else root / p


_CSV_CACHE: dict[tuple[str, float, int], pd.DataFrame] = {}


def _read_csv(path: Path | None, what: str) -> pd.DataFrame:
    """Read a CSV once per process (train/val/test splits of one recipe re-read the same 200k-row table)."""
    if path is None or not path.is_file():
        raise MedsdError(f"{what} {path} does not exist; set data.csv (relative to data.root or absolute)")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime, stat.st_size)
    if key not in _CSV_CACHE:
        if len(_CSV_CACHE) >= 4:
            _CSV_CACHE.pop(next(iter(_CSV_CACHE)))
        _CSV_CACHE[key] = read_csv(path, what, sep="\t" if path.suffix == ".tsv" else ",", low_memory=False)
    return _CSV_CACHE[key].copy()


def _require_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MedsdError(f"{what} lacks column(s) {missing}; its columns are: {', '.join(map(str, df.columns))}")


def _join(root: Path, names: pd.Series) -> np.ndarray:
    """root/name for many names; string concatenation because pathlib costs ~10 µs per path (2 s on CheXpert)."""
    prefix = str(root).rstrip("/") + "/"
    return (prefix + names.astype(str)).to_numpy()


def xrv_data_file(name: str) -> Path:
    """A metadata file shipped inside torchxrayvision (real CheXpert / NIH / Open-i tables)."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise MedsdError(f"torchxrayvision is not installed; it ships {name}. pip install torchxrayvision")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def load_chexpert(cfg: DataConfig, root: Path) -> SourceData:
    """CheXpert train/valid CSV; image root separate from the CSV; works with the -small and full layouts."""
    csv_path = _resolve(root, cfg.csv, "train.csv")
    df = _read_csv(csv_path, "CheXpert CSV")
    _require_columns(df, ["Path", "Frontal/Lateral", "AP/PA"], f"CheXpert CSV {csv_path}")
    paths = df["Path"].astype(str)
    # CSV paths start with "CheXpert-v1.0-small/" or "CheXpert-v1.0/"; drop it unless root is its parent
    first = paths.iloc[0].split("/")[0] if len(paths) else ""
    if first.startswith("CheXpert-v1.0") and not (root / first).is_dir():
        paths = paths.str.replace(r"^CheXpert-v1\.0(-small)?/", "", regex=True)
    frontal = df["Frontal/Lateral"].eq("Frontal")
    out = pd.DataFrame(
        {
            "path": _join(root, paths),
            "patient_id": df["Path"].str.extract(r"(patient\d+)", expand=False).fillna(df["Path"]),
            # a few frontal rows say LL/RL in AP/PA: they stay "Frontal" so the Frontal filter keeps them
            "view": np.where(frontal, df["AP/PA"].where(df["AP/PA"].isin(["AP", "PA"]), "Frontal"), "Lateral"),
        }
    )
    labels = [c for c in CHEXPERT_LABELS if c in df.columns]
    for c in labels:
        out[c] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float32)
    return SourceData(out, labels)


def _mimic_reports(cfg: DataConfig, root: Path, frame: pd.DataFrame) -> pd.Series:
    src = _resolve(root, cfg.reports)
    if src is None:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    if src.is_file():
        rep = read_csv(src, "MIMIC reports CSV")
        _require_columns(rep, ["study_id"], f"MIMIC reports CSV {src}")
        text_col = next((c for c in ("text", "report", "Report") if c in rep.columns), None)
        if text_col is None:
            raise MedsdError(f"MIMIC reports CSV {src} needs a text column named text or report")
        lookup = dict(zip(rep["study_id"].astype(str).str.lstrip("s"), rep[text_col], strict=True))
        return frame["study_id"].astype(str).map(lookup)
    if not src.is_dir():
        raise MedsdError(f"MIMIC reports {src} does not exist; give the report root (files/pNN/...) or a CSV")

    def read(row) -> str | None:
        sid, pid = str(row.subject_id), str(row.study_id)
        p = src / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{pid}.txt"
        return p.read_text(errors="replace") if p.is_file() else None

    studies = frame.drop_duplicates("study_id")
    texts = {row.study_id: read(row) for row in studies.itertuples()}
    return frame["study_id"].map(texts)


def load_mimic(cfg: DataConfig, root: Path) -> SourceData:
    """MIMIC-CXR-JPG: metadata CSV (ViewPosition) + CheXpert/NegBio label CSV (+ report text)."""
    labels_df = _read_csv(_resolve(root, cfg.csv, "mimic-cxr-2.0.0-chexpert.csv.gz"), "MIMIC label CSV")
    meta = _read_csv(_resolve(root, cfg.metadata_csv, "mimic-cxr-2.0.0-metadata.csv.gz"), "MIMIC metadata CSV")
    _require_columns(meta, ["dicom_id", "subject_id", "study_id"], "MIMIC metadata CSV")
    _require_columns(labels_df, ["subject_id", "study_id"], "MIMIC label CSV")
    df = meta.merge(labels_df, on=["subject_id", "study_id"], how="inner")
    if not (root / "files").is_dir() and (root / "2.0.0" / "files").is_dir():
        root = root / "2.0.0"  # PhysioNet's download layout: mimic-cxr-jpg/2.0.0/files/pNN/...
    sid = df["subject_id"].astype(str)
    frame = pd.DataFrame(
        {
            "path": [
                str(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg")
                for s, st, d in zip(sid, df["study_id"], df["dicom_id"], strict=True)
            ],
            "patient_id": sid.to_numpy(),
            "view": df.get("ViewPosition", pd.Series([None] * len(df))).fillna("UNKNOWN").astype(str).to_numpy(),
            "subject_id": df["subject_id"].to_numpy(),
            "study_id": df["study_id"].to_numpy(),
        }
    )
    frame["view"] = frame["view"].replace({"LATERAL": "Lateral"})
    labels = [c for c in CHEXPERT_LABELS if c in df.columns]
    for c in labels:
        frame[c] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float32)
    frame["text"] = _mimic_reports(cfg, root, frame).to_numpy()
    return SourceData(frame, labels)


def load_nih(cfg: DataConfig, root: Path) -> SourceData:
    """NIH ChestX-ray14 Data_Entry_2017*.csv with pipe-separated "Finding Labels"."""
    csv_path = _resolve(root, cfg.csv) or xrv_data_file("Data_Entry_2017_v2020.csv.gz")
    df = _read_csv(csv_path, "NIH Data_Entry CSV")
    _require_columns(df, ["Image Index", "Finding Labels", "Patient ID"], f"NIH CSV {csv_path}")
    image_dir = root / "images" if (root / "images").is_dir() else root
    frame = pd.DataFrame(
        {
            "path": _join(image_dir, df["Image Index"]),
            "patient_id": df["Patient ID"].astype(str).to_numpy(),
            "view": df.get("View Position", pd.Series(["UNKNOWN"] * len(df))).astype(str).to_numpy(),
        }
    )
    hot = df["Finding Labels"].fillna("").str.get_dummies("|")
    for label in NIH_LABELS:
        frame[label] = hot[label].to_numpy(dtype=np.float32) if label in hot else np.float32(0)
    return SourceData(frame, list(NIH_LABELS))


def _openi_texts(xml_source: Path) -> dict[str, dict[str, str]]:
    """uid → {"findings": ..., "impression": ...} from the Open-i XML reports (.tgz or a folder)."""
    texts: dict[str, dict[str, str]] = {}

    def parse(fh) -> None:
        root = ET.parse(fh).getroot()
        uid = root.find("uId").attrib["id"]
        sections = {}
        for node in root.iter("AbstractText"):
            label = (node.attrib.get("Label") or "").lower()
            if label in ("findings", "impression") and node.text and node.text.strip():
                sections[label] = " ".join(node.text.split())
        texts[uid] = sections

    if xml_source.is_dir():
        for p in sorted(xml_source.glob("*.xml")):
            parse(p)
    else:
        with tarfile.open(xml_source, "r:*") as tar:
            for member in tar.getmembers():
                if member.name.endswith(".xml"):
                    parse(tar.extractfile(member))
    return texts


def read_openi_reports(xml_source: Path | None = None) -> dict[str, dict[str, str]]:
    """Report sections of every Open-i study (default: the reports shipped in torchxrayvision)."""
    source = xml_source or xrv_data_file("NLMCXR_reports.tgz")
    if not source.exists():
        raise MedsdError(f"Open-i reports {source} do not exist; give the reports .tgz or the XML folder")
    return _openi_texts(source)


_OPENI_CACHE: dict[tuple[str, float], tuple[pd.DataFrame, np.ndarray, list[str], dict]] = {}


def _openi_table(xml_source: Path) -> tuple[pd.DataFrame, np.ndarray, list[str], dict[str, dict[str, str]]]:
    """torchxrayvision's Open-i table (MeSH-derived labels, views) + report texts, parsed once per process."""
    key = (str(xml_source.resolve()), xml_source.stat().st_mtime)
    if key not in _OPENI_CACHE:
        import torchxrayvision as xrv

        ds = xrv.datasets.Openi_Dataset(imgpath=".", xmlpath=str(xml_source), views=["*"], unique_patients=False)
        pathologies = [str(p) for p in ds.pathologies]
        _OPENI_CACHE[key] = (ds.csv.reset_index(drop=True), ds.labels, pathologies, _openi_texts(xml_source))
    return _OPENI_CACHE[key]


def load_openi(cfg: DataConfig, root: Path) -> SourceData:
    """Indiana / Open-i: torchxrayvision's Openi_Dataset supplies the MeSH labels and views; we add the text."""
    xml_source = _resolve(root, cfg.csv) or xrv_data_file("NLMCXR_reports.tgz")
    if not xml_source.exists():
        raise MedsdError(f"Open-i reports {xml_source} do not exist; give the reports .tgz or the XML folder")
    try:
        csv, labels, pathologies, texts = _openi_table(xml_source)
    except (tarfile.TarError, ET.ParseError, EOFError, OSError, KeyError, AttributeError) as err:
        raise MedsdError(
            f"Open-i reports {xml_source} could not be read ({type(err).__name__}: {str(err)[:160]}); give the "
            "NLMCXR_reports.tgz as downloaded or a folder of its XML files"
        ) from None
    frame = pd.DataFrame(
        {
            "path": _join(root, csv["imageid"].astype(str) + ".png"),
            "patient_id": csv["uid"].astype(str).to_numpy(),
            "view": csv["view"].astype(str).replace({"LL": "Lateral"}).to_numpy(),
        }
    )
    for j, name in enumerate(pathologies):
        frame[name] = labels[:, j].astype(np.float32)
    frame["text"] = [_sections_to_text(texts.get(u, {})) for u in csv["uid"]]
    return SourceData(frame, list(pathologies))


def _sections_to_text(sections: dict[str, str]) -> str | None:
    parts = [f"{k.upper()}: {v}" for k, v in sections.items()]
    return "\n".join(parts) if parts else None


def _auto_label_columns(df: pd.DataFrame, exclude: set[str]) -> list[str]:
    """Columns whose values are only 1 / 0 / -1 / blank: the label columns of a generic CSV."""
    found = []
    for c in df.columns:
        if c in exclude or str(c).lower() in META_COLUMNS or not pd.api.types.is_numeric_dtype(df[c]):
            continue
        values = set(df[c].dropna().unique().tolist())
        if values and values <= {-1, 0, 1}:
            found.append(c)
    return found


def _patient_from_path(path: str) -> str:
    m = re.search(r"(patient\d+|p\d{8})", path)
    return m.group(1) if m else Path(path).name


def load_csv(cfg: DataConfig, root: Path, csv_path: Path | None = None) -> SourceData:
    """Generic folder of images + CSV: a path column (or several packed as channels), label or caption columns."""
    csv_path = csv_path or _resolve(root, cfg.csv)
    df = _read_csv(csv_path, "CSV")
    path_cols = cfg.channel_columns or [cfg.path_column]
    _require_columns(df, path_cols, f"CSV {csv_path} (data.path_column / data.channel_columns)")
    joined = pd.Series(_join(root, df[path_cols[0]]), index=df.index)
    for col in path_cols[1:]:
        joined = joined + "|" + _join(root, df[col])
    if cfg.slice_column:  # one row per slice of a volume: the slice number travels inside the sample path
        _require_columns(df, [cfg.slice_column], f"CSV {csv_path} (data.slice_column)")
        joined = joined + "#" + df[cfg.slice_column].astype(int).astype(str)
    frame = pd.DataFrame({"path": joined.to_numpy()})
    if cfg.patient_column:
        _require_columns(df, [cfg.patient_column], f"CSV {csv_path} (data.patient_column)")
        frame["patient_id"] = df[cfg.patient_column].astype(str).to_numpy()
    else:
        pid_col = next((c for c in df.columns if str(c).lower() in ("patient_id", "patient id", "patientid")), None)
        frame["patient_id"] = (
            df[pid_col].astype(str).to_numpy() if pid_col else df[path_cols[0]].astype(str).map(_patient_from_path)
        )
    view_col = next((c for c in ("view", "View", "ViewPosition", "View Position", "AP/PA") if c in df.columns), None)
    frame["view"] = df[view_col].fillna("UNKNOWN").astype(str).to_numpy() if view_col else "UNKNOWN"
    if cfg.caption_column:
        _require_columns(df, [cfg.caption_column], f"CSV {csv_path} (data.caption_column)")
        frame["caption"] = df[cfg.caption_column].to_numpy()
    if cfg.label_columns is not None:
        _require_columns(df, cfg.label_columns, f"CSV {csv_path} (data.label_columns)")
        labels = list(cfg.label_columns)
    else:
        exclude = set(path_cols) | {cfg.caption_column, cfg.patient_column, cfg.slice_column}
        labels = _auto_label_columns(df, exclude)
    for c in labels:
        frame[c] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float32)
    if cfg.mask_columns:
        frame["mask_paths"] = mask_paths(df, cfg.mask_columns, root, f"CSV {csv_path}")
    return SourceData(frame, labels)


def mask_paths(df: pd.DataFrame, columns: list[str], root: Path, what: str) -> np.ndarray:
    """Per row, every mask file named in `columns` (blank cells skipped), resolved against root and joined by `|`."""
    _require_columns(df, columns, f"{what} (data.mask_columns)")
    prefix = str(root).rstrip("/") + "/"

    def resolve(name: str) -> str:
        return name if name.startswith("/") else prefix + name

    joined = []
    for cells in df[columns].itertuples(index=False):
        names = [n for cell in cells if isinstance(cell, str) for n in cell.split("|") if n.strip()]
        joined.append("|".join(resolve(n.strip()) for n in names))
    return np.array(joined, dtype=object)


def load_phantom(cfg: DataConfig, root: Path) -> SourceData:
    """Folder written by `medsd data phantom`: a CheXpert-style CSV with `Path` relative to the folder.

    Read like CheXpert (patient ids, views, label order); label columns that are never positive or uncertain
    are dropped when `data.labels` is not given, because the phantom renders only some findings. The `Report`
    column (FINDINGS / IMPRESSION, written from each image's parameters) becomes the report text, as in MIMIC.
    """
    csv_path = _resolve(root, cfg.csv) if cfg.csv else None
    if csv_path is None:
        candidates = sorted(root.glob("*.csv")) if root.is_dir() else []
        csv_path = next((c for c in candidates if _path_column_of(c)), None)
    if csv_path is None or not _path_column_of(csv_path):
        raise MedsdError(
            f"phantom folder {root} holds no CSV with a Path column; create one with `medsd data phantom --out {root}`"
        )
    columns = read_csv(csv_path, "phantom CSV", nrows=0).columns
    local = cfg.model_copy(update={"csv": str(csv_path.resolve()), "path_column": _path_column_of(csv_path)})
    data = load_chexpert(local, root) if "Frontal/Lateral" in columns else load_csv(local, root, csv_path)
    if "Report" in columns:  # free-text reports, like MIMIC-CXR's, for `prompt.source: report` and friends
        data.frame["text"] = _read_csv(csv_path, "phantom CSV")["Report"].to_numpy()
    if cfg.mask_columns and "mask_paths" not in data.frame.columns:
        if not any(str(c).startswith("Mask ") for c in columns):
            raise MedsdError(f"phantom CSV {csv_path} names no masks (data.mask_columns): it was rendered before "
                             "version 1.2; render it again with `medsd data phantom`")
        if "Mask Heart" in cfg.mask_columns and "Mask Heart" not in columns:  # the heart's region came in 1.3
            raise MedsdError(f"phantom CSV {csv_path} has no Mask Heart column (data.mask_columns): it was rendered "
                             "before version 1.3; render it again with `medsd data phantom`")
        data.frame["mask_paths"] = mask_paths(_read_csv(csv_path, "phantom CSV"), cfg.mask_columns, root,
                                              f"phantom CSV {csv_path}")
    if cfg.labels is None:
        present = [p for p in data.pathologies if data.frame[p].isin([1, -1]).any()]
        data.frame = data.frame.drop(columns=[p for p in data.pathologies if p not in present])
        data.pathologies = present
    return data


def _path_column_of(csv_path: Path | None) -> str | None:
    if csv_path is None or not csv_path.is_file():
        return None
    columns = read_csv(csv_path, "CSV", nrows=0).columns
    return next((c for c in ("Path", "path", "file", "image", "filename") if c in columns), None)


def load_folder(cfg: DataConfig, root: Path) -> SourceData:
    """One sub-folder per class; a folder named normal / no_finding means no positive finding."""
    if not root.is_dir():
        raise MedsdError(f"data.root {root} is not a folder; the folder source needs root/CLASS/image files")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise MedsdError(f"data.root {root} has no class sub-folders; expected root/CLASS/*.png")
    labels = [c for c in classes if c.lower() not in NO_FINDING_NAMES]
    rows = []
    for cls in classes:
        for p in sorted((root / cls).rglob("*")):
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES):
                rows.append(
                    {"path": str(p), "patient_id": p.stem, "view": "UNKNOWN", **{c: float(c == cls) for c in labels}}
                )
    if not rows:
        raise MedsdError(f"data.root {root} has class sub-folders ({', '.join(classes[:5])}) but no images in them "
                         f"({', '.join(IMAGE_SUFFIXES)}); expected root/CLASS/*.png")
    frame = pd.DataFrame(rows, columns=["path", "patient_id", "view", *labels])
    return SourceData(frame, labels)


LOADERS = {
    "chexpert": load_chexpert,
    "mimic": load_mimic,
    "nih": load_nih,
    "openi": load_openi,
    "csv": load_csv,
    "folder": load_folder,
    "phantom": load_phantom,
    "picai": lambda cfg, root: SourceData(*picai.study_table(cfg.picai, root)),
    "pcam": lambda cfg, root: SourceData(*pcam.patch_table(root)),
}
# Sources whose sample paths are not image files (a study's volumes and masks, a row of an HDF5 file) decode them
SAMPLE_READERS = {"picai": picai.read_study, "pcam": pcam.read_patch}


def load_source(cfg: DataConfig) -> SourceData:
    """Dispatch on `cfg.source` and return the raw table."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        # not an error: label tables alone serve counting and `--all-labels`; reading images will skip them
        log.warning("data.root %s does not exist: every image will be reported unreadable", root)
    data = LOADERS[cfg.source](cfg, root)
    data.frame = data.frame.reset_index(drop=True)
    log.info("%s: %d rows, %d label columns", cfg.source, len(data.frame), len(data.pathologies))
    return data
