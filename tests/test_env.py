"""`medsd env`: versions for bug reports, and a one-line warning when the installed set is not the tested lock."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from medsd.cli import main
from medsd.env import LOCK_NAME, default_lock, lock_differences, normalise, read_lock


def _write_lock(path: Path, pins: dict[str, str]) -> Path:
    lines = ["# comment line", "--extra-index-url https://example.invalid/simple", ""]
    lines += [f"{name}=={version}" for name, version in pins.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_names_python_torch_and_the_diffusion_stack(tmp_path, capsys):
    lock = _write_lock(tmp_path / "lock.txt", {"diffusers": metadata.version("diffusers")})
    assert main(["env", "--lock", str(lock)]) == 0
    out = capsys.readouterr().out
    for name in ("Python", "torch", "diffusers", "transformers", "peft", "accelerate"):
        assert f"- {name}: " in out, name
    assert f"- transformers: {metadata.version('transformers')}" in out
    assert "CPU only" in out or "CUDA" in out or "MPS" in out
    assert out.strip().splitlines()[-1].startswith("lock: installed packages match")


def test_a_differing_or_missing_package_is_one_warning_line(tmp_path, capsys):
    pins = {"transformers": "0.0.1", "Torch_Fidelity": metadata.version("torch-fidelity"),
            "not-a-real-package-xyz": "1.0"}
    lock = _write_lock(tmp_path / "lock.txt", pins)
    assert main(["env", "--lock", str(lock)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("warning: installed packages differ from the tested lock")
    assert f"transformers {metadata.version('transformers')} (lock 0.0.1)" in last
    assert "not-a-real-package-xyz missing (lock 1.0)" in last
    assert "torch-fidelity" not in last  # same version under another spelling of its name is a match
    assert "make install" in last


def test_lock_parsing_and_comparison():
    assert normalise("Torch_Fidelity") == normalise("torch.fidelity") == "torch-fidelity"
    assert lock_differences({"a": "1"}, {"a": "1", "b": "2"}) == []
    assert lock_differences({"a": "1"}, {"a": "2"}) == ["a 2 (lock 1)"]


def test_the_checkout_lock_pins_the_tested_stack_and_is_found():
    lock = default_lock()
    assert lock is not None and lock.name == LOCK_NAME
    pins = read_lock(lock)
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "pip"):
        assert name in pins, name


def test_a_missing_lock_file_is_a_clear_error(tmp_path, capsys):
    assert main(["env", "--lock", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.txt" in err and "not found" in err
