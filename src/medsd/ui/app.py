"""The page: a sidebar of model, adapters and sampling settings, and one tab per way of generating
(prompt / every finding, interpolation, inpainting) plus a tab for the runs' reports.

Each button first copies the sidebar into the session's `Choice` state, then runs its action, then shows
the result; the action that makes images from a prompt is the public API endpoint `generate` (prompt,
steps, guidance, seed → image), so `gradio_client` scripts drive the same code the page does.
"""

from __future__ import annotations

import functools

import gradio as gr
import pandas as pd

from medsd.generate.schedulers import scheduler_names
from medsd.ui import handlers as H
from medsd.ui.catalog import Catalog, ModelEntry
from medsd.ui.service import Choice, GenerationService

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0  # the demo's setting; RoentGen used 4 with PNDM
DEFAULT_SCHEDULER = "ddim"
DEFAULT_IMAGES = 4
# Small models make 32-64 px images: show their pixels enlarged as pixels, not smoothed.
CSS = """
.medsd-pixels img, .medsd-pixels canvas { image-rendering: pixelated; }
.medsd-enlarge img { width: 100%; height: 100%; object-fit: contain; }
"""
NOTICE = ("Every image is written as a PNG whose metadata records prompt, seed, settings, model and adapters "
          "and marks it **synthetic**; downloads are those files. Synthetic images are not patient images.")


def build_app(service: GenerationService, title: str = "medsd") -> gr.Blocks:
    """The Blocks app over `service` (not launched)."""
    catalog = service.catalog
    first = catalog.models[0]
    default_choice = Choice(model=first.name, scheduler=DEFAULT_SCHEDULER, num_images=DEFAULT_IMAGES)
    actions = H.bind_actions(service)
    start, end = H.interpolation_ends(first)

    # gradio keeps a copy of every file it serves; drop copies older than a day, checking hourly.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        gr.Markdown(f"## medsd: generate and inspect synthetic medical images\n{NOTICE}")
        choice = gr.State(default_choice)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                side = _sidebar(catalog, first)
            with gr.Column(scale=3):
                with gr.Tabs() as tabs:
                    with gr.Tab("Generate", id="generate"):
                        gen = _generate_tab(first)
                    with gr.Tab("Interpolate", id="interpolate"):
                        interp = _interpolate_tab(start, end)
                    with gr.Tab("Inpaint", id="inpaint"):
                        inp = _inpaint_tab(first)
                    with gr.Tab("Reports", id="reports"):
                        rep = _reports_tab(catalog)

        picked = [side["model"], side["lora"], side["lora_scale"], side["embeddings"], side["negative"],
                  side["scheduler"], side["num_images"]]
        sampling = [side["steps"], side["guidance"], side["seed"]]

        def then_show(event: gr.events.Dependency, batch: gr.State, view: dict) -> None:
            event.success(H.show_batch, batch, [view["gallery"], view["table"], view["files"], view["image"],
                                                view["scores"], view["metadata"]], api_visibility="private")

        # Generate: the API endpoint `generate` takes (prompt, steps, guidance, seed) and returns the image.
        collect = gen["run"].click(H.page_errors(H.make_choice), picked, choice, api_visibility="private")
        run = collect.success(actions["generate"], [gen["prompt"], *sampling, choice], [gen["image"], gen["batch"]],
                              api_name="generate", api_description="Generate images from a prompt; returns the first "
                              "image as a PNG with medsd's metadata (model and settings: those picked on the page, or "
                              "the defaults).")
        then_show(run, gen["batch"], gen)
        collect = gen["all_labels"].click(H.page_errors(H.make_choice), picked, choice, api_visibility="private")
        run = collect.success(actions["all_labels"], [*sampling, choice], [gen["image"], gen["batch"]],
                              api_visibility="private")
        then_show(run, gen["batch"], gen)
        gen["gallery"].select(H.select_image, gen["batch"], [gen["image"], gen["scores"], gen["metadata"]],
                              api_visibility="private")
        gen["to_inpaint"].click(H.page_errors(H.to_editor), gen["image"], inp["editor"], api_visibility="private") \
            .success(lambda: gr.Tabs(selected="inpaint"), None, tabs, api_visibility="private")

        # Interpolate: frames first, then the slider picks the frame to look at.
        collect = interp["run"].click(H.page_errors(H.make_choice), picked, choice, api_visibility="private")
        collect.success(actions["interpolate"],
                        [interp["start"], interp["end"], interp["frames"], interp["method"], *sampling, choice],
                        [interp["batch"], interp["gallery"], interp["table"], interp["files"], interp["alpha"],
                         interp["image"], interp["scores"], interp["metadata"]], api_visibility="private")
        interp["alpha"].change(H.frame_at, [interp["batch"], interp["alpha"]],
                               [interp["image"], interp["scores"], interp["metadata"]], api_visibility="private")

        # Inpaint.
        collect = inp["run"].click(H.page_errors(H.make_choice), picked, choice, api_visibility="private")
        run = collect.success(actions["inpaint"], [inp["editor"], inp["prompt"], *sampling, choice],
                              [inp["image"], inp["batch"]], api_visibility="private")
        then_show(run, inp["batch"], inp)
        inp["gallery"].select(H.select_image, inp["batch"], [inp["image"], inp["scores"], inp["metadata"]],
                              api_visibility="private")

        # Sidebar: the model decides what a prompt looks like; a LoRA picks the base model it was trained on.
        side["model"].change(H.page_errors(functools.partial(H.on_model_change, catalog)), side["model"],
                             [side["help"], interp["start"], interp["end"], inp["editor"]], api_visibility="private")
        side["lora"].change(H.page_errors(functools.partial(H.on_lora_change, catalog)),
                            [side["lora"], side["model"]], side["model"], api_visibility="private")
        rep["pick"].change(H.page_errors(functools.partial(H.report_frame, catalog)), rep["pick"], rep["frame"],
                           api_visibility="private")
    return app


