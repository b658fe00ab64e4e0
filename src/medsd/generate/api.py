"""`generate(...)`: the Python API behind `medsd generate` (prompts, prompt files, every finding / label combination).

Large runs are batched (classifier-free guidance in one U-Net call per step), resumable (images whose PNG
exists are skipped; files are written atomically) and sharded across processes with accelerate: under
`accelerate launch --multi_gpu --num_processes 4 -m medsd generate ...` each process takes its share of the
job list.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medsd.errors import MedsdError
from medsd.files import output_dir
from medsd.generate import jobs as J
from medsd.generate.compose import parse_prompt
from medsd.generate.loading import LoadedModel, check_prompt, load_model
from medsd.generate.metadata import save_dicom, save_png, to_pil, write_results_csv
from medsd.generate.sampling import Condition, sample
from medsd.generate.schedulers import canonical_scheduler_name

log = logging.getLogger(__name__)


def generate(
    model: str | Path | LoadedModel,
    prompts: str | Sequence[str] | None = None,
    *,
    out_dir: str | Path = "generated",
    prompts_file: str | Path | None = None,
    all_labels: bool = False,
    labels_from: str | Path | None = None,
    min_count: int = 1,
    proportional: bool = False,
    template: str = J.DEFAULT_TEMPLATE,
    negative_prompt: str = "",
    num_images: int = 1,
    batch_size: int = 8,
    steps: int = 50,
    guidance: float = 7.5,
    scheduler: str = "pndm",
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
    embeddings: Sequence[str | Path] = (),
    dicom: bool = False,
    resume: bool = True,
    device: str = "auto",
    dtype: str = "float32",
    progress: bool = True,
) -> pd.DataFrame:
    """Generate `num_images` images per prompt (or per finding / label combination) into `out_dir`.

    Exactly one source of conditions: `prompts` (text, composable "0.3*A AND 0.7*B" allowed), `prompts_file`
    (.txt or .csv with a `prompt` column), or `all_labels=True` (every single finding, or with `labels_from`
    every label combination in a CheXpert-style CSV with its count; `proportional=True` then makes
    `num_images` in total, split over combinations as in the data). Image k uses seed `seed + k`.
    `model` is a diffusers folder / hub id / medsd model folder, or an already loaded `LoadedModel`.
    Returns the rows of `generation_results.csv` (one per image of the whole run).
    """
    sources = sum([prompts is not None, prompts_file is not None, bool(all_labels)])
    if sources != 1:
        raise MedsdError("give exactly one of --prompt, --prompts FILE or --all-labels")
    if labels_from is not None and not all_labels:
        raise MedsdError("--labels-from needs --all-labels")
    if proportional and labels_from is None:
        raise MedsdError("--proportional needs --all-labels --labels-from CSV (the counts come from the data)")
    check_settings(num_images=num_images, batch_size=batch_size, steps=steps, scheduler=scheduler,
                   guidance=guidance, lora_scale=lora_scale, height=height, width=width)
    texts: list[str] = []
    labels: list[dict[str, int]] | None = None
    label_columns: list[str] = []
    if prompts_file is not None:
        texts, labels, label_columns = J.read_prompts_file(prompts_file)
    elif not all_labels:
        texts = _as_list(prompts)
    elif labels_from is not None:
        label_table = J.read_label_csv(labels_from)  # read before the model: a bad file costs no loading
    terms = {text: parse_prompt(text) for text in dict.fromkeys(texts)}  # bad weights fail before loading
    output_dir(out_dir, "--out")

    state = _process_state()
    if not isinstance(model, LoadedModel):
        if state.num_processes > 1 and device == "auto":
            device = str(state.device)
        model = load_model(model, lora=lora, lora_scale=lora_scale, embeddings=embeddings, device=device, dtype=dtype)
    height, width = check_size(model, height, width)
    for parsed in terms.values():
        for term in parsed:
            check_prompt(model, term.text)

    if all_labels:
        # A class-conditional model knows only its own labels; a text model gets the CheXpert findings.
        findings = list(model.labels) if model.labels else list(J.CHEXPERT_FINDINGS)
        if labels_from is not None:
            combos, label_columns = J.combinations_from_csv(label_table, min_count, findings)
            if proportional:
                num_images = J.proportional_counts(num_images, [count for _, count in combos])
        else:
            combos, label_columns = J.single_findings(findings), findings
        jobs = J.label_jobs(combos, label_columns, num_images, seed, model.conditioning == "labels", template)
    else:
        jobs = J.prompt_jobs(texts, num_images, seed, labels)

    settings = {"negative_prompt": negative_prompt, "steps": steps, "guidance": guidance,
                "scheduler": canonical_scheduler_name(scheduler), "height": height, "width": width}

    def make(batch: list[J.Job]) -> np.ndarray:
        conds = [Condition.from_prompt(job.prompt, negative_prompt) for job in batch]
        return sample(model, conds, [job.seed for job in batch], steps, guidance, scheduler, height, width)

    return run_jobs(model, jobs, make, out_dir, settings, batch_size, label_columns, dicom, resume, progress)


def run_jobs(
    model: LoadedModel,
    jobs: list[J.Job],
    make: Callable[[list[J.Job]], np.ndarray],
    out_dir: str | Path,
    settings: dict[str, Any],
    batch_size: int,
    label_columns: Sequence[str] = (),
    dicom: bool = False,
    resume: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Make the images of this process's share of `jobs` in batches, save them, then write the results CSV."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _process_state()

    def done(job: J.Job) -> bool:
        dcm = out / Path(job.file).with_suffix(".dcm")
        return (out / job.file).is_file() and (not dicom or dcm.is_file())

    with state.split_between_processes(jobs) as mine:
        todo = [job for job in mine if not (resume and done(job))]
    if len(todo) < len(mine):
        log.info("resuming: %d of %d images already exist in %s", len(mine) - len(todo), len(mine), out)
    bar = tqdm(total=len(todo), desc="generating", unit="img", disable=not progress or not state.is_main_process)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        images = make(batch)
        for job, array in zip(batch, images, strict=True):
            meta = image_metadata(model, job, settings)
            image = to_pil(array)
            save_png(image, out / job.file, meta)
            if dicom:
                save_dicom(image, out / Path(job.file).with_suffix(".dcm"), {**meta, "index": job.index})
        bar.update(len(batch))
    bar.close()
    state.wait_for_everyone()
    rows = [result_row(model, job, settings, dicom) for job in jobs if (out / job.file).is_file()]
    if state.is_main_process:
        return write_results_csv(rows, out, list(label_columns))
    return pd.DataFrame(rows)


def image_metadata(model: LoadedModel, job: J.Job, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to trace (and re-make) one image; written into its PNG text chunks."""
    meta: dict[str, Any] = {"prompt": job.prompt, "seed": job.seed, **settings, "model": model.source,
                            "model_kind": model.kind, "adapters": model.adapters_text}
    if job.labels is not None:
        meta["labels"] = json.dumps(job.labels)
    meta.update({k: v for k, v in job.extra.items() if k != "data_count"})
    return meta


