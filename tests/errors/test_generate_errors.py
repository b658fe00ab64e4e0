"""Bad inputs to `medsd generate` (and its interpolate / inpaint modes): one line, exit 2, no traceback, and
nothing silently accepted (a dangling composable prompt, a zero height, NaN guidance)."""

from __future__ import annotations

import pytest


def gen(k, *extra: str, model: str | None = None) -> list[str]:
    return ["generate", "--model", model or k.model, "--steps", "1", "--out", k.path("out"), "--quiet", *extra]


def prompt(k, *extra: str, **kw) -> list[str]:
    return gen(k, "--prompt", "a chest x-ray", *extra, **kw)


def truncated_unet(k) -> str:
    """A copy of the tiny model whose U-Net weights were cut off mid-copy."""
    import shutil

    folder = k.dir / "model"
    shutil.copytree(k.shared.model, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return str(folder)


CASES = [
    ("no-model", lambda k: ["generate", "--prompt", "a chest x-ray"], ("--model",)),
    ("model-folder-missing", lambda k: prompt(k, model=k.path("no-model")), ("no-model", "does not exist")),
    ("model-is-a-file", lambda k: prompt(k, model=k.file("model.txt", "x")), ("model.txt", "is a file")),
    ("model-with-truncated-unet", lambda k: prompt(k, model=truncated_unet(k)),
     ("unet/diffusion_pytorch_model.safetensors", "truncated")),
    ("model-with-pickled-text-encoder", lambda k: prompt(k, model=str(k.shared.pickled_model)),
     ("text_encoder/pytorch_model.bin", "pickle", "refused", "safetensors")),
    ("model-index-garbage", lambda k: prompt(k, model=k.file("m/model_index.json", "{not json") and k.path("m")),
     ("not a complete diffusers folder",)),
    ("no-prompt", lambda k: gen(k), ("exactly one of",)),
    ("prompt-and-all-labels", lambda k: prompt(k, "--all-labels"), ("exactly one of",)),
    ("prompt-empty", lambda k: gen(k, "--prompt", "  "), ("non-empty",)),
    ("prompt-dangling-and", lambda k: gen(k, "--prompt", "0.3* AND"), ("empty term", "0.3* and")),
    ("prompt-bad-weight", lambda k: gen(k, "--prompt", "lots*<a> AND 0.5*<b>"), ("weight", "lots")),
    ("prompt-infinite-weight", lambda k: gen(k, "--prompt", "inf*<a> AND 0.5*<b>"), ("finite",)),
    ("height-zero", lambda k: prompt(k, "--height", "0"), ("--height", "positive")),
    ("width-negative", lambda k: prompt(k, "--width", "-32"), ("--width",)),
    ("height-not-multiple", lambda k: prompt(k, "--height", "33"), ("33", "multiple")),
    ("height-not-a-number", lambda k: prompt(k, "--height", "tall"), ("--height", "invalid int")),
    ("guidance-nan", lambda k: prompt(k, "--guidance", "nan"), ("--guidance", "finite")),
    ("guidance-inf", lambda k: prompt(k, "--guidance", "inf"), ("--guidance", "finite")),
    ("guidance-negative", lambda k: prompt(k, "--guidance", "-3"), ("--guidance",)),
    ("lora-scale-nan", lambda k: prompt(k, "--lora-scale", "nan"), ("--lora-scale", "finite")),
    ("steps-zero", lambda k: prompt(k, "--steps", "0"), ("--steps",)),
    ("num-images-negative", lambda k: prompt(k, "--num-images", "-1"), ("--num-images",)),
    ("batch-size-zero", lambda k: prompt(k, "--batch-size", "0"), ("--batch-size",)),
    ("scheduler-unknown", lambda k: prompt(k, "--scheduler", "warp"), ("scheduler", "warp")),
    ("lora-missing", lambda k: prompt(k, "--lora", k.path("none")), ("lora", "not found")),
    ("lora-truncated", lambda k: prompt(k, "--lora", k.truncated_safetensors("pytorch_lora_weights.safetensors")),
     ("lora", "truncated")),
    ("lora-pickle-bin", lambda k: prompt(k, "--lora", k.pickle_file("lora.bin")),
     ("lora.bin", "pickle", "refused", "safetensors")),
    ("lora-pickle-renamed", lambda k: prompt(k, "--lora", k.pickle_file("pytorch_lora_weights.safetensors")),
     ("pickle", "refused")),
    ("embeddings-pickle", lambda k: prompt(k, "--embeddings", k.pickle_file("learned_embeds.bin")),
     ("learned_embeds.bin", "pickle")),
    ("embeddings-truncated", lambda k: prompt(k, "--embeddings", k.truncated_safetensors("emb.safetensors")),
     ("emb.safetensors", "truncated")),
    ("prompts-file-latin1", lambda k: gen(k, "--prompts", k.file("p.txt", "Röntgen mit Erguss\n".encode("latin-1"))),
     ("p.txt", "not utf-8")),
    ("prompts-file-binary", lambda k: gen(k, "--prompts", k.file("p.txt", bytes(range(256)))), ("p.txt", "binary")),
    ("prompts-file-empty", lambda k: gen(k, "--prompts", k.file("p.txt", "# only a comment\n")), ("no prompts",)),
    ("prompts-file-missing", lambda k: gen(k, "--prompts", k.path("p.txt")), ("p.txt", "does not exist")),
    ("prompts-csv-without-prompt-column", lambda k: gen(k, "--prompts", k.file("p.csv", "text\nx\n")),
     ("prompt", "column")),
    ("prompts-csv-latin1", lambda k: gen(k, "--prompts", k.file("p.csv", "prompt\népanchement\n".encode("latin-1"))),
     ("p.csv", "not utf-8")),
    ("labels-from-latin1", lambda k: gen(k, "--all-labels", "--labels-from", k.file(
        "l.csv", "Cardiomegaly,Note\n1,é\n".encode("latin-1"))), ("l.csv", "not utf-8")),
    ("labels-from-without-all-labels", lambda k: prompt(k, "--labels-from", k.file("l.csv", "Edema\n1\n")),
     ("--labels-from needs --all-labels",)),
    ("out-under-a-file", lambda k: ["generate", "--model", k.model, "--prompt", "x", "--out", k.blocked()],
     ("--out", "a-file")),
    ("out-unwritable", lambda k: ["generate", "--model", k.model, "--prompt", "x", "--out", k.unwritable()],
     ("--out", "not writable")),
    ("interpolate-one-frame", lambda k: ["generate", "interpolate", "--model", k.model, "--start", "a", "--end", "b",
                                         "--frames", "1", "--out", k.path("i")], ("--frames",)),
    ("interpolate-guidance-nan", lambda k: ["generate", "interpolate", "--model", k.model, "--start", "a", "--end",
                                            "b", "--guidance", "nan", "--out", k.path("i")], ("--guidance",)),
    ("inpaint-image-not-an-image", lambda k: ["generate", "inpaint", "--model", k.model, "--image", k.file(
        "x.png", "text"), "--box", "0,0,8,8", "--prompt", "x", "--out", k.path("p")], ("--image", "not a readable")),
    ("inpaint-bad-box", lambda k: ["generate", "inpaint", "--model", k.model, "--image", str(next(
        k.shared.images.rglob("*.png"))), "--box", "1,2", "--prompt", "x", "--out", k.path("p")], ("--box",)),
]


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_generate_input(build, words, bad_input) -> None:
    bad_input(build, words)


def test_bad_settings_fail_before_the_model_is_loaded(inputs, medsd, monkeypatch) -> None:
    """Checks that need no model run first: a broken LoRA or NaN guidance costs no model loading."""
    import medsd.generate.loading as loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(loading, "load_pipeline", no_loading, raising=False)
    monkeypatch.setattr("medsd.models.load_pipeline", no_loading)
    for extra in (["--guidance", "nan"], ["--height", "0"], ["--lora", inputs.pickle_file("l.bin")],
                  ["--prompt", "0.3* AND"]):
        result = medsd(gen(inputs, *(["--prompt", "x"] if extra[0] != "--prompt" else []), *extra))
        assert result.code == 2 and "loaded before" not in result.err, result.err[-800:]
