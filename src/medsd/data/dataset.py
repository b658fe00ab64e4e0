"""`build_dataset(cfg)`: source table → filtered, split, prompted samples → a torch Dataset of dicts."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medsd.data import sampling
from medsd.data.config import DataConfig
from medsd.data.images import UnreadableImage, read_image
from medsd.data.preprocess import augment, preprocess_image, preprocess_mask
from medsd.data.prompts import build_prompt, extract_sections, report_prompt, trim_prompt
from medsd.data.sources import SAMPLE_READERS, load_source
from medsd.errors import MedsdError

log = logging.getLogger(__name__)

# Fields that change the preprocessed pixels: a cache written with other values must not be reused
PIXEL_FIELDS = (
    "source",
    "root",
    "csv",
    "path_column",
    "channel_columns",
    "resolution",
    "channels",
    "preprocess",
    "crop_to_content",
    "slice_index",
    "slice_axis",
    "window",
    "min_size",
    "max_pixels",
    "cache_dtype",
    "picai",
    "pcam",
)
MAX_TRIM_WARNINGS = 5


def pixel_fingerprint(cfg: DataConfig) -> str:
    """Hash of the settings that determine cached pixels."""
    payload = json.dumps({k: getattr(cfg, k) for k in PIXEL_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def image_paths(path: str) -> tuple[str | list[str], int | None]:
    """A frame's `path` is one file, or several joined by `|` packed into channels; `#N` selects slice N."""
    slice_index = None
    if "#" in path:
        path, _, tail = path.rpartition("#")
        slice_index = int(tail)
    return (path.split("|") if "|" in path else path), slice_index


def read_sample(path: str, cfg: DataConfig) -> torch.Tensor:
    """Decode and preprocess one sample path with the recipe's settings; raises UnreadableImage."""
    if cfg.source in SAMPLE_READERS:  # already cropped by the source: no content crop
        array = SAMPLE_READERS[cfg.source](path, cfg)
        return preprocess_image(array, cfg.resolution, cfg.preprocess, cfg.channels, crop=False)
    return preprocess_image(read_decoded(path, cfg), cfg.resolution, cfg.preprocess, cfg.channels,
                            cfg.crop_to_content)


def read_decoded(path: str, cfg: DataConfig) -> np.ndarray:
    """The image file(s) of one sample path, decoded to [0, 1] before preprocessing; raises UnreadableImage."""
    files, slice_index = image_paths(path)
    slice_index = cfg.slice_index if slice_index is None else slice_index
    return read_image(files, slice_index, cfg.slice_axis, cfg.window, cfg.min_size, cfg.max_pixels)


def read_loss_mask(image_path: str, mask_files: str, cfg: DataConfig) -> torch.Tensor:
    """The union of an image's masks (`|`-joined files; any non-zero pixel is inside), cropped, resized and padded
    exactly as the image: [1, resolution, resolution] in [0, 1]. Raises UnreadableImage (a bad mask skips its
    image like a bad image would)."""
    names = [n for n in mask_files.split("|") if n] if isinstance(mask_files, str) else []
    if not names:
        return torch.zeros(1, cfg.resolution, cfg.resolution)
    image = read_decoded(image_path, cfg)  # its content crop and size place the mask
    union = None
    for name in names:
        plane = read_image(name, None, cfg.slice_axis, None, 1, cfg.max_pixels)
        plane = (plane.max(axis=-1) if plane.ndim == 3 else plane) > 0
        if union is not None and plane.shape != union.shape:
            raise UnreadableImage(name, f"mask is {plane.shape[1]}x{plane.shape[0]} pixels, its image's other "
                                        f"masks {union.shape[1]}x{union.shape[0]}")
        union = plane if union is None else union | plane
    try:
        return preprocess_mask(union, image, cfg.resolution, cfg.preprocess, cfg.crop_to_content)
    except ValueError as err:
        raise UnreadableImage(names[0], str(err)) from None