def _sidebar(catalog: Catalog, first: ModelEntry) -> dict:
    out = {}
    out["model"] = gr.Dropdown(catalog.model_names, value=first.name, label="Model", elem_id="model")
    out["help"] = gr.Markdown(H.model_help(first))
    loras = catalog.adapter_names("lora")
    out["lora"] = gr.Dropdown([H.NO_LORA, *loras], value=H.NO_LORA, label="LoRA", interactive=bool(loras))
    out["lora_scale"] = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA scale")
    tis = catalog.adapter_names("ti")
    out["embeddings"] = gr.Dropdown(tis, value=[], multiselect=True, label="Textual-inversion embeddings",
                                    interactive=bool(tis))
    out["negative"] = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative")
    out["scheduler"] = gr.Dropdown(scheduler_names(), value=DEFAULT_SCHEDULER, label="Scheduler")
    out["steps"] = gr.Slider(1, 150, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
    out["guidance"] = gr.Slider(0.0, 15.0, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance", elem_id="guidance")
    out["seed"] = gr.Number(0, precision=0, label="Seed (image k uses seed + k)", elem_id="seed")
    out["num_images"] = gr.Slider(1, 16, value=DEFAULT_IMAGES, step=1, label="Images", elem_id="num-images")
    return out


def _results(prefix: str, image_label: str = "Selected image") -> dict:
    """Gallery + the selected image with its judge scores and metadata, a score table and the files."""
    out = {}
    with gr.Row():
        out["gallery"] = gr.Gallery(label="Images", columns=4, format="png", height=360, elem_id=f"{prefix}-gallery",
                                    buttons=["download", "fullscreen"], elem_classes="medsd-pixels")
        with gr.Column():
            out["image"] = gr.Image(label=image_label, type="filepath", format="png", interactive=False,
                                    elem_id=f"{prefix}-image", buttons=["download"], height=280,
                                    elem_classes=["medsd-pixels", "medsd-enlarge"])
            out["scores"] = gr.Label(label="Judge: probability of each finding", elem_id=f"{prefix}-scores")
    out["metadata"] = gr.JSON(label="PNG metadata", open=True, elem_id=f"{prefix}-metadata")
    out["table"] = gr.Dataframe(pd.DataFrame(columns=["#", "seed", "prompt"]), interactive=False,
                                label="Every image (judge scores per finding)", elem_id=f"{prefix}-table")
    out["files"] = gr.File(label="Download the PNGs (metadata intact) and generation_results.csv",
                           file_count="multiple", interactive=False, elem_id=f"{prefix}-files")
    return out


def _generate_tab(first: ModelEntry) -> dict:
    example = "Cardiomegaly" if first.conditioning == "labels" else "A chest X-ray with cardiomegaly"
    out = {"batch": gr.State(None)}
    out["prompt"] = gr.Textbox(label="Prompt: report text, label prompt, or composable 'w*A AND w*B'", lines=2,
                               placeholder=example, elem_id="prompt")
    with gr.Row():
        out["run"] = gr.Button("Generate", variant="primary", elem_id="generate")
        out["all_labels"] = gr.Button("All label combinations (every finding)", elem_id="all-labels")
        out["to_inpaint"] = gr.Button("Send the selected image to inpainting", elem_id="to-inpaint")
    out.update(_results("gen"))
    return out


def _interpolate_tab(start: str, end: str) -> dict:
    out = {"batch": gr.State(None)}
    with gr.Row():
        out["start"] = gr.Textbox(start, label="From (healthy)", elem_id="interp-start")
        out["end"] = gr.Textbox(end, label="To (finding)", elem_id="interp-end")
    with gr.Row():
        out["frames"] = gr.Slider(2, 12, value=5, step=1, label="Frames")
        out["method"] = gr.Radio(["embedding", "compose"], value="embedding", label="Blend",
                                 info="encoder states, or noise predictions with composable weights")
        out["run"] = gr.Button("Interpolate", variant="primary", elem_id="interpolate")
    out["alpha"] = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="healthy → finding", elem_id="alpha")
    out.update(_results("interp", image_label="Frame nearest the slider"))
    return out


def _inpaint_tab(first: ModelEntry) -> dict:
    out = {"batch": gr.State(None)}
    gr.Markdown("Upload an image (or send a generated one here) and paint over the region to regenerate.")
    out["editor"] = gr.ImageEditor(
        label="Image and mask", type="numpy", image_mode="RGBA", format="png", sources=["upload", "clipboard"],
        brush=H.mask_brush(first), transforms=(), layers=False, elem_id="editor",
        height=420, elem_classes="medsd-pixels",
    )
    out["prompt"] = gr.Textbox(label="What the painted region should show", lines=1, elem_id="inpaint-prompt")
    out["run"] = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
    out.update(_results("inp"))
    return out


def _reports_tab(catalog: Catalog) -> dict:
    names = catalog.report_names()
    out = {"pick": gr.Dropdown(names, value=names[0] if names else None, label="report.html", elem_id="report-pick")}
    out["frame"] = gr.HTML(H.report_frame(catalog, names[0] if names else None), elem_id="report-frame")
    return out
