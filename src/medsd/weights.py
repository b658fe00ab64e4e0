"""Reading weight files safely: safetensors are checked before use, pickle files are refused with the reason.

Unpickling a file can run any code its author put in it, so medsd reads weights only from safetensors (or
plain tensors through `torch.load(weights_only=True)`). When a file needs more than that, the message says
why it is refused and how to get a safe copy; it never suggests turning the protection off.
"""

from __future__ import annotations

import json
from pathlib import Path

from medsd.errors import MedsdError, first_line

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WHY_REFUSED = "pickle files are refused because unpickling can run code hidden in the file"
SAFE_COPY = (
    "use a .safetensors copy of these weights (most model pages publish one; for a Hugging Face repository the "
    "safetensors convert bot opens a pull request with one, unpickling on their servers, not yours)"
)


def pickle_refusal(path: str | Path, what: str) -> MedsdError:
    """The message for a pickle weight file: it is refused, why, and where a safe copy comes from."""
    return MedsdError(f"{what} {path} is a pickle file: {WHY_REFUSED}; {SAFE_COPY}")


def check_safetensors(path: str | Path, what: str) -> Path:
    """A readable, complete safetensors file (header parses, data covers it); else a MedsdError naming it."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise MedsdError(f"{what} {path} does not exist")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refusal(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # noqa: BLE001 - SafetensorError and OSError both mean "damaged file"
        if looks_pickled(path):
            raise pickle_refusal(path, what) from None
        raise MedsdError(
            f"{what} {path} is not a complete safetensors file ({first_line(err)}); it is truncated or damaged: "
            "copy it again or re-create it"
        ) from None
    return path


def load_safetensors(path: str | Path, what: str) -> dict:
    """All tensors of a checked safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(check_safetensors(path, what)))


def pickled_model_parts(folder: str | Path) -> list[Path]:
    """Weight files of a diffusers folder that are pickles, in parts that have no safetensors alternative."""
    folder = Path(folder)
    index = folder / "model_index.json"
    try:
        parts = [k for k, v in json.loads(index.read_text()).items() if isinstance(v, list)] if index.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, AttributeError):
        parts = []
    found = []
    for part in parts or [p.name for p in folder.iterdir() if p.is_dir()]:
        sub = folder / part
        if not sub.is_dir() or any(sub.glob("*.safetensors")):
            continue
        found += sorted(p for p in sub.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    return found


def refuse_pickled_model(folder: str | Path) -> None:
    """MedsdError when a model folder's part exists only as a pickle (diffusers or transformers would try it)."""
    parts = pickled_model_parts(folder)
    if parts:
        names = ", ".join(str(p.relative_to(folder)) for p in parts)
        raise MedsdError(f"model folder {folder} stores {names} as pickle: {WHY_REFUSED}; {SAFE_COPY}")


def check_model_weights(folder: str | Path) -> None:
    """Every safetensors file of a model folder (its parts one level down) is complete: a truncated U-Net is
    named as such, not reported as a folder diffusers cannot load."""
    folder = Path(folder)
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*/*.safetensors")]):
        check_safetensors(path, "model weight file")


def looks_pickled(path: Path) -> bool:
    """A pickle (protocol 2+ starts with 0x80) or torch zip archive renamed to .safetensors (asked only once
    the file failed to parse as safetensors, whose 8-byte header length may also start with 0x80)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def error_detail(err: BaseException) -> str:
    """`Type: first line` of a loading error, for the end of a message. torch's refusal to unpickle advises
    `weights_only=False`, which would run the payload of a malicious file, so that text is never passed on."""
    import pickle

    if isinstance(err, pickle.UnpicklingError):
        return f"UnpicklingError: a pickle holding more than plain tensors; {WHY_REFUSED}"
    return f"{type(err).__name__}: {first_line(err)}"