class MedicalImageDataset(Dataset):
    """Samples `{"pixel_values", "prompt", "labels", "patient_id", "path", "index"}` from a selected table, and
    `"loss_mask"` (the image's region masks, preprocessed like it) when `data.mask_columns` names them.

    Attributes: `pathologies` (label names, canonical order), `frame` (one row per sample), `raw_labels`
    (1 / 0 / -1 / NaN before the uncertainty policy), `skipped` ((path, reason) for unreadable images),
    `selection` ((step, rows left) after each filter).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        pathologies: list[str],
        cfg: DataConfig,
        raw_labels: pd.DataFrame | None = None,
        selection: list[tuple[str, int]] | None = None,
    ):
        self.frame = frame.reset_index(drop=True)
        self.pathologies = list(pathologies)
        self.cfg = cfg
        self.raw_labels = (raw_labels if raw_labels is not None else frame[pathologies]).reset_index(drop=True)
        self.selection = selection or []
        self.skipped: list[tuple[str, str]] = []
        self._warned: set[str] = set()
        self._labels = torch.tensor(self.frame[self.pathologies].to_numpy(dtype=np.float32)).reshape(
            len(self.frame), len(self.pathologies)
        )
        self._rng = random.Random(cfg.seed)
        self._aug_gen: torch.Generator | None = None
        self._cache: np.ndarray | None = None
        self._cache_file: Path | None = None
        self._cache_index = np.full(len(self.frame), -1, dtype=np.int64)
        if cfg.cache_dir:
            self._attach_cache(Path(cfg.cache_dir))

    def __len__(self) -> int:
        return len(self.frame)

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn pickle the data set: a memmap would be copied whole and a
        # torch.Generator cannot be pickled, so both are re-created on first use in the worker
        state = self.__dict__.copy()
        state["_cache"], state["_aug_gen"] = None, None
        return state

    @property
    def cached(self) -> int:
        """How many samples are read from the prepared cache rather than decoded."""
        return int((self._cache_index >= 0).sum())

    def _attach_cache(self, cache_dir: Path) -> None:
        info_path = cache_dir / "cache.json"
        if not info_path.is_file():
            return
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") != pixel_fingerprint(self.cfg):
            log.warning("cache %s was prepared with other pixel settings; decoding originals", cache_dir)
            return
        meta = pd.read_csv(cache_dir / "metadata.csv", usecols=["path", "cache_index", "ok"])
        done = np.load(cache_dir / "done.npy", mmap_mode="r")
        meta = meta[meta["ok"].astype(bool) & done[meta["cache_index"].to_numpy()]]
        lookup = dict(zip(meta["path"], meta["cache_index"], strict=True))
        self._cache_index = self.frame["path"].map(lookup).fillna(-1).to_numpy(dtype=np.int64)
        self._cache_file = cache_dir / "images.npy"
        log.info("reading %d / %d samples from cache %s", self.cached, len(self), cache_dir)

    def load_pixels(self, index: int) -> torch.Tensor:
        """Preprocessed image of row `index` (cache or decode); raises UnreadableImage."""
        ci = self._cache_index[index]
        if ci >= 0:
            if self._cache is None:  # opened lazily, so DataLoader workers each map the file themselves
                self._cache = np.load(self._cache_file, mmap_mode="r")
            arr = np.asarray(self._cache[ci])
            scale = 255.0 if arr.dtype == np.uint8 else 65535.0
            return torch.from_numpy(arr.astype(np.float32) / scale * 2 - 1)
        return read_sample(self.frame.at[index, "path"], self.cfg)

    def _prompt(self, index: int) -> str:
        if self.cfg.prompt.source == "sentences" and "text" in self.frame.columns:
            # a fresh random choice per access: the report's sentences act as text augmentation
            drawn = report_prompt(extract_sections(self.frame.at[index, "text"]), self.cfg.prompt, self._rng)
            if drawn:
                return trim_prompt(drawn, self.cfg.prompt, warn=False)
        return self.frame.at[index, "prompt"]

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        for offset in range(n):
            i = (index + offset) % n
            try:
                pixels = self.load_pixels(i)
            except UnreadableImage as err:
                self._record_skip(err)
                continue
            item = {"pixel_values": pixels}
            if self.cfg.mask_columns:
                try:
                    item["loss_mask"] = read_loss_mask(self.frame.at[i, "path"], self.frame.at[i, "mask_paths"],
                                                       self.cfg)
                except UnreadableImage as err:
                    self._record_skip(err)
                    continue
            if self.cfg.augment:
                if self._aug_gen is None:
                    self._aug_gen = torch.Generator().manual_seed(self.cfg.seed + torch.initial_seed() % 2**31)
                item["pixel_values"] = augment(pixels, self._aug_gen)
            return {
                **item,
                "prompt": self._prompt(i),
                "labels": self._labels[i],
                "patient_id": str(self.frame.at[i, "patient_id"]),
                "path": self.frame.at[i, "path"],
                "index": i,
            }
        raise MedsdError(f"none of the {n} images in the data set could be read; first problems: {self.skipped[:3]}")

    def _record_skip(self, err: UnreadableImage) -> None:
        if err.path not in self._warned:
            self._warned.add(err.path)
            self.skipped.append((err.path, err.reason))
            log.warning("skipping unreadable image %s (%s); using the next sample", err.path, err.reason)


def make_prompts(frame: pd.DataFrame, labels: list[str], cfg: DataConfig) -> list[str]:
    """One prompt per row: report section / caption when configured and present, else the label template."""
    pc = cfg.prompt
    positive = frame[labels].fillna(0).to_numpy() > 0
    # label prompts depend only on the pattern of positives: build each distinct pattern once (223k rows → ~1k)
    positive = positive.reshape(len(frame), len(labels))
    if len(labels) <= 62:  # one integer per pattern: np.unique on rows (axis=0) is ~50x slower
        keys, inverse = np.unique(positive @ (1 << np.arange(len(labels), dtype=np.int64)), return_inverse=True)
        patterns = (keys[:, None] >> np.arange(len(labels))) & 1
    else:
        patterns, inverse = np.unique(positive, axis=0, return_inverse=True)
    trimmed = [0]

    def trim(text: str) -> str:
        short = trim_prompt(text, pc, warn=trimmed[0] < MAX_TRIM_WARNINGS)
        trimmed[0] += short != text
        return short

    by_pattern = [trim(build_prompt([n for n, v in zip(labels, row, strict=True) if v], pc)) for row in patterns]
    prompts = [by_pattern[k] for k in np.asarray(inverse).reshape(-1)]
    if pc.source == "caption" and "caption" in frame.columns:
        for i, cap in enumerate(frame["caption"]):
            if isinstance(cap, str) and cap.strip():
                prompts[i] = trim(cap)
    elif pc.source != "labels" and "text" in frame.columns:
        rng = random.Random(cfg.seed)
        memo: dict[str, str | None] = {}  # Open-i / MIMIC repeat one report for every image of a study
        for i, text in enumerate(frame["text"]):
            if not isinstance(text, str):
                continue
            if pc.source == "sentences":  # a random draw per row, so never shared
                drawn = report_prompt(extract_sections(text), pc, rng)
                drawn = trim(drawn) if drawn else None
            else:
                if text not in memo:
                    found = report_prompt(extract_sections(text), pc, rng)
                    memo[text] = trim(found) if found else None
                drawn = memo[text]
            if drawn:
                prompts[i] = drawn
    if pc.label_share > 0 and pc.source not in ("labels", "caption"):
        keep_labels = np.random.default_rng(cfg.seed).random(len(frame)) < pc.label_share
        label_prompts = [by_pattern[k] for k in np.asarray(inverse).reshape(-1)]
        prompts = [label_prompts[i] if keep else p for i, (keep, p) in enumerate(zip(keep_labels, prompts))]
    if trimmed[0] > MAX_TRIM_WARNINGS:
        log.warning("%d prompts in total were trimmed to %d tokens", trimmed[0], pc.max_tokens)
    return prompts


def _check_report_source(cfg: DataConfig, frame: pd.DataFrame) -> None:
    src = cfg.prompt.source
    if src == "caption" and "caption" not in frame.columns:
        raise MedsdError("data.prompt.source is 'caption' but no data.caption_column is set (csv source only)")
    if src in ("impression", "findings", "report", "sentences") and "text" not in frame.columns:
        raise MedsdError(
            f"data.prompt.source is {src!r} but source {cfg.source!r} has no report text; "
            "use mimic (with data.reports), openi or a phantom rendered with reports, or prompt.source: labels"
        )


def select(cfg: DataConfig, split: str) -> MedicalImageDataset:
    """Load the source and apply every filter in order, recording the rows left after each step."""
    data = load_source(cfg)
    frame, steps = data.frame, [("loaded", len(data.frame))]
    labels = sampling.select_labels(data.pathologies, cfg.labels, cfg.source)
    _check_report_source(cfg, frame)
    frame = sampling.filter_views(frame, cfg.views)
    steps.append((f"views={cfg.views}", len(frame)))
    raw = frame[labels].copy()
    frame = pd.concat(
        [frame.drop(columns=data.pathologies), sampling.apply_uncertainty(raw, labels, cfg.uncertainty)], axis=1
    )
    if not cfg.include_no_finding or cfg.single_label_only:
        if cfg.single_label_only:
            frame = sampling.single_label_filter(frame, labels, cfg.include_no_finding)
        else:
            frame = frame[sampling.positive_count(frame, labels) > 0]
        steps.append(("single_label_only" if cfg.single_label_only else "include_no_finding=False", len(frame)))
    if split != "all":  # a source's own split (PCam's files) beats the patient-level hash split
        own = "split" in frame.columns
        assigned = frame["split"] if own else sampling.split_of(frame["patient_id"], cfg.seed, cfg.split_fractions)
        frame = frame[assigned == split]
        steps.append((f"split={split}", len(frame)))
    if cfg.n_per_class is not None or cfg.balance != "none":
        frame = sampling.per_class(frame, labels, cfg.n_per_class, cfg.balance, cfg.seed)
        steps.append((f"n_per_class={cfg.n_per_class} balance={cfg.balance}", len(frame)))
    if cfg.max_samples is not None and len(frame) > cfg.max_samples:
        frame = frame.sample(n=cfg.max_samples, random_state=cfg.seed).sort_index()
        steps.append((f"max_samples={cfg.max_samples}", len(frame)))
    if frame.empty:
        trail = " → ".join(f"{name}: {n}" for name, n in steps)
        raise MedsdError(f"data selection for source {cfg.source!r} is empty ({trail}); relax the filter that hit 0")
    frame = frame.copy()
    frame["prompt"] = make_prompts(frame, labels, cfg)
    return MedicalImageDataset(frame, labels, cfg, raw_labels=raw.loc[frame.index], selection=steps)


def build_dataset(cfg: DataConfig, split: str | None = None) -> MedicalImageDataset:
    """The data set a recipe describes, for `split` (default `cfg.split`): train / val / test / all."""
    split = split or cfg.split
    if split not in ("train", "val", "test", "all"):
        raise MedsdError(f"split {split!r} is not one of train, val, test, all")
    return select(cfg, split)
