"""Bad inputs to `medsd model tiny | info` and `medsd demo`: one line, exit 2, no traceback."""

from __future__ import annotations

import shutil

import pytest

from medsd.weights import WHY_REFUSED


def damaged_unet(k) -> str:
    """A copy of the tiny model whose U-Net weights are cut short."""
    folder = k.dir / "damaged-model"
    shutil.copytree(k.shared.model, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return str(folder)


CASES = [
    ("info-folder-missing", lambda k: ["model", "info", k.path("none")], ("none", "does not exist")),
    ("info-hub-id-offline", lambda k: ["model", "info", "someone/no-such-model"], ("huggingface-cli download",)),
    ("info-folder-without-index", lambda k: ["model", "info", k.file("m/unet/config.json", "{}") and k.path("m")],
     ("not a complete diffusers folder",)),
    ("info-pickled-text-encoder", lambda k: ["model", "info", str(k.shared.pickled_model)],
     ("text_encoder/pytorch_model.bin", WHY_REFUSED)),
    ("info-truncated-unet", lambda k: ["model", "info", damaged_unet(k)],
     ("unet/diffusion_pytorch_model.safetensors", "truncated")),
    ("tiny-out-under-a-file", lambda k: ["model", "tiny", "--out", k.blocked()], ("--out", "a-file")),
    ("tiny-out-unwritable", lambda k: ["model", "tiny", "--out", k.unwritable()], ("--out", "not writable")),
    ("tiny-unknown-size", lambda k: ["model", "tiny", "--out", k.path("m"), "--size", "huge"], ("--size", "huge")),
    ("demo-out-under-a-file", lambda k: ["demo", "--out", k.blocked(), "--smoke"], ("--out", "a-file")),
    ("demo-out-unwritable", lambda k: ["demo", "--out", k.unwritable(), "--smoke"], ("--out", "not writable")),
    ("demo-minutes-zero", lambda k: ["demo", "--out", k.path("d"), "--minutes", "0"], ("--minutes",)),
    ("demo-minutes-nan", lambda k: ["demo", "--out", k.path("d"), "--minutes", "nan"], ("--minutes",)),
    ("demo-minutes-text", lambda k: ["demo", "--out", k.path("d"), "--minutes", "ten"], ("--minutes",)),
]


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_model_or_demo_input(build, words, bad_input) -> None:
    bad_input(build, words)
