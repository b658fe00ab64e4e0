"""The page's handlers without a server: errors become one message, the drawn mask, LoRA → base model."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from medsd.errors import MedsdError
from medsd.ui import handlers as H
from medsd.ui.catalog import Adapter, Catalog, ModelEntry
from medsd.ui.service import Batch, GeneratedImage


def test_errors_become_one_message_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    @H.page_errors
    def bad_input() -> None:
        raise MedsdError("weight 'abc' in '0.5*<healthy> AND x' is not a number")

    @H.page_errors
    def crash() -> None:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(gr.Error) as err:
        bad_input()
    assert err.value.message == "weight 'abc' in '0.5*&lt;healthy&gt; AND x' is not a number"  # shown as HTML
    with pytest.raises(gr.Error) as err:
        crash()
    assert err.value.message.startswith("RuntimeError: CUDA out of memory") and "Traceback" not in err.value.message
    assert "Traceback" in caplog.text  # the server log keeps the details


def test_the_mask_is_every_painted_pixel_whatever_the_colour() -> None:
    background = np.full((8, 8, 4), 200, dtype=np.uint8)
    stroke = np.zeros((8, 8, 4), dtype=np.uint8)
    stroke[2:4, 1:6] = (255, 255, 255, 255)
    other = np.zeros((8, 8, 4), dtype=np.uint8)
    other[6, 6] = (10, 0, 0, 90)
    image, mask = H.editor_image_and_mask({"background": background, "layers": [stroke, other], "composite": None})
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert mask.sum() == 11 and mask[2:4, 1:6].all() and mask[6, 6]
    assert H.editor_image_and_mask(None) == (None, None)


def test_picking_a_lora_picks_its_base_model(tmp_path: Path) -> None:
    catalog = Catalog(models=[ModelEntry("/m/cc", "runs/cc/model", kind="class_conditional"),
                              ModelEntry("/m/base", "models/base")],
                      adapters=[Adapter("lora", "/r/lora/w.safetensors", "runs/lora", base_model="/m/base")])
    assert H.on_lora_change(catalog, "runs/lora", "runs/cc/model") == "models/base"
    assert H.on_lora_change(catalog, H.NO_LORA, "runs/cc/model") == "runs/cc/model"
    assert H.make_choice("models/base", H.NO_LORA, 1.0, None, "", "ddim", 3.0).lora is None


def test_the_slider_picks_the_nearest_frame(tmp_path: Path) -> None:
    frames = Batch(tmp_path, [GeneratedImage(tmp_path / f"frame_{i}.png", {"alpha": str(a)}, {"Edema": a})
                              for i, a in enumerate((0.0, 0.5, 1.0))])
    assert H.frame_at(frames, 0.3)[0].endswith("frame_1.png")
    assert H.frame_at(frames, 0.9)[1] == {"Edema": 1.0}
    assert H.frame_at(None, 0.5) == (None, None, None)


def test_changing_the_model_changes_what_a_prompt_looks_like() -> None:
    import functools

    catalog = Catalog(models=[ModelEntry("/m/cc", "runs/cc/model", kind="class_conditional",
                                         labels=("Edema", "Cardiomegaly"), size=64),
                              ModelEntry("/m/base", "models/base", size=512)])
    on_change = H.page_errors(functools.partial(H.on_model_change, catalog))
    help_text, start, end, editor = on_change("runs/cc/model")
    assert "class-conditional" in help_text and "Edema, Cardiomegaly" in help_text
    assert (start, end) == ("no finding", "Edema")
    assert editor.brush.default_size == 4  # 1/16 of 64 px
    help_text, start, end, editor = on_change("models/base")
    assert start == "A chest X-ray with no finding" and editor.brush.default_size == 32
    with pytest.raises(gr.Error, match="not offered"):
        on_change("elsewhere")
