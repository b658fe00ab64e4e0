"""Bad recipes, settings and outputs for `medsd train`: each fails before training starts, in one line."""

from __future__ import annotations

import pytest


def train(k, recipe: str, *extra: str) -> list[str]:
    return ["train", recipe, *extra]


def good(k, **sections) -> str:
    return k.recipe(k.good_recipe(**sections))


CASES = [
    ("recipe-missing", lambda k: train(k, k.path("nope.yaml")), ("nope.yaml", "does not exist")),
    ("recipe-binary", lambda k: train(k, k.recipe(bytes(range(256)) * 4)), ("binary",)),
    ("recipe-utf16", lambda k: train(k, k.recipe("output_dir: runs/x\n".encode("utf-16"))), ("utf-16", "utf-8")),
    ("recipe-cp1252", lambda k: train(k, k.recipe("output_dir: résumé\n".encode("cp1252"))), ("not utf-8",)),
    ("recipe-empty", lambda k: train(k, k.recipe("")), ("empty",)),
    ("recipe-tab-indented", lambda k: train(k, k.recipe("training:\n\tmax_steps: 3\n")), ("not valid yaml",)),
    ("unknown-section", lambda k: train(k, k.recipe({**k.good_recipe(), "trainig": {"max_steps": 2}})),
     ("trainig", "unknown key")),
    ("unknown-method", lambda k: train(k, good(k, method={"name": "hypernetwork"})), ("method", "hypernetwork")),
    ("learning-rate-nan", lambda k: train(k, good(k, training={"learning_rate": float("nan")})),
     ("training.learning_rate",)),
    ("max-steps-zero", lambda k: train(k, good(k), "--set", "training.max_steps=0"), ("training.max_steps",)),
    ("split-fractions-all-zero", lambda k: train(k, good(k, data={"split_fractions": [0, 0, 0]})),
     ("split_fractions",)),
    ("set-unknown-key", lambda k: train(k, good(k), "--set", "training.max_step=3"), ("training.max_step",)),
    ("set-mixed-precision-bogus", lambda k: train(k, good(k), "--set", "training.mixed_precision=fp8"),
     ("training.mixed_precision", "fp8")),
    ("model-folder-missing", lambda k: train(k, good(k, model={"pretrained": k.path("no-model")})),
     ("no-model", "does not exist")),
    ("model-hub-id-offline", lambda k: train(k, good(k, model={"pretrained": "someone/unknown-model"})),
     ("someone/unknown-model", "huggingface-cli download")),
    ("model-with-pickled-encoder", lambda k: train(k, good(k, model={"pretrained": str(k.shared.pickled_model)})),
     ("pytorch_model.bin", "pickle", "refused")),
    ("resolution-not-multiple-of-vae", lambda k: train(k, good(k, data={"resolution": 33})),
     ("data.resolution", "33", "multiple of 2")),
    ("validation-size-not-multiple-of-8", lambda k: train(k, good(k, data={"resolution": 36}, validation={
        "prompts": ["a chest x-ray"]})), ("data.resolution", "36", "multiple of 8", "validation.resolution")),
    ("output-under-a-file", lambda k: train(k, good(k, output_dir=k.blocked("run"))), ("output_dir", "a-file")),
    ("latent-cache-under-a-file", lambda k: train(k, good(k, training={"cache_dir": k.blocked("cache")})),
     ("training.cache_dir", "a-file")),
    ("output-unwritable", lambda k: train(k, good(k, output_dir=k.unwritable())), ("output_dir", "not writable")),
    ("data-csv-latin1", lambda k: train(k, good(k, data={"csv": k.file("l.csv", "Path,Edema\nä.png,1\n".encode(
        "latin-1"))})), ("l.csv", "not utf-8")),
    ("resume-not-a-checkpoint", lambda k: train(k, good(k), "--resume", k.path("")), ("--resume", "state.json")),
]


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_train_input(build, words, bad_input) -> None:
    bad_input(build, words)
