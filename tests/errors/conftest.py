"""The bad-input corpus: building blocks for broken files and a runner of `medsd.cli.main` in-process.

Each case in the tables of this folder is `(id, build, words)`: `build(inputs)` makes the case's files with
`Inputs` (a tiny model and a few good images are shared; everything broken is made in the case's own folder)
and returns the command line; `words` must all appear in the error it gets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

FINDINGS = ["Cardiomegaly", "Pleural Effusion"]


@dataclass
class Outcome:
    """What a command did: exit code, stdout and stderr."""

    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        """The error lines: medsd's own (`medsd: error: ...`) or argparse's (`medsd ...: error: ...`)."""
        return [line for line in self.err.splitlines() if line.startswith("medsd") and "error:" in line]


def xray(side: int = 32, seed: int = 0, bits: int = 8) -> np.ndarray:
    """A small grey image with a bright body on a dark border."""
    rng = np.random.default_rng(seed)
    top = 255 if bits == 8 else 4095
    img = np.zeros((side, side), dtype=np.uint8 if bits == 8 else np.uint16)
    img[4:-4, 4:-4] = rng.integers(top // 4, top, size=(side - 8, side - 8))
    return img


def write_image_set(root: Path, n: int = 4, side: int = 32) -> Path:
    """`n` PNGs under root/patientK/ and root/labels.csv (Path + two findings)."""
    rows = []
    for k in range(n):
        rel = f"patient{k:02d}/view1_frontal.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xray(side, seed=k)).save(root / rel)
        rows.append(f"{rel},{k % 2},{(k // 2) % 2}")
    (root / "labels.csv").write_text("Path," + ",".join(FINDINGS) + "\n" + "\n".join(rows) + "\n")
    return root


def truncated_png(path: Path, side: int = 32) -> Path:
    """A PNG cut off after half its bytes: the header reads, the pixels do not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(xray(side, seed=99)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class Evil:
    """Unpickling this runs a shell command that creates a marker file; no medsd command may ever do so."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


@dataclass
class Shared:
    """Built once per session: the tiny model, good images and a model folder with a pickled text encoder."""

    model: Path
    images: Path
    pickled_model: Path
    marker: Path


@pytest.fixture(scope="session")
def shared(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Shared:
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("corpus")
    marker = root / "PAYLOAD-RAN"
    images = write_image_set(root / "images")
    pickled = root / "pickled-model"
    shutil.copytree(tiny_model_dir, pickled)
    encoder = pickled / "text_encoder"
    state: dict[str, Any] = dict(load_file(str(encoder / "model.safetensors")))
    state["payload"] = Evil(marker)
    torch.save(state, encoder / "pytorch_model.bin")
    (encoder / "model.safetensors").unlink()
    return Shared(tiny_model_dir, images, pickled, marker)


class Inputs:
    """What a case builds its command line from: shared good inputs plus broken files in its own folder."""

    def __init__(self, shared: Shared, folder: Path):
        self.shared, self.dir = shared, folder

    @property
    def model(self) -> str:
        return str(self.shared.model)

    @property
    def images(self) -> str:
        return str(self.shared.images)

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def file(self, name: str, content: bytes | str) -> str:
        """A file with exactly this content (str is written as UTF-8)."""
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def blocked(self, name: str = "out") -> str:
        """A path whose parent is a regular file, so it can never be created."""
        blocker = self.dir / "a-file"
        blocker.write_text("not a folder")
        return str(blocker / name)

    def unwritable(self) -> str:
        """An existing folder nobody may write to (permissions; for root, the immutable attribute)."""
        folder = self.dir / "read-only"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        if _writable(folder):  # root ignores permissions
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
            if done.returncode != 0 or _writable(folder):
                pytest.skip("cannot make a folder unwritable here (root without chattr)")
        return str(folder)

    def recipe(self, content: dict[str, Any] | str | bytes, name: str = "recipe.yaml") -> str:
        """A recipe file: a mapping (dumped as YAML) or the raw text / bytes of a broken one."""
        if isinstance(content, dict):
            content = yaml.safe_dump(content, sort_keys=False)
        return self.file(name, content)

    def good_recipe(self, **sections: Any) -> dict[str, Any]:
        """A recipe that trains: csv data from the shared images, the tiny model, 1 step; sections override."""
        base: dict[str, Any] = {
            "output_dir": self.path("run"),
            "model": {"pretrained": self.model, "device": "cpu"},
            "data": {"source": "csv", "root": self.images, "csv": "labels.csv", "resolution": 32},
            "training": {"max_steps": 1, "batch_size": 2, "checkpointing_steps": 1},
            "method": {"name": "lora", "rank": 2},
            "validation": {"prompts": [], "steps": 100},
        }
        for key, value in sections.items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return base

    def image_folder(self, name: str, bad: dict[str, bytes] | None = None, truncated: tuple[str, ...] = ()) -> str:
        """A copy of the good images as a flat folder, plus broken files."""
        folder = self.dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, png in enumerate(sorted(self.shared.images.rglob("*.png"))):
            shutil.copy(png, folder / f"img{k}.png")
        for file, content in (bad or {}).items():
            (folder / file).write_bytes(content)
        for file in truncated:
            truncated_png(folder / file)
        return str(folder)

    def data_set_with_broken_files(self) -> str:
        """The good images plus a truncated PNG and a text file named .png, all listed in labels.csv."""
        root = self.dir / "with-broken"
        shutil.copytree(self.shared.images, root)
        truncated_png(root / "patient90" / "view1_frontal.png")
        (root / "patient91").mkdir()
        (root / "patient91" / "view1_frontal.png").write_text("this is not an image")
        with open(root / "labels.csv", "a") as csv:
            csv.write("patient90/view1_frontal.png,1,0\npatient91/view1_frontal.png,0,1\n")
        return str(root)

    def pickle_file(self, name: str) -> str:
        """A torch.save file whose unpickling would run a payload (creating the session's marker file)."""
        import torch

        path = self.dir / name
        torch.save({"weight": torch.zeros(2), "payload": Evil(self.shared.marker)}, path)
        return str(path)

    def truncated_safetensors(self, name: str) -> str:
        import torch
        from safetensors.torch import save_file

        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"weight": torch.randn(64, 64)}, str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        return str(path)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture(scope="session")
def make_inputs(shared: Shared) -> Callable[[Path], Inputs]:
    """`Inputs` for a folder of the caller's choice (for fixtures wider than one test)."""
    return lambda folder: Inputs(shared, folder)


@pytest.fixture
def inputs(shared: Shared, tmp_path: Path) -> Iterator[Inputs]:
    yield Inputs(shared, tmp_path)
    # undo the immutable attribute so pytest can clean up
    for folder in tmp_path.glob("read-only"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)
    assert not shared.marker.exists(), "a pickle payload was executed"


@pytest.fixture
def medsd(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], Outcome]:
    """Run `medsd ARGS` in this process; argparse's usage errors count as exit code 2 like medsd's own."""
    from medsd.cli import main

    def run(argv: list[str]) -> Outcome:
        capsys.readouterr()
        try:
            code = main(["-q", *argv])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def check_bad_input(
    build: Callable[[Inputs], list[str]], words: tuple[str, ...], inputs: Inputs, medsd: Callable[[list[str]], Outcome]
) -> Outcome:
    """The contract for every bad input: exit code 2, no traceback, an error line naming the problem."""
    result = medsd(build(inputs))
    assert "Traceback" not in result.err + result.out, result.err[-2000:]
    assert result.code == 2, f"exit {result.code}; stderr: {result.err[-1500:]}"
    assert result.errors, f"no error line on stderr: {result.err[-1500:]}"
    message = " ".join(result.errors).lower()
    missing = [word for word in words if word.lower() not in message]
    assert not missing, f"error does not mention {missing}: {result.errors}"
    return result


@pytest.fixture
def bad_input(inputs: Inputs, medsd: Callable[[list[str]], Outcome]) -> Callable[..., Outcome]:
    """`bad_input(build, words)` runs a case and checks the contract."""
    return lambda build, words: check_bad_input(build, words, inputs, medsd)
