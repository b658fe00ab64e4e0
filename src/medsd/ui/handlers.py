"""The page's event handlers: page values in, `GenerationService` call, page values out.

Every handler goes through `page_errors`, so a problem reaches the browser as one message (a `gr.Error`
modal) and never as a stack trace; unexpected failures are logged in full on the server only.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import gradio as gr
import numpy as np

from medsd.errors import MedsdError
from medsd.ui.catalog import Catalog, ModelEntry
from medsd.ui.service import Batch, Choice, GeneratedImage, GenerationService

log = logging.getLogger(__name__)
NO_LORA = "none"


def page_errors(fn: Callable) -> Callable:
    """Turn any exception of `fn` into a gr.Error whose message is the one line a user can act on."""

    @functools.wraps(fn)  # keeps the signature: gradio finds `progress` / `SelectData` parameters through it
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MedsdError as err:
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        except Exception as err:  # noqa: BLE001 - the page shows one line; the log keeps the traceback
            log.exception("web interface: %s failed", getattr(fn, "__name__", fn))
            message = f"{type(err).__name__}: {str(err)[:300]} (the server log has the details)"
            raise gr.Error(html.escape(message, quote=False), print_exception=False) from None

    return wrapper


def progress_reporter(progress: gr.Progress) -> Callable[[float, str], None]:
    return lambda fraction, desc: progress(fraction, desc=desc)


# ---------------------------------------------------------------------- settings
def make_choice(model: str, lora: str | None, lora_scale: float, embeddings: list[str] | None, negative: str,
                scheduler: str, num_images: float) -> Choice:
    """The sidebar's values as one Choice (kept in the session's state for the actions that follow)."""
    return Choice(model=model, lora=None if lora in (None, "", NO_LORA) else lora, lora_scale=float(lora_scale),
                  embeddings=tuple(embeddings or ()), negative_prompt=negative or "", scheduler=scheduler,
                  num_images=int(num_images))


def model_help(entry: ModelEntry) -> str:
    """What to type for this model: finding names for a class-conditional model, report text otherwise."""
    if entry.conditioning == "labels":
        labels = ", ".join(entry.labels) or "its own labels"
        return (f"**{entry.name}** is class-conditional: a prompt is finding names ({labels}, or `no finding`), "
                "comma-separated for combinations; composable: `0.5*Cardiomegaly AND 0.5*Pleural Effusion`")
    return (f"**{entry.name}** ({entry.kind}) reads text: report text or label prompts such as "
            "`A chest X-ray with cardiomegaly`; composable: `0.5*A chest X-ray with edema AND 0.5*...`")


def interpolation_ends(entry: ModelEntry) -> tuple[str, str]:
    if entry.conditioning == "labels":
        return "no finding", entry.labels[0] if entry.labels else "Cardiomegaly"
    return "A chest X-ray with no finding", "A chest X-ray with cardiomegaly"


def mask_brush(entry: ModelEntry) -> gr.Brush:
    """A white brush about 1/16 of the image wide: gradio's automatic size (25 px) would cover a 32-64 px
    image of the small models whole."""
    size = max(1, entry.size // 16) if entry.size else "auto"
    return gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=size)


def on_model_change(catalog: Catalog, name: str) -> tuple:
    entry = catalog.model(name)
    start, end = interpolation_ends(entry)
    return model_help(entry), start, end, gr.ImageEditor(brush=mask_brush(entry))


def on_lora_change(catalog: Catalog, lora: str, model: str) -> str:
    """Picking a LoRA picks the base model its run trained on, when that model is offered."""
    if lora in (None, "", NO_LORA):
        return model
    base = catalog.adapter(lora).base_model
    for entry in catalog.models:
        if base and entry.source == base:
            return entry.name
    return model


# ---------------------------------------------------------------------- results
def gallery_items(batch: Batch | None) -> list[tuple[str, str]]:
    """(PNG path, caption) pairs: the files medsd wrote are served as they are, metadata included."""
    return [(str(image.path), image.caption) for image in batch.images] if batch else []


def details(image: GeneratedImage | None) -> tuple:
    """What sits beside an image: the image itself, the judge's per-finding scores, its PNG metadata."""
    if image is None:
        return None, None, None
    return str(image.path), image.scores or None, image.metadata


