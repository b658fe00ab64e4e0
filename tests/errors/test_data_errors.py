"""Bad inputs to `medsd data inspect | prepare | phantom | phantom-classifier`: one line, exit 2, no traceback;
unreadable images inside a data set are skipped and listed instead."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_recipe(k, **data) -> str:
    base = {"source": "csv", "root": k.images, "csv": "labels.csv", "resolution": 32}
    return k.recipe({"data": {**base, **data}})


def inspect(k, recipe: str, *extra: str) -> list[str]:
    return ["data", "inspect", recipe, "--out", k.path("inspect"), *extra]


def prepare(k, recipe: str, *extra: str) -> list[str]:
    return ["data", "prepare", recipe, *extra]


def csv_file(k, content: bytes | str) -> str:
    """data.csv pointing at a broken copy of the label CSV (absolute, so root stays the good images)."""
    return k.file("broken.csv", content)


CASES = [
    ("recipe-missing", lambda k: inspect(k, k.path("nope.yaml")), ("nope.yaml", "does not exist")),
    ("recipe-is-a-folder", lambda k: inspect(k, k.images), ("is a folder",)),
    ("recipe-binary", lambda k: inspect(k, k.recipe(png_bytes())), ("binary", "recipe.yaml")),
    ("recipe-latin1", lambda k: inspect(k, k.recipe("data:\n  root: Röntgen\n".encode("latin-1"))),
     ("not utf-8", "re-save")),
    ("recipe-empty", lambda k: inspect(k, k.recipe("")), ("empty",)),
    ("recipe-only-comments", lambda k: inspect(k, k.recipe("# to do\n")), ("empty",)),
    ("recipe-bad-yaml", lambda k: inspect(k, k.recipe("data: [unclosed\n")), ("not valid yaml", "line")),
    ("recipe-top-level-list", lambda k: inspect(k, k.recipe("- data\n- model\n")), ("mapping",)),
    ("data-section-not-mapping", lambda k: inspect(k, k.recipe("data: 5\n")), ("'data'", "mapping")),
    ("unknown-key", lambda k: inspect(k, data_recipe(k, resolutoin=64)), ("resolutoin", "unknown key", "resolution")),
    ("unknown-source", lambda k: inspect(k, data_recipe(k, source="dicomdir")), ("data.source", "dicomdir")),
    ("resolution-negative", lambda k: inspect(k, data_recipe(k, resolution=-1)), ("data.resolution", "-1")),
    ("resolution-text", lambda k: inspect(k, data_recipe(k, resolution="big")), ("data.resolution", "big")),
    ("split-fractions-all-zero", lambda k: inspect(k, data_recipe(k, split_fractions=[0, 0, 0])),
     ("split_fractions", "positive sum")),
    ("split-fraction-negative", lambda k: inspect(k, data_recipe(k, split_fractions=[1.0, -0.5, 0.5])),
     ("split_fractions",)),
    ("split-with-zero-share", lambda k: inspect(k, data_recipe(k, split="val", split_fractions=[1, 0, 0])),
     ("data: split is 'val'", "split_fractions")),
    ("window-nan", lambda k: inspect(k, k.recipe("data:\n  window: [.nan, 400]\n")), ("data.window",)),
    ("csv-latin1", lambda k: inspect(k, data_recipe(k, csv=csv_file(k, "Path,Cardiomegaly\nbüro.png,1\n".encode(
        "latin-1")))), ("broken.csv", "not utf-8")),
    ("csv-binary", lambda k: inspect(k, data_recipe(k, csv=csv_file(k, png_bytes()))), ("broken.csv", "binary")),
    ("csv-empty", lambda k: inspect(k, data_recipe(k, csv=csv_file(k, ""))), ("broken.csv", "empty")),
    ("csv-missing", lambda k: inspect(k, data_recipe(k, csv="nope.csv")), ("nope.csv", "does not exist")),
    ("csv-without-path-column", lambda k: inspect(k, data_recipe(k, csv=csv_file(k, "file,Cardiomegaly\na.png,1\n"))),
     ("path", "column")),
    ("label-not-in-data", lambda k: inspect(k, data_recipe(k, labels=["Hernia"])), ("hernia",)),
    ("folder-source-without-classes", lambda k: inspect(k, data_recipe(k, source="folder", root=k.file(
        "empty/.keep", "") and k.path("empty"))), ("class sub-folders",)),
    ("folder-source-without-images", lambda k: inspect(k, data_recipe(k, source="folder", root=k.file(
        "classes/Edema/notes.txt", "x") and k.path("classes"))), ("no images",)),
    ("set-without-equals", lambda k: inspect(k, data_recipe(k), "--set", "data.resolution"), ("key.sub=value",)),
    ("set-wrong-type", lambda k: inspect(k, data_recipe(k), "--set", "data.resolution=big"), ("data.resolution",)),
    ("set-into-a-value", lambda k: inspect(k, data_recipe(k), "--set", "data.resolution.x=1"), ("is a value",)),
    ("set-yaml-word", lambda k: inspect(k, data_recipe(k), "--set", "data.preprocess=no"), ("data.preprocess", "'no'")),
    ("inspect-out-under-a-file", lambda k: ["data", "inspect", data_recipe(k), "--out", k.blocked()],
     ("a-file", "not a folder")),
    ("inspect-out-unwritable", lambda k: ["data", "inspect", data_recipe(k), "--out", k.unwritable()],
     ("not writable",)),
    ("inspect-negative-samples", lambda k: inspect(k, data_recipe(k), "--samples", "-1"), ("--samples",)),
    ("prepare-out-under-a-file", lambda k: prepare(k, data_recipe(k), "--out", k.blocked("cache")),
     ("a-file", "not a folder")),
    ("prepare-zero-workers", lambda k: prepare(k, data_recipe(k), "--workers", "0", "--out", k.path("c")),
     ("--workers",)),
    ("phantom-out-under-a-file", lambda k: ["data", "phantom", "--out", k.blocked(), "--n", "2", "--size", "32"],
     ("a-file",)),
    ("phantom-zero-images", lambda k: ["data", "phantom", "--out", k.path("ph"), "--n", "0"], ("n >= 1",)),
    ("phantom-classifier-without-data", lambda k: ["data", "phantom-classifier", "--data", k.path("none"), "--out",
                                                   k.path("clf")], ("train.csv", "not found")),
    ("phantom-classifier-zero-epochs", lambda k: ["data", "phantom-classifier", "--data", k.images, "--out",
                                                  k.path("clf"), "--epochs", "0"], ("--epochs",)),
]


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_data_input(build, words, bad_input) -> None:
    bad_input(build, words)


def test_unreadable_images_are_skipped_and_listed(inputs, medsd) -> None:
    """A truncated PNG and a text file named .png among good images: inspect and prepare finish and list both."""
    root = inputs.data_set_with_broken_files()
    recipe = data_recipe(inputs, root=root)
    result = medsd(["data", "inspect", recipe, "--out", inputs.path("inspect"), "--check-all"])
    assert result.code == 0, result.err[-1500:]
    assert "unreadable: 2 of 6 checked" in result.out
    assert "patient90/view1_frontal.png" in result.out and "patient91/view1_frontal.png" in result.out
    result = medsd(["data", "prepare", recipe, "--out", inputs.path("cache"), "--workers", "1"])
    assert result.code == 0, result.err[-1500:]
    assert "Traceback" not in result.err
    assert "skipped" in result.out and "patient90" in result.out and "patient91" in result.out
