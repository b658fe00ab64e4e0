"""What the page's buttons do, without the page: load the picked model once, run medsd's own generation
functions (`generate`, `interpolate`, `inpaint`) into a fresh folder per request, and read back the PNGs
they wrote, with their metadata and the judge's scores.

Every request writes an ordinary medsd output folder (PNGs with metadata + generation_results.csv) under
the interface's output folder, so what was made in the browser is as traceable as a command-line run.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medsd.errors import MedsdError
from medsd.generate.loading import LoadedModel, load_model
from medsd.generate.metadata import RESULTS_CSV, read_png_metadata
from medsd.generate.schedulers import canonical_scheduler_name, make_scheduler
from medsd.ui.catalog import Catalog
from medsd.ui.judge import Judge

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Choice:
    """The model, adapters and sampling settings picked on the page (everything but prompt, steps, guidance
    and seed, which each action takes itself)."""

    model: str
    lora: str | None = None
    lora_scale: float = 1.0
    embeddings: tuple[str, ...] = ()
    negative_prompt: str = ""
    scheduler: str = "ddim"
    num_images: int = 4


@dataclass
class GeneratedImage:
    """One PNG medsd wrote, its text chunks as read back from the file, and the judge's scores."""

    path: Path
    metadata: dict[str, str]
    scores: dict[str, float] | None = None

    @property
    def caption(self) -> str:
        head = f"seed {self.metadata.get('seed', '?')}"
        if "alpha" in self.metadata:
            head += f" · a={float(self.metadata['alpha']):.2f}"
        if not self.scores:
            return head
        top = sorted(self.scores.items(), key=lambda kv: -kv[1])[:2]
        return head + " · " + ", ".join(f"{name} {p:.2f}" for name, p in top)


@dataclass
class Batch:
    """The images of one request, in the order medsd made them, and the folder that holds them."""

    folder: Path
    images: list[GeneratedImage]
    findings: list[str] = field(default_factory=list)  # the judge's findings (empty without a judge)

    def table(self) -> pd.DataFrame:
        """One row per image: index, seed, prompt, then one column of judge probability per finding."""
        rows = []
        for i, image in enumerate(self.images):
            row = {"#": i, "seed": image.metadata.get("seed", ""), "prompt": image.metadata.get("prompt", "")}
            row.update({name: round(p, 3) for name, p in (image.scores or {}).items()})
            rows.append(row)
        return pd.DataFrame(rows, columns=["#", "seed", "prompt", *self.findings])

    def downloads(self) -> list[str]:
        """The PNG files as medsd wrote them (metadata intact) and the run's generation_results.csv."""
        files = [str(image.path) for image in self.images]
        csv = self.folder / RESULTS_CSV
        return files + ([str(csv)] if csv.is_file() else [])


