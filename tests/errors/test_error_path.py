"""The pieces of the error path: typed `--set` values, reading users' files, weight-file checks, the CLI's
net for file-system errors a user can fix."""

from __future__ import annotations

import errno
import struct

import pytest
import torch
from safetensors.torch import save_file

from medsd.config import RunConfig
from medsd.config_base import apply_overrides
from medsd.errors import MedsdError, describe_os_error, first_line
from medsd.files import read_text
from medsd.weights import check_safetensors


@pytest.mark.parametrize(("override", "path", "value"), [
    ("training.mixed_precision=no", ("training", "mixed_precision"), "no"),  # YAML 1.1 would say False
    ("output_dir=on", ("output_dir",), "on"),
    ("data.csv=null", ("data", "csv"), None),  # an optional text field: null words mean None
    ("data.csv=yes.csv", ("data", "csv"), "yes.csv"),
    ("training.max_steps=12", ("training", "max_steps"), 12),
    ("training.ema=no", ("training", "ema"), False),  # a real boolean keeps YAML's reading
    ("data.labels=[Edema, Cardiomegaly]", ("data", "labels"), ["Edema", "Cardiomegaly"]),
    ("data.uncertainty={Edema: ones}", ("data", "uncertainty"), {"Edema": "ones"}),
    ("data.uncertainty=ones", ("data", "uncertainty"), "ones"),
    ("method.name=textual_inversion", ("method", "name"), "textual_inversion"),
    ("validation.prompts=[no finding]", ("validation", "prompts"), ["no finding"]),
])
def test_overrides_are_read_against_the_field_type(override, path, value) -> None:
    data = apply_overrides({}, [override], RunConfig)
    for part in path:
        data = data[part]
    assert data == value
    RunConfig.model_validate(apply_overrides({}, [override], RunConfig))  # and the whole recipe validates


def test_override_through_the_method_union_reaches_the_named_method() -> None:
    data = apply_overrides({"method": {"name": "textual_inversion"}}, ["method.initializer=no"], RunConfig)
    assert data["method"]["initializer"] == "no"
    assert RunConfig.model_validate(data).method.initializer == "no"


def test_read_text_accepts_a_byte_order_mark_and_names_bad_bytes(tmp_path) -> None:
    (tmp_path / "bom.txt").write_bytes("\ufeffhallo".encode())
    assert read_text(tmp_path / "bom.txt", "file") == "hallo"
    (tmp_path / "latin.txt").write_bytes("Größe".encode("latin-1"))
    with pytest.raises(MedsdError, match=r"not UTF-8 text \(byte 0xf6 at position 2\)"):
        read_text(tmp_path / "latin.txt", "prompt file")


def test_safetensors_whose_header_length_starts_like_a_pickle_are_accepted(tmp_path) -> None:
    """A safetensors file begins with its header length; 0x80 there must not be mistaken for a pickle."""
    for pad in range(300):
        path = tmp_path / "w.safetensors"
        save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 0x80
    assert check_safetensors(path, "weights") == path


def test_describe_os_error_names_the_path_and_the_fix() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoint-9/optimizer.pt")
    assert describe_os_error(full) == ("cannot use /data/run/checkpoint-9/optimizer.pt: No space left on device; "
                                       "the disk is full; free space or choose another location")
    assert describe_os_error(OSError(errno.EIO, "Input/output error")) is None  # not the user's to fix


def test_first_line_keeps_one_line_of_a_library_error() -> None:
    """A library's multi-line message is cut to its first line; one without a message names its type instead of
    ending the error report in an IndexError."""
    err = RuntimeError("Error(s) in loading state_dict for UNet2DConditionModel:\n\tMissing key(s): conv_in.weight")
    assert first_line(err) == "Error(s) in loading state_dict for UNet2DConditionModel:"
    assert first_line(err, 8) == "Error(s)"
    assert first_line(RuntimeError("  \n  ")) == "RuntimeError"
    assert first_line(torch.OutOfMemoryError()) == "OutOfMemoryError"


def test_the_cli_turns_a_late_permission_error_into_one_line(monkeypatch, capsys) -> None:
    """A file-system error that no check caught (a folder made read-only mid-run) still ends as one line."""
    import medsd.model_cli as model_cli
    from medsd.cli import main

    def late(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/runs/x/logs")

    monkeypatch.setattr(model_cli, "run_info", late)
    assert main(["model", "info", "whatever"]) == 2
    err = capsys.readouterr().err
    assert err == ("medsd: error: cannot use /runs/x/logs: Permission denied; check its permissions or choose "
                   "another location\n")

    def bug(args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(model_cli, "run_info", bug)
    with pytest.raises(OSError):  # an error the user cannot fix keeps its traceback
        main(["model", "info", "whatever"])