def result_row(model: LoadedModel, job: J.Job, settings: dict[str, Any], dicom: bool) -> dict[str, Any]:
    """One row of generation_results.csv."""
    row: dict[str, Any] = {"file": job.file, "prompt": job.prompt, **settings, "seed": job.seed,
                           "model": model.source, "adapters": model.adapters_text}
    row.update(job.labels or {})
    row.update(job.extra)
    if dicom:
        row["dicom_file"] = str(Path(job.file).with_suffix(".dcm"))
    return row


def check_settings(
    num_images: int = 1, batch_size: int = 1, steps: int = 1, scheduler: str = "pndm", guidance: float = 7.5,
    lora_scale: float = 1.0, height: int | None = None, width: int | None = None,
) -> None:
    """Validate counts, numbers and the scheduler name before any work (NaN would silently turn guidance off)."""
    for name, value in (("--num-images", num_images), ("--batch-size", batch_size), ("--steps", steps)):
        if int(value) < 1:
            raise MedsdError(f"{name} must be at least 1, got {value}")
    for name, value in (("--guidance", guidance), ("--lora-scale", lora_scale)):
        if not math.isfinite(value):
            raise MedsdError(f"{name} must be a finite number, got {value}")
    if guidance < 0:
        raise MedsdError(f"--guidance must be 0 or more (1 or less turns classifier-free guidance off), "
                         f"got {guidance:g}")
    for name, value in (("--height", height), ("--width", width)):
        if value is not None and value <= 0:
            raise MedsdError(f"{name} must be a positive number of pixels, got {value}")
    canonical_scheduler_name(scheduler)


def check_size(model: LoadedModel, height: int | None, width: int | None) -> tuple[int, int]:
    """Default to the model's native size; sizes must be multiples of the VAE's downsampling factor."""
    height = model.default_size if height is None else height
    width = model.default_size if width is None else width
    factor = model.vae_scale_factor
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise MedsdError(f"--height/--width {height}x{width} must be positive multiples of {factor} for this model "
                         "(the size its VAE shrinks an image by)")
    return height, width


def _as_list(prompts: str | Sequence[str] | None) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if not items or any(not isinstance(p, str) or not p.strip() for p in items):
        raise MedsdError(f"prompts must be non-empty text, got {prompts!r}")
    return items


def _process_state() -> Any:
    # accelerate's PartialState knows the process rank under `accelerate launch`; alone it is one process.
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