def show_batch(batch: Batch | None) -> tuple:
    """Gallery, score table and downloads of a request, and the details of its first image."""
    if batch is None:
        return [], None, None, None, None, None
    first = batch.images[0] if batch.images else None
    return (gallery_items(batch), batch.table(), batch.downloads(), *details(first))


def select_image(batch: Batch | None, evt: gr.SelectData) -> tuple:
    if batch is None or evt.index is None or not 0 <= int(evt.index) < len(batch.images):
        return details(None)
    return details(batch.images[int(evt.index)])


# ---------------------------------------------------------------------- actions
def bind_actions(service: GenerationService) -> dict[str, Callable]:
    """The handlers of the page's buttons, bound to one service."""

    @page_errors
    def generate(prompt: str, steps: float, guidance: float, seed: float, choice: Choice,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, Batch]:
        """Generate images from a prompt; returns the first image (a PNG with its metadata)."""
        batch = service.generate(prompt, choice, int(steps), float(guidance), int(seed), progress_reporter(progress))
        return str(batch.images[0].path), batch

    @page_errors
    def all_labels(steps: float, guidance: float, seed: float, choice: Choice,
                   progress: gr.Progress = gr.Progress()) -> tuple[str, Batch]:
        batch = service.all_labels(choice, int(steps), float(guidance), int(seed), progress_reporter(progress))
        return str(batch.images[0].path), batch

    @page_errors
    def interpolate(start: str, end: str, frames: float, method: str, steps: float, guidance: float, seed: float,
                    choice: Choice, progress: gr.Progress = gr.Progress()) -> tuple:
        batch = service.interpolate(start, end, int(frames), method, choice, int(steps), float(guidance), int(seed),
                                    progress_reporter(progress))
        return (batch, gallery_items(batch), batch.table(), batch.downloads(), gr.update(value=1.0),
                *details(batch.images[-1]))

    @page_errors
    def inpaint(editor: dict | None, prompt: str, steps: float, guidance: float, seed: float, choice: Choice,
                progress: gr.Progress = gr.Progress()) -> tuple[str, Batch]:
        image, mask = editor_image_and_mask(editor)
        batch = service.inpaint(image, mask, prompt, choice, int(steps), float(guidance), int(seed),
                                progress_reporter(progress))
        return str(batch.images[0].path), batch

    return {"generate": generate, "all_labels": all_labels, "interpolate": interpolate, "inpaint": inpaint}


def frame_at(batch: Batch | None, alpha: float) -> tuple:
    """The interpolation frame nearest to `alpha` (0 = start condition, 1 = end condition)."""
    if batch is None or not batch.images:
        return details(None)
    alphas = [float(image.metadata.get("alpha", 0.0)) for image in batch.images]
    nearest = int(np.argmin([abs(a - float(alpha)) for a in alphas]))
    return details(batch.images[nearest])


def editor_image_and_mask(editor: dict | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The ImageEditor's background as RGB uint8 and the mask painted on it: every pixel any brush layer
    covers (alpha > 0), whatever the brush colour."""
    if not editor or editor.get("background") is None:
        return None, None
    background = np.asarray(editor["background"])
    image = np.repeat(background[:, :, None], 3, axis=2) if background.ndim == 2 else background[:, :, :3]
    mask = np.zeros(image.shape[:2], dtype=bool)
    for layer in editor.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == mask.shape:
            mask |= layer[:, :, 3] > 0
    return image.astype(np.uint8), mask


def to_editor(path: str | None) -> dict | None:
    """An image as the inpainting editor's starting value (no layers yet)."""
    if not path:
        raise gr.Error("generate an image first, then send it to inpainting", print_exception=False)
    return {"background": path, "layers": [], "composite": path}


def report_frame(catalog: Catalog, name: str | None) -> str:
    """The report in an iframe served by the app (only the report.html files found are allowed)."""
    if not name:
        return "<p>No report.html found; <code>medsd evaluate report</code> writes one.</p>"
    path = catalog.report(name)
    url = html.escape(f"gradio_api/file={quote(str(path))}", quote=True)
    return (f'<p><a href="{url}" target="_blank" rel="noopener">open {html.escape(name)} in a new tab</a></p>'
            f'<iframe src="{url}" title="{html.escape(name)}" style="width:100%;height:80vh;border:1px solid #ccc">'
            "</iframe>")
