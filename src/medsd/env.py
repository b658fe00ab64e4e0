"""`medsd env`: what this installation runs on, for bug reports (like `diffusers-cli env`), checked against the lock.

The lock (`constraints.txt` at the top of a source checkout) holds the exact versions the test suite passed with;
`make install` installs them. A set that differs is not necessarily broken, but it is not what was tested, and the
first thing to rule out when something fails after an install.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from medsd import __version__
from medsd.errors import MedsdError

# The packages a bug report needs first: the stack a diffusion fine-tune runs on.
KEY_PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "safetensors",
                "tokenizers", "huggingface_hub", "gradio")
LOCK_NAME = "constraints.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `medsd env`."""
    parser.add_argument("--lock", type=Path, default=None,
                        help=f"lock file to compare with (default: {LOCK_NAME} of the source checkout)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(format_report(environment_report(args.lock)))
    return 0


def normalise(name: str) -> str:
    """PEP 503 name: 'torch_fidelity', 'Torch-Fidelity' and 'torch.fidelity' are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def default_lock() -> Path | None:
    """The lock of the source checkout this medsd was installed from (editable installs), if there is one."""
    candidate = Path(__file__).resolve().parents[2] / LOCK_NAME
    return candidate if candidate.is_file() else None


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines of a pip constraints file, by normalised name (comments and other lines ignored)."""
    if not path.is_file():
        raise MedsdError(f"lock file {str(path)!r} not found; pass the constraints.txt of a medsd checkout")
    pins = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    """Every installed distribution's version, by normalised name."""
    return {normalise(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def lock_differences(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    """'name installed X, lock Y' for each locked package installed at another version or missing."""
    out = []
    for name, wanted in sorted(pins.items()):
        have = installed.get(name)
        if have != wanted:
            out.append(f"{name} {have or 'missing'} (lock {wanted})")
    return out


def _torch_line() -> str:
    try:
        import torch
    except ImportError:
        return "not installed"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        where = f"CUDA {torch.version.cuda}: {names}"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        where = "Apple MPS"
    else:
        where = f"CPU only ({torch.get_num_threads()} threads)" + (
            f"; built for CUDA {torch.version.cuda}, no GPU visible" if torch.version.cuda else "")
    return f"{torch.__version__} ({where})"


def environment_report(lock: Path | None = None) -> dict:
    """Versions, device, and the differences from the lock (a dict; `format_report` prints it)."""
    installed = installed_versions()
    lock = lock or default_lock()
    report = {
        "medsd": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": _torch_line(),
        "packages": {name: installed.get(normalise(name), "not installed") for name in KEY_PACKAGES if name != "torch"},
        "lock": str(lock) if lock else None,
        "lock_differences": lock_differences(read_lock(lock), installed) if lock else None,
    }
    return report


def format_report(report: dict) -> str:
    """The report as `- key: value` lines (paste-able into an issue), plus the lock verdict in one line."""
    lines = [f"- medsd: {report['medsd']}", f"- Python: {report['python']}", f"- Platform: {report['platform']}",
             f"- torch: {report['torch']}"]
    lines += [f"- {name}: {version}" for name, version in report["packages"].items()]
    if report["lock"] is None:
        lines.append(f"lock: no {LOCK_NAME} found (not a source checkout); pass --lock PATH to compare")
    elif report["lock_differences"]:
        diffs = report["lock_differences"]
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        lines.append(f"warning: installed packages differ from the tested lock {report['lock']}: {shown}; "
                     "`make install` installs the tested set")
    else:
        lines.append(f"lock: installed packages match the tested lock {report['lock']}")
    return "\n".join(lines)
