"""Bad inputs to `medsd evaluate ...`: one line, exit 2, no traceback; unreadable images among --real or
--generated are skipped and named while the measure goes on."""

from __future__ import annotations

import json

import pytest

from medsd.weights import WHY_REFUSED


def diversity(k, folder: str, *extra: str) -> list[str]:
    return ["evaluate", "diversity", "--generated", folder, "--size", "32", *extra]


def fid(k, real: str, generated: str, *extra: str) -> list[str]:
    return ["evaluate", "fid", "--real", real, "--generated", generated, "--size", "32", *extra]


def classifier_with_truncated_weights(k) -> str:
    from medsd.phantom.judge import ARCH

    k.file("clf/config.json", json.dumps({"arch": ARCH, "findings": ["Cardiomegaly"], "input_size": 32, "width": 8}))
    k.truncated_safetensors("clf/model.safetensors")
    return k.path("clf")


CASES = [
    ("real-missing", lambda k: fid(k, k.path("none"), k.images), ("none", "does not exist")),
    ("generated-empty-folder", lambda k: diversity(k, k.file("empty/.keep", "") and k.path("empty")),
     ("holds no images",)),
    ("all-images-unreadable", lambda k: diversity(k, k.file("bad/a.png", "text") and k.path("bad")),
     ("none of the 1 images", "a.png")),
    ("generation-table-latin1", lambda k: diversity(k, k.file("g/generation_results.csv", "file,prompt\na.png,é\n"
                                                              .encode("latin-1")) and k.path("g")),
     ("generation_results.csv", "not utf-8")),
    ("generation-table-without-file-column", lambda k: diversity(k, k.file("g/generation_results.csv", "prompt\nx\n")
                                                                 and k.path("g")), ("'file' column",)),
    ("size-zero", lambda k: diversity(k, k.images, "--size", "0"), ("--size",)),
    ("limit-negative", lambda k: fid(k, k.images, k.images, "--limit", "-2"), ("--limit",)),
    ("json-under-a-file", lambda k: diversity(k, k.images, "--json", k.blocked("r.json")), ("--json", "a-file")),
    ("json-is-a-folder", lambda k: diversity(k, k.images, "--json", k.path("")), ("--json", "is a folder")),
    ("faithfulness-without-classifier", lambda k: ["evaluate", "faithfulness", "--generated", k.images],
     ("needs a classifier",)),
    ("phantom-classifier-missing", lambda k: ["evaluate", "faithfulness", "--generated", k.images,
                                              "--phantom-classifier", k.path("clf")], ("clf",)),
    ("phantom-classifier-truncated", lambda k: ["evaluate", "faithfulness", "--generated", k.images,
                                                "--phantom-classifier", classifier_with_truncated_weights(k)],
     ("clf/model.safetensors", "truncated")),
    ("phantom-classifier-foreign-config", lambda k: ["evaluate", "faithfulness", "--generated", k.images,
                                                     "--phantom-classifier", k.truncated_safetensors(
                                                         "clf/model.safetensors") and k.file(
                                                         "clf/config.json", json.dumps({"arch": "resnet"})) and
                                                     k.path("clf")], ("clf/config.json", "resnet")),
    ("inception-weights-pickle", lambda k: fid(k, k.images, k.images, "--space", "inception", "--inception-weights",
                                               k.pickle_file("pt_inception.pth")), ("pt_inception.pth", WHY_REFUSED)),
    ("inception-weights-garbage", lambda k: fid(k, k.images, k.images, "--space", "inception", "--inception-weights",
                                                k.file("w.pth", bytes(range(200)))), ("w.pth", "not a readable")),
    ("xrv-weights-truncated", lambda k: fid(k, k.images, k.images, "--space", "xrv", "--xrv-weights",
                                            k.truncated_safetensors("xrv.safetensors")), ("xrv.safetensors",)),
    ("memorization-threshold-nan", lambda k: ["evaluate", "memorization", "--train", k.images, "--generated",
                                              k.images, "--ssim-threshold", "nan"], ("--ssim-threshold",)),
    ("report-out-under-a-file", lambda k: ["evaluate", "report", "--real", k.images, "--generated", k.images,
                                           "--out", k.blocked()], ("--out", "a-file")),
    ("report-augmentation-not-json", lambda k: ["evaluate", "report", "--real", k.images, "--generated", k.images,
                                                "--out", k.path("r"), "--augmentation", k.file("a.json", "{oops")],
     ("--augmentation", "not valid json")),
    ("augment-config-binary", lambda k: ["evaluate", "augment", "--real", k.images, "--synthetic", k.images, "--test",
                                         k.images, "--findings", "Cardiomegaly", "--config",
                                         k.file("a.yaml", bytes(range(256)))], ("a.yaml", "binary")),
    ("reader-study-answers-missing", lambda k: ["evaluate", "reader-study", "--answers", k.path("a.csv"), "--key",
                                                k.file("key.csv", "case,truth\nc1,real\n")], ("a.csv",)),
    ("reader-study-too-few-images", lambda k: ["evaluate", "reader-study", "--real", k.images, "--generated", k.images,
                                               "--out", k.path("kit"), "--n", "50"], ("fewer than the 50",)),
]


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_evaluate_input(build, words, bad_input) -> None:
    bad_input(build, words)


def test_unreadable_images_are_skipped_and_named(inputs, medsd) -> None:
    """A truncated PNG and a non-image named .png among --real and --generated: the measure runs on the rest."""
    real = inputs.image_folder("real", bad={"notes.png": b"not an image at all"})
    generated = inputs.image_folder("generated", truncated=("cut.png",))
    result = medsd(["evaluate", "diversity", "--generated", generated, "--size", "32", "--json",
                    inputs.path("d.json")])
    assert result.code == 0, result.err[-1500:]
    assert "cut.png" in result.err and "skipped 1 of 5 unreadable" in result.err
    result = medsd(["evaluate", "report", "--real", real, "--generated", generated, "--size", "32", "--out",
                    inputs.path("report")])
    assert result.code == 0, result.err[-1500:]
    assert "notes.png" in result.err and "cut.png" in result.err
    metrics = json.loads((inputs.dir / "report" / "metrics.json").read_text())
    assert metrics["sets"]["n_real"] == 4 and metrics["sets"]["n_generated"] == 4
    assert [s["file"] for s in metrics["sets"]["skipped_real"]] == ["notes.png"]
    assert [s["file"] for s in metrics["sets"]["skipped_generated"]] == ["cut.png"]
    assert "cut.png" in (inputs.dir / "report" / "report.html").read_text()
