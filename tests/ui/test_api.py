"""The named endpoint `generate` driven by gradio_client, as a script would drive `medsd ui`."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


def _client(ui_server: dict, tmp_path: Path):
    from gradio_client import Client

    return Client(ui_server["url"], verbose=False, analytics_enabled=False, download_files=str(tmp_path))


def test_generate_endpoint_returns_the_png_medsd_wrote(ui_server: dict, tmp_path: Path) -> None:
    client = _client(ui_server, tmp_path)
    api = client.view_api(print_info=False, return_format="dict")
    names = [p["parameter_name"] for p in api["named_endpoints"]["/generate"]["parameters"]]
    assert names == ["prompt", "steps", "guidance", "seed"]

    path = client.predict("A chest X-ray with edema", 6, 2.5, 11, api_name="/generate")
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.size == (32, 32)
        meta = image.text
    assert meta["prompt"] == "A chest X-ray with edema" and meta["seed"] == "11"
    assert meta["steps"] == "6" and meta["guidance"] == "2.5" and meta["synthetic"] == "true"
    written = sorted(ui_server["out"].glob("*-generate-*"))[-1] / "000000.png"
    assert Path(path).read_bytes() == written.read_bytes()


def test_generate_endpoint_reports_bad_input_as_a_message(ui_server: dict, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="prompt is empty"):
        _client(ui_server, tmp_path).predict("", 5, 2.0, 0, api_name="/generate")
