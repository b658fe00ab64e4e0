"""The `medsd` entry points: help for every stage, tiny model build, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medsd.cli import GROUPS, build_parser, main


def test_top_level_help_lists_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for stage in ("data", "model", "train", "generate", "evaluate", "demo"):
        assert stage in out


@pytest.mark.parametrize("stage", sorted(GROUPS))
def test_every_stage_has_help(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([stage, "--help"])
    assert info.value.code == 0
    assert "usage: medsd " + stage in capsys.readouterr().out


def test_python_dash_m_and_console_script() -> None:
    done = subprocess.run([sys.executable, "-m", "medsd", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("medsd ")


def test_model_tiny_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "tiny", "--out", str(tmp_path / "m"), "--size", "test"]) == 0
    assert (tmp_path / "m" / "model_index.json").is_file()
    assert main(["-q", "model", "info", str(tmp_path / "m")]) == 0
    assert '"cross_attention_dim": 16' in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info", "runwayml/stable-diffusion-v1-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsd: error: could not load model 'runwayml/stable-diffusion-v1-5'")
    assert "\n" not in err and "Traceback" not in err
    assert main(["model", "info", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["model", "info", str(tmp_path / "half")]) == 2
    assert "not a complete diffusers folder" in capsys.readouterr().err


def test_group_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model"]) == 2
    assert "tiny" in capsys.readouterr().out


def test_global_quiet_survives_a_stage_with_its_own_quiet() -> None:
    """`medsd -q generate ...` stays quiet; `generate --quiet` hides the progress bar, not the log."""
    parser = build_parser()
    args = parser.parse_args(["-q", "generate", "--model", "m", "--prompt", "p"])
    assert args.quiet and not args.no_progress
    args = parser.parse_args(["generate", "--model", "m", "--prompt", "p", "--quiet"])
    assert not args.quiet and args.no_progress


def test_only_the_named_stage_is_attached() -> None:
    """`medsd --help` lists every stage without importing any stage's module; a command attaches its own."""
    parser = build_parser(["--help"])
    assert all(stage in parser.format_help() for stage in GROUPS)
    args = build_parser(["-q", "generate", "--model", "m", "--prompt", "p"]).parse_args(
        ["-q", "generate", "--model", "m", "--prompt", "p"])
    assert args.quiet and args.prompt == ["p"]


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from medsd.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
