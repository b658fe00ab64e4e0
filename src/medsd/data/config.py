"""The `data:` section of a recipe: where images come from, how they become (image, prompt, labels) samples."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medsd.config_base import StrictModel
from medsd.data.pcam import PcamConfig
from medsd.data.picai import PicaiConfig

SOURCES = ("chexpert", "mimic", "nih", "openi", "csv", "folder", "phantom", "picai", "pcam")
Uncertainty = Literal["ones", "zeros", "ignore"]


class PromptConfig(StrictModel):
    """How a sample's labels or report become its text prompt."""

    source: Literal["labels", "impression", "findings", "report", "sentences", "caption"] = Field(
        "labels",
        description="What the prompt is made from: the positive labels through `template`, a report section "
        "(impression, findings, report = findings + impression), random report `sentences`, or a CSV `caption` "
        "column. Samples without report text fall back to the label prompt.",
    )
    template: str = Field(
        "A chest X-ray with {labels}", description="Label prompt template; `{labels}` becomes the joined findings."
    )
    no_finding: str = Field("no finding", description="Wording put into `{labels}` when no label is positive.")
    joiner: str = Field(", ", description="Text placed between findings except the last two.")
    last_joiner: str = Field(
        " and ", description='Text before the last finding: "Cardiomegaly and Pleural Effusion", "A, B and C".'
    )
    lowercase: bool = Field(False, description="Lower-case the finding names inside the prompt.")
    placeholder_tokens: bool = Field(
        False,
        description="Use one textual-inversion placeholder token per class (`<cardiomegaly>`) instead of its name.",
    )
    placeholder_format: str = Field(
        "<{slug}>", description="Placeholder token format; `{slug}` is the label lower-cased with `_` for spaces."
    )
    max_tokens: int = Field(
        77, ge=4, description="Token limit of the text encoder (CLIP: 77 including start/end); longer text is cut."
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer folder used to count tokens when trimming; None counts words + punctuation "
        "(an over-estimate of CLIP BPE tokens is safer than an under-estimate).",
    )
    n_sentences: int = Field(2, ge=1, description="Number of report sentences drawn when source is `sentences`.")
    label_share: float = Field(
        0.0, ge=0, le=1,
        description="With a report source: this share of the samples (chosen by data.seed) gets the label prompt "
        "instead of its report, so one model answers both \"A chest X-ray with Cardiomegaly\" and report text.",
    )


