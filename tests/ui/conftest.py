"""Fixtures for the web interface: a runs folder like the demo's, a judge, the `medsd ui` server started
as a real process on a free port, and Debian's Chromium driven by Playwright.

Chromium must be installed (`apt-get install -y chromium`; `.ci/run` does it): without it the browser tests
fail. Set MEDSD_SKIP_BROWSER=1 to skip them on a machine that cannot have a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPORT_TITLE = "medsd test report"


def chromium_path() -> str:
    """Debian's Chromium (Playwright's own browser downloads cannot be reached here)."""
    if os.environ.get("MEDSD_SKIP_BROWSER") == "1":
        pytest.skip("MEDSD_SKIP_BROWSER=1: browser tests skipped")
    path = os.environ.get("MEDSD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(f"Chromium not found ({path}); install it with `apt-get install -y chromium`, or set "
                    "MEDSD_SKIP_BROWSER=1 to skip the browser tests")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom reference classifier (random weights: the scores are numbers to show, not to believe)."""
    import torch

    from medsd.phantom.judge import PhantomClassifier, save_reference_classifier

    torch.manual_seed(0)
    return save_reference_classifier(PhantomClassifier(input_size=32, width=4), tmp_path_factory.mktemp("judge"))


@pytest.fixture(scope="session")
def ui_root(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-like output folder: runs/lora (a LoRA on the tiny model), runs/ti (embeddings) and a report."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("demo_out")
    lora = root / "runs" / "lora"
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"],
                                init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(
        lora, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    )
    (lora / "artefacts.json").write_text(json.dumps({"method": "lora", "base_model": str(tiny_model_dir)}))
    (lora / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # training state: never offered
    shutil.copy(lora / "pytorch_lora_weights.safetensors", lora / "checkpoints" / "checkpoint-2")
    ti = root / "runs" / "ti"
    ti.mkdir(parents=True)
    save_file({"<cardiomegaly>": torch.randn(2, 16)}, str(ti / "learned_embeds.safetensors"))
    (ti / "config.yaml").write_text(f"model:\n  pretrained: {tiny_model_dir}\n")
    (root / "report").mkdir()
    (root / "report" / "report.html").write_text(f"<html><body><h1>{REPORT_TITLE}</h1></body></html>")
    return root


@pytest.fixture(scope="session")
def ui_server(tiny_model_dir: Path, ui_root: Path, judge_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`medsd ui` as a user starts it, on a free port; yields its URL and output folder."""
    if _STARTUP_FAILURE:  # pytest retries a failed session fixture for every test; one wait is enough
        pytest.fail(_STARTUP_FAILURE[0])
    out = tmp_path_factory.mktemp("ui_out")
    port = free_port()
    log = out.parent / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "medsd", "ui", "--model", str(tiny_model_dir), "--runs", str(ui_root / "runs"),
               "--judge", str(judge_dir), "--out", str(out), "--port", str(port), "--device", "cpu"]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        # Seconds on an idle machine; the limit is for a machine shared with other heavy jobs.
        _wait_until_serving(process, url, log, timeout=420)
        yield {"url": url, "out": out, "log": log, "port": port}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_until_serving(process: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _startup_failed(f"`medsd ui` exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _startup_failed(f"`medsd ui` did not serve {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


_STARTUP_FAILURE: list[str] = []


def _startup_failed(message: str) -> None:
    _STARTUP_FAILURE.append(message)
    pytest.fail(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, ui_server: dict) -> Iterator[object]:
    """A fresh page on the server; `page.outside_requests` lists every request that left 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.outside_requests = []
    page.on("request", lambda request: None if request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else page.outside_requests.append(request.url))
    page.goto(ui_server["url"])
    page.wait_for_selector("#prompt textarea")
    yield page
    context.close()
