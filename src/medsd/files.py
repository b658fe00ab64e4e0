"""Reading the user's text files and preparing output folders, every failure a one-line MedsdError.

A recipe, CSV or prompt list can be missing, a folder, binary, in another encoding or empty; an output folder
can sit under a file or be unwritable. Each of these is named with what to do, before any work starts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from medsd.errors import MedsdError, describe_os_error

RESAVE = "re-save it as UTF-8 text (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"


def _existing_file(path: str | Path, what: str, hint: str = "") -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise MedsdError(f"{what} {path} is a folder, not a file{'; ' + hint if hint else ''}")
    if not path.is_file():
        raise MedsdError(f"{what} {path} does not exist{'; ' + hint if hint else ''}")
    return path


def read_text(path: str | Path, what: str, hint: str = "") -> str:
    """The UTF-8 text of a user's file (a BOM is fine); binary or other encodings name the offending byte."""
    path = _existing_file(path, what, hint)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MedsdError(describe_os_error(err, what) or f"cannot read {what} {path}: {err}") from None
    _refuse_non_text(path, raw[:8192], what, hint)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MedsdError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at position {err.start}); {RESAVE}"
        ) from None


def _refuse_non_text(path: Path, head: bytes, what: str, hint: str = "") -> None:
    """UTF-16 (a byte-order mark) and binary files (NUL bytes) are named before decoding fails obscurely."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise MedsdError(f"{what} {path} is UTF-16 text; re-save it as UTF-8 (`iconv -f utf-16 -t utf-8 IN > OUT`)")
    if b"\x00" in head:
        raise MedsdError(f"{what} {path} is a binary file, not text; {hint or 'pass the text file meant here'}")


def read_csv(path: str | Path, what: str, **kwargs: Any) -> Any:
    """A pandas frame from a user's CSV (any pandas options); encoding, emptiness and syntax errors are named."""
    import pandas as pd

    path = _existing_file(path, what)
    if not path.name.lower().endswith((".gz", ".bz2", ".zip", ".xz", ".zst")):
        with open(path, "rb") as handle:
            _refuse_non_text(path, handle.read(8192), what, "pass the CSV file itself")
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **kwargs)
    except UnicodeDecodeError as err:
        raise MedsdError(f"{what} {path} is not UTF-8 text (at byte {err.start}); {RESAVE}") from None
    except pd.errors.EmptyDataError:
        raise MedsdError(f"{what} {path} is empty; it needs a header row and one row per item") from None
    except pd.errors.ParserError as err:
        detail = str(err).strip().splitlines()[-1][:200]
        raise MedsdError(f"{what} {path} is not a valid CSV ({detail}); check its delimiters and quoting") from None
    except OSError as err:
        raise MedsdError(describe_os_error(err, what) or f"cannot read {what} {path}: {err}") from None


def output_dir(path: str | Path, what: str) -> Path:
    """Create an output folder (and its parents) and prove it is writable, before any work is done."""
    path = Path(path).expanduser()
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise MedsdError(
            f"{what} {path} cannot be created: {blocker} is a file, not a folder; choose another path"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        # os.access is not enough: it says yes to root on a read-only mount and ignores ACL quirks.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".medsd-write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise MedsdError(f"{what} {path} is not writable ({reason}); choose another folder or fix its "
                         "permissions") from None
    return path


def output_file(path: str | Path, what: str) -> Path:
    """Prepare the folder of an output file (see `output_dir`); the file itself must not be a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MedsdError(f"{what} {path} is a folder; pass a file name such as {path / 'result.json'}")
    output_dir(path.parent if str(path.parent) else Path(os.curdir), f"the folder of {what}")
    return path
