"""The page in a real browser (Debian's Chromium through Playwright) against `medsd ui` on the tiny model:
type a prompt and generate, read the served PNGs back, see errors as messages, draw a mask and inpaint,
move the interpolation slider, open a report."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsd.generate.metadata import read_png_metadata

GENERATED = "#gen-gallery img"
PROGRESS_WATCH = """() => {
  window.__progressSeen = false;
  new MutationObserver(() => {
    if (document.querySelector('.progress-level, .progress-bar') ||
        document.body.innerText.includes('denoising')) { window.__progressSeen = true; }
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def _set_number(page, elem_id: str, value: float) -> None:
    field = page.locator(f"#{elem_id} input[type=number]").first
    field.fill(str(value))
    field.press("Enter")


def _served_pngs(page, selector: str) -> list[bytes]:
    sources = page.eval_on_selector_all(selector, "els => els.map(e => e.src)")
    return [page.request.get(src).body() for src in sources]


def _newest(out: Path, kind: str) -> Path:
    return sorted(out.glob(f"*-{kind}-*"))[-1]


def test_prompt_to_images_with_metadata_scores_and_progress(page, ui_server: dict) -> None:
    prompt = "A chest X-ray with cardiomegaly"
    page.fill("#prompt textarea", prompt)
    _set_number(page, "seed", 5)
    _set_number(page, "num-images", 3)
    _set_number(page, "steps", 8)
    page.evaluate(PROGRESS_WATCH)
    page.click("#generate")
    page.wait_for_function(f"document.querySelectorAll('{GENERATED}').length === 3")

    folder = _newest(ui_server["out"], "generate")
    for k, body in enumerate(_served_pngs(page, GENERATED)):
        image = Image.open(io.BytesIO(body))
        assert image.format == "PNG" and image.size == (32, 32)
        image.load()
        assert image.text["prompt"] == prompt and image.text["seed"] == str(5 + k)
        assert image.text["synthetic"] == "true" and image.text["scheduler"] == "ddim" and image.text["steps"] == "8"
        # The browser gets the very file medsd wrote: nothing re-encoded, metadata intact.
        assert body == (folder / f"{k:06d}.png").read_bytes()
    assert page.evaluate("window.__progressSeen"), "no progress bar was shown during generation"
    # The judge's scores: a column per finding in the table, and a label beside the selected image.
    table = page.locator("#gen-table").inner_text()
    assert "Cardiomegaly" in table and "Pleural Effusion" in table
    assert "Cardiomegaly" in page.locator("#gen-scores").inner_text()
    assert page.locator("#gen-files").inner_text().count(".png") == 3
    assert not page.outside_requests, f"the page reached outside localhost: {page.outside_requests[:5]}"


def test_bad_input_is_a_message_not_a_stack_trace(page) -> None:
    page.fill("#prompt textarea", "abc*lungs AND heart")
    page.click("#generate")
    toast = page.locator(".toast-body").first
    toast.wait_for()
    text = toast.inner_text()
    assert "'abc'" in text and "not a number" in text
    assert "Traceback" not in page.content()


def test_draw_a_mask_and_inpaint(page, ui_server: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    source = tmp_path / "source.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(source)
    _set_number(page, "num-images", 2)
    _set_number(page, "steps", 8)
    page.get_by_role("tab", name="Inpaint").click()
    page.locator('#editor button[aria-label="Upload"]').wait_for()
    for _ in range(4):  # the editor may not listen yet right after the tab opens; upload again until it shows
        page.locator("#editor input[type=file]").set_input_files(str(source))
        try:
            page.locator('#editor button[aria-label="Brush Size"]').wait_for(timeout=10_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: try the upload again
            continue
    else:
        pytest.fail("the image editor never showed the uploaded image")
    page.fill("#inpaint-prompt textarea", "A chest X-ray with pleural effusion")
    box = page.locator("#editor canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 50, y)
    page.mouse.down()
    page.mouse.move(x + 50, y, steps=4)
    page.mouse.up()
    page.click("#inpaint")
    page.wait_for_function("document.querySelectorAll('#inp-gallery img').length === 2")

    folder = _newest(ui_server["out"], "inpaint")
    drawn = np.asarray(Image.open(folder / "mask_drawn.png")) > 0
    assert 0 < drawn.sum() < drawn.size / 2, "the stroke should mark a band across the middle, not everything"
    rows = np.flatnonzero(drawn.any(axis=1))
    assert rows.min() > 4 and rows.max() < 28
    original = np.asarray(Image.open(source).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(folder / "source.png")), original)
    for k, body in enumerate(_served_pngs(page, "#inp-gallery img")):
        result = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert np.array_equal(result[~drawn], original[~drawn])  # outside the mask: the original pixels
        assert (result[drawn] != original[drawn]).any()
        assert read_png_metadata(folder / f"{k:06d}.png")["inpainting"] == "latent_blend"


def _shown_alpha(page) -> str:
    body = page.request.get(page.locator("#interp-image img").get_attribute("src")).body()
    return Image.open(io.BytesIO(body)).text["alpha"]


def test_interpolation_slider_shows_the_frame_for_its_position(page, ui_server: dict) -> None:
    page.get_by_role("tab", name="Interpolate").click()
    _set_number(page, "steps", 4)
    page.click("#interpolate")
    page.wait_for_function("document.querySelectorAll('#interp-gallery img').length === 5")
    assert _shown_alpha(page) == "1.0"  # the slider goes to the finding's end when the frames arrive
    before = page.locator("#interp-image img").get_attribute("src")
    _set_number(page, "alpha", 0.3)  # nearest frame: 0.25
    page.wait_for_function(f"document.querySelector('#interp-image img').src !== {before!r}")
    assert _shown_alpha(page) == "0.25"
    folder = _newest(ui_server["out"], "interpolate")
    assert (folder / "strip.png").is_file() and len(list(folder.glob("frame_*.png"))) == 5


def test_report_tab_opens_the_runs_report(page, ui_root: Path) -> None:
    page.get_by_role("tab", name="Reports").click()
    heading = page.frame_locator("#report-frame iframe").locator("h1")
    assert f"<h1>{heading.inner_text()}</h1>" in (ui_root / "report" / "report.html").read_text()