class GenerationService:
    """Runs one request at a time on one loaded model (a new choice of model or adapters reloads it)."""

    def __init__(
        self, catalog: Catalog, out_dir: str | Path, judge: Judge | None = None, device: str = "auto",
        dtype: str = "float32", batch_size: int = 8,
    ) -> None:
        self.catalog = catalog
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.judge = judge
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[tuple, LoadedModel] | None = None
        self._requests = itertools.count(1)

    # ------------------------------------------------------------------ actions
    def generate(self, prompt: str, choice: Choice, steps: int, guidance: float, seed: int,
                 progress: Progress | None = None) -> Batch:
        """`choice.num_images` images of `prompt` (plain, report text, or composable `w*A AND w*B`)."""
        from medsd.generate.api import generate

        if not str(prompt or "").strip():
            raise MedsdError("the prompt is empty; type a finding or report text, e.g. 'A chest X-ray with "
                             "cardiomegaly' (or 'Cardiomegaly' for a class-conditional model)")
        def run(model: LoadedModel, folder: Path) -> pd.DataFrame:
            return generate(model, prompt, num_images=choice.num_images, out_dir=folder,
                            **self._sampling(choice, steps, guidance, seed, choice.num_images))

        return self._run("generate", choice, steps, choice.num_images, progress, run)

    def all_labels(self, choice: Choice, steps: int, guidance: float, seed: int,
                   progress: Progress | None = None) -> Batch:
        """`choice.num_images` images of every single finding and of no finding (the model's own labels for a
        class-conditional model, the CheXpert findings for a text model)."""
        from medsd.generate.api import generate
        from medsd.generate.jobs import CHEXPERT_FINDINGS

        entry = self.catalog.model(choice.model)
        conditions = 1 + len(entry.labels or CHEXPERT_FINDINGS)
        total = conditions * choice.num_images
        def run(model: LoadedModel, folder: Path) -> pd.DataFrame:
            return generate(model, all_labels=True, num_images=choice.num_images, out_dir=folder,
                            **self._sampling(choice, steps, guidance, seed, total))

        return self._run("all-labels", choice, steps, total, progress, run)

    def interpolate(self, start: str, end: str, frames: int, method: str, choice: Choice, steps: int,
                    guidance: float, seed: int, progress: Progress | None = None) -> Batch:
        """`frames` images from `start` to `end` with one seed (medsd.generate.interpolate)."""
        from medsd.generate.interpolate import interpolate

        frames = int(frames)
        def run(model: LoadedModel, folder: Path) -> pd.DataFrame:
            return interpolate(model, start, end, frames=frames, method=method, out_dir=folder,
                               **self._sampling(choice, steps, guidance, seed, frames))

        return self._run("interpolate", choice, steps, frames, progress, run)

    def inpaint(self, image: np.ndarray, mask: np.ndarray, prompt: str, choice: Choice, steps: int,
                guidance: float, seed: int, progress: Progress | None = None) -> Batch:
        """Regenerate the masked region (mask > 0) of `image` ([H, W, 3] uint8) from `prompt`."""
        from medsd.generate.inpaint import inpaint

        if image is None:
            raise MedsdError("no image to inpaint: upload one, or send a generated image to the inpainting tab")
        if mask is None or not np.any(mask):
            raise MedsdError("no mask: paint over the region to regenerate with the brush first")
        if mask.shape != image.shape[:2]:
            raise MedsdError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px but the image is "
                             f"{image.shape[1]}x{image.shape[0]}; draw the mask on the image itself")

        def run(model: LoadedModel, folder: Path) -> pd.DataFrame:
            factor = model.vae_scale_factor
            h, w = image.shape[:2]
            if h % factor or w % factor:
                raise MedsdError(f"the image is {w}x{h} px; this model needs sides that are multiples of {factor} "
                                 "(crop or resize it first)")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.astype(np.uint8)).save(folder / "source.png")
            Image.fromarray((mask > 0).astype(np.uint8) * 255).save(folder / "mask_drawn.png")
            settings = self._sampling(choice, steps, guidance, seed, choice.num_images)
            for size in ("height", "width"):
                settings.pop(size, None)
            return inpaint(model, folder / "source.png", prompt, mask=folder / "mask_drawn.png",
                           num_images=choice.num_images, out_dir=folder, **settings)

        return self._run("inpaint", choice, steps, choice.num_images, progress, run)

    # ------------------------------------------------------------------ plumbing
    def load(self, choice: Choice) -> LoadedModel:
        """The picked model with its adapters, loaded once and kept until another choice needs a reload
        (a LoRA is fused into the U-Net, so another adapter set cannot share the loaded weights)."""
        entry = self.catalog.model(choice.model)
        lora = self.catalog.adapter(choice.lora).path if choice.lora else None
        embeddings = tuple(self.catalog.adapter(name).path for name in choice.embeddings)
        key = (entry.source, lora, float(choice.lora_scale) if lora else None, embeddings)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # free the previous model before loading the next one
            model = load_model(entry.source, lora=lora, lora_scale=choice.lora_scale, embeddings=embeddings,
                               device=self.device, dtype=self.dtype)
            self._loaded = (key, model)
        return self._loaded[1]

    def _sampling(self, choice: Choice, steps: int, guidance: float, seed: int, n: int) -> dict:
        return {"negative_prompt": choice.negative_prompt or "", "steps": int(steps), "guidance": float(guidance),
                "scheduler": choice.scheduler, "seed": int(seed), "batch_size": max(1, min(n, self.batch_size)),
                "progress": False}

    def _run(self, kind: str, choice: Choice, steps: int, n_images: int, progress: Progress | None,
             make: Callable[[LoadedModel, Path], pd.DataFrame]) -> Batch:
        report = progress or (lambda fraction, desc: None)
        if int(steps) < 1 or int(n_images) < 1:
            raise MedsdError(f"steps and number of images must be at least 1 (got {steps} and {n_images})")
        canonical_scheduler_name(choice.scheduler)
        with self._lock:
            report(0.0, "loading model")
            model = self.load(choice)
            folder = self.out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{next(self._requests):03d}"
            batches = -(-int(n_images) // max(1, min(int(n_images), self.batch_size)))
            total = batches * _unet_calls_per_image_batch(model, choice.scheduler, int(steps))
            with count_unet_calls(model, total, lambda f: report(f, "denoising")):
                frame = make(model, folder)
            report(1.0, "scoring")
            return self._read_back(folder, list(frame["file"]))

    def _read_back(self, folder: Path, files: list[str]) -> Batch:
        paths = [folder / f for f in files]
        scores = self.judge.score(paths) if self.judge else [None] * len(paths)
        images = [GeneratedImage(p, read_png_metadata(p), s) for p, s in zip(paths, scores, strict=True)]
        log.info("%d images in %s", len(images), folder)
        return Batch(folder, images, list(self.judge.findings) if self.judge else [])


def _unet_calls_per_image_batch(model: LoadedModel, scheduler: str, steps: int) -> int:
    """Denoising steps the scheduler will take (PNDM takes one more than asked)."""
    sched = make_scheduler(scheduler, model.scheduler_config)
    sched.set_timesteps(steps)
    return max(1, len(sched.timesteps))


@contextmanager
def count_unet_calls(model: LoadedModel, total: int, report: Callable[[float], None]) -> Iterator[None]:
    """Report the fraction of U-Net calls done: one call per denoising step of a batch, so the page's progress
    bar moves with the sampler without a hook inside medsd's sampling loop."""
    calls = 0

    def hook(module: object, args: object, output: object) -> None:
        nonlocal calls
        calls += 1
        report(min(calls / max(total, 1), 1.0))

    handle = model.unet.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