class DataConfig(StrictModel):
    """The `data:` section of every recipe: source, selection, preprocessing, prompts, split and cache."""

    source: Literal["chexpert", "mimic", "nih", "openi", "csv", "folder", "phantom", "picai", "pcam"] = Field(
        "phantom",
        description="Data source kind: chexpert | mimic | nih | openi | csv (images + CSV with a path column) | "
        "folder (one sub-folder per class) | phantom (folder written by `medsd data phantom`) | picai (PI-CAI "
        "prostate MRI studies, see data.picai) | pcam (Patch Camelyon HDF5 files, see data.pcam).",
    )
    root: str = Field("data/phantom", description="Image root folder; CSV paths are resolved against it.")
    csv: str | None = Field(
        None,
        description="Label CSV (relative to root when not absolute). chexpert: train.csv/valid.csv; mimic: the "
        "CheXpert/NegBio label CSV; nih: Data_Entry_2017*.csv; openi: the reports .tgz or XML folder. "
        "None uses the source's default (phantom: the CSV inside root; nih/openi: the copy in torchxrayvision).",
    )
    metadata_csv: str | None = Field(
        None, description="MIMIC-CXR-JPG metadata CSV (dicom_id, subject_id, study_id, ViewPosition)."
    )
    reports: str | None = Field(
        None,
        description="MIMIC report root (files/pNN/pID/sID.txt) or a CSV with study_id + text, for report prompts.",
    )
    path_column: str = Field("Path", description="csv source: column holding image paths (relative to root).")
    channel_columns: list[str] | None = Field(
        None,
        description="csv source: several path columns packed into RGB channels (prostate MRI: [t2w, adc, dwi]).",
    )
    slice_column: str | None = Field(
        None, description="csv source: per-row slice number of a NIfTI volume (one row per slice); beats slice_index."
    )
    label_columns: list[str] | None = Field(
        None, description="csv source: label columns (1 / 0 / -1 / blank); None = every column holding only those."
    )
    caption_column: str | None = Field(None, description="csv source: free-text caption column (prompt source).")
    patient_column: str | None = Field(
        None, description="csv source: patient id column; None = a `patient...` path part, else the file name."
    )
    mask_columns: list[str] = Field(
        default_factory=list,
        description="csv and phantom sources: columns naming each image's region masks (image files the image's "
        "size, relative to root; several joined by `|`; blank: none). Their union follows the image's preprocessing "
        "and weights the denoising loss (training.masked_loss_weight). Phantom: `Mask <finding>` columns and "
        "`Mask Heart`.",
    )
    resolution: int = Field(64, ge=8, le=4096, description="Side of the square training image in pixels.")
    channels: Literal[1, 3] = Field(3, description="Output channels: 3 for Stable Diffusion's VAE, 1 for grey models.")
    labels: list[str] | None = Field(
        None, description="Findings to use, in canonical prompt order; None = every finding the source has."
    )
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="How samples become text prompts.")
    uncertainty: Uncertainty | dict[str, Uncertainty] = Field(
        "zeros",
        description="What an uncertain (-1) label becomes: ones | zeros | ignore (NaN, no information); a mapping "
        "sets it per label, unnamed labels use `zeros`. Blank (not mentioned) is always negative.",
    )
    views: list[str] | None = Field(
        None, description="Keep only these views: Frontal, Lateral, AP, PA, LL (None keeps all)."
    )
    single_label_only: bool = Field(
        False, description="Keep only images with exactly one positive finding (or none, if `include_no_finding`)."
    )
    include_no_finding: bool = Field(True, description="Keep images with no positive finding.")
    n_per_class: int | None = Field(
        None, ge=1, description="At most N images per finding (by first positive label; `no finding` is a class)."
    )
    balance: Literal["none", "cap", "oversample"] = Field(
        "none",
        description="Balance classes: cap every class at the smallest class's size, or oversample (repeat) "
        "every class up to the largest.",
    )
    max_samples: int | None = Field(None, ge=1, description="Keep at most this many samples (after a seeded shuffle).")
    split: Literal["train", "val", "test", "all"] = Field("all", description="Which patient-level split to use.")
    split_fractions: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="Train / val / test fractions of patients (a patient is in one split only)."
    )
    seed: int = Field(0, description="Seed for splits, sampling and sentence choice (deterministic).")
    preprocess: Literal["pad", "center_crop", "resize_short"] = Field(
        "pad",
        description="pad: crop to non-zero content, resize the longest edge, zero-pad to square (textual-inversion "
        "recipe); center_crop: resize short side then centre crop; resize_short: same, no content crop.",
    )
    crop_to_content: bool = Field(
        True, description="Crop away zero borders first (only for `pad`; never for picai and pcam, cropped already)."
    )
    augment: bool = Field(
        False, description="Light augmentation (small shift/rotate/contrast). Off by default: defeats latent caching."
    )
    slice_index: int | None = Field(None, description="NIfTI / multi-frame DICOM slice; None = middle slice.")
    slice_axis: int = Field(2, ge=0, le=2, description="NIfTI axis to slice along (2 = axial for RAS volumes).")
    window: tuple[float, float] | None = Field(
        None, description="DICOM window (centre, width) overriding the file's VOI LUT; None uses the file's."
    )
    min_size: int = Field(16, ge=1, description="Images smaller than this on either side are skipped as unreadable.")
    max_pixels: int = Field(
        200_000_000, ge=1, description="Images with more pixels than this are skipped (decompression bombs)."
    )
    cache_dir: str | None = Field(
        None, description="Folder written by `medsd data prepare`; when it matches, samples are read from it."
    )
    cache_dtype: Literal["uint8", "uint16"] = Field("uint8", description="Pixel type of the prepared cache.")
    workers: int = Field(2, ge=1, description="Decoding processes for `medsd data prepare`.")
    picai: PicaiConfig = Field(default_factory=PicaiConfig, description="Settings of the picai source.")
    pcam: PcamConfig = Field(default_factory=PcamConfig, description="Settings of the pcam source.")

    @model_validator(mode="after")
    def _split_is_possible(self) -> DataConfig:
        fractions = self.split_fractions
        if any(f < 0 for f in fractions) or sum(fractions) <= 0:
            raise ValueError(
                f"split_fractions {list(fractions)} must be train/val/test shares >= 0 with a positive sum, "
                "e.g. [0.8, 0.1, 0.1]"
            )
        chosen = {"train": 0, "val": 1, "test": 2}.get(self.split)
        if chosen is not None and fractions[chosen] == 0:
            raise ValueError(f"split is {self.split!r} but its share in split_fractions is 0")
        return self

    @model_validator(mode="after")
    def _masks_are_possible(self) -> DataConfig:
        if not self.mask_columns:
            return self
        if self.source not in ("csv", "phantom"):
            raise ValueError(f"mask_columns is read from a CSV: use the csv or phantom source, not {self.source!r}")
        if self.augment:
            raise ValueError("mask_columns and augment do not go together (the augmentation would move the image "
                             "but not its mask); turn augment off")
        return self
