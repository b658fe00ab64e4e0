"""Resumable checkpoints: `OUT/checkpoints/checkpoint-STEP/`, written atomically, newest K kept.

A checkpoint holds the trained weights (only what the method trains: LoRA adapters, not the base model), the
optimizer, the LR scheduler, the EMA, every process's random-number state and the loop position (step, epoch,
batches done in the epoch), so a resumed run draws the same batches and noise and continues the same loss
curve. It is written to `checkpoint-STEP.tmp/` and renamed into place only once complete: killing the process
at any moment leaves either the previous checkpoints or a `.tmp` folder that is ignored and later replaced.
A checkpoint damaged afterwards (a full disk, a broken copy) is found before anything is restored from it:
`--resume latest` names it and falls back to the newest intact one.

Only safetensors, JSON and `torch.load(weights_only=True)` are read back: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medsd.errors import MedsdError, first_line

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    """Where a run's checkpoints live."""
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first (`.tmp` folders are ignored)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """`latest` -> the newest intact checkpoint (None if there is none yet); a path must be an intact checkpoint.

    A damaged newest checkpoint (a truncated file, garbage where a tensor file should be) is named in the log and
    the one before it is used: a disk that filled up or a copy that broke off costs some steps, not the run.
    """
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            log.info("--resume latest: no checkpoint in %s yet, starting from scratch", checkpoints_dir(output_dir))
            return None
        damaged: list[DamagedCheckpoint] = []
        for _, path in reversed(found):
            try:
                check_checkpoint(path)
            except DamagedCheckpoint as err:
                log.warning("%s; trying the checkpoint before it", err)
                damaged.append(err)
                continue
            if damaged:
                log.warning("--resume latest: resuming from %s, the newest intact checkpoint", path)
            return path
        raise MedsdError(
            f"--resume latest: every checkpoint in {checkpoints_dir(output_dir)} is damaged ({damaged[0]}); "
            "move that folder away to start over"
        )
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise MedsdError(
            f"--resume {resume}: not a complete checkpoint folder (no state.json); pass `latest` or a "
            f"checkpoint-STEP folder under {checkpoints_dir(output_dir)}"
        )
    try:
        check_checkpoint(path)
    except DamagedCheckpoint as err:
        raise MedsdError(f"--resume {resume}: {err}; pass `latest` to use the newest intact checkpoint") from None
    return path


class DamagedCheckpoint(MedsdError):
    """A checkpoint with a file that cannot be read back; the message names the file and what is wrong."""

    def __init__(self, folder: Path, file: str, reason: str):
        super().__init__(f"checkpoint {folder} is damaged: {file} {reason}")
        self.folder, self.file = folder, file


LOOP_KEYS = ("step", "epoch", "batches_in_epoch")


def check_checkpoint(path: str | Path, rank: int = 0) -> dict[str, Any]:
    """Read every file of a checkpoint far enough to know it is intact (headers, archive directories, JSON)
    without loading tensors into memory; returns its loop state, raises DamagedCheckpoint."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpoint(path, "state.json", f"cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(k), int) for k in LOOP_KEYS):
        raise DamagedCheckpoint(path, "state.json", f"lacks the loop position ({', '.join(LOOP_KEYS)})")
    files = [f"rng_{rank}.safetensors" if (path / f"rng_{rank}.safetensors").is_file() else "rng_0.safetensors"]
    if not (path / "accelerate").is_dir():
        files += ["trainable.safetensors", "optimizer.pt", "scheduler.pt"]
        files += ["ema.pt"] if (path / "ema.pt").exists() else []
    for name in files:
        _check_file(path, name)
    rng_meta = files[0].replace(".safetensors", ".json")
    try:
        json.loads((path / rng_meta).read_text())["numpy"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DamagedCheckpoint(path, rng_meta, f"cannot be read ({type(err).__name__})") from None
    return state


def _check_file(folder: Path, name: str) -> None:
    from safetensors import safe_open

    file = folder / name
    if not file.is_file():
        raise DamagedCheckpoint(folder, name, "is missing")
    try:
        if name.endswith(".safetensors"):
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        else:
            # mmap: the archive's directory and tensor records are read, the tensor data is not loaded.
            torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any failure to read it back means the file is damaged
        pickled = isinstance(err, pickle.UnpicklingError)
        kind = "is a pickle holding more than tensors" if pickled else "is truncated or damaged"
        raise DamagedCheckpoint(folder, name, f"{kind} ({type(err).__name__})") from None


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_rng(folder: Path, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_version, list(py_state), py_gauss]}
    save_file(tensors, str(folder / f"rng_{rank}.safetensors"))
    (folder / f"rng_{rank}.json").write_text(json.dumps(meta))


def _load_rng(folder: Path, rank: int) -> None:
    if not (folder / f"rng_{rank}.safetensors").is_file():
        log.warning("checkpoint %s has no random state for process %d (different process count?)", folder, rank)
        rank = 0
    tensors = load_file(str(folder / f"rng_{rank}.safetensors"))
    meta = json.loads((folder / f"rng_{rank}.json").read_text())
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    method: Any,
    optimizer: Any,
    lr_scheduler: Any,
    ema: Any,
    loop_state: dict[str, Any],
    accelerator: Any,
    total_limit: int | None = None,
) -> Path:
    """Write `checkpoint-STEP` atomically (collective: every process must call it); returns its path."""
    root = checkpoints_dir(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f"checkpoint-{step}.tmp"
    main = accelerator.is_main_process
    if main:
        # Leftovers of a killed run (.tmp being written, .old being deleted) are never valid checkpoints.
        for stale in [*root.glob("checkpoint-*.tmp"), *root.glob("checkpoint-*.old")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _save_rng(tmp, accelerator.process_index)
    if _is_deepspeed(accelerator):
        # ZeRO shards optimizer state across processes; only accelerate knows how to gather it.
        accelerator.save_state(str(tmp / "accelerate"))
    elif main:
        weights = {k: v.contiguous() for k, v in method.trainable_state_dict().items()}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
        if ema is not None:
            torch.save(ema.state_dict(), tmp / "ema.pt")
    accelerator.wait_for_everyone()
    if main:
        state = {**loop_state, "step": step, "method": method.name, "num_processes": accelerator.num_processes}
        # state.json is written last: its presence marks the folder complete.
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        _fsync_tree(tmp)
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        _prune(output_dir, total_limit)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _is_deepspeed(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _prune(output_dir: str | Path, total_limit: int | None) -> None:
    if total_limit is None:
        return
    found = list_checkpoints(output_dir)
    for _, path in found[: max(0, len(found) - total_limit)]:
        _remove(path)
        log.info("removed old checkpoint %s", path)


def _remove(path: Path) -> None:
    """Rename first (atomic), then delete: a kill mid-delete must not leave a half checkpoint under its name."""
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    shutil.rmtree(old, ignore_errors=True)


# What to do about a checkpoint another recipe wrote (another method, another architecture).
NOT_THIS_RECIPE = "resume with the recipe that wrote it or start a new output_dir"


def load_checkpoint(
    path: str | Path, method: Any, optimizer: Any, lr_scheduler: Any, ema: Any, accelerator: Any
) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the loop state (step, epoch, batches_in_epoch)."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("method") != method.name:
        raise MedsdError(
            f"checkpoint {path} was written by method {state.get('method')!r}, not {method.name!r}; {NOT_THIS_RECIPE}"
        )
    by_accelerate = (path / "accelerate").is_dir()
    try:
        if by_accelerate:
            accelerator.load_state(str(path / "accelerate"))
        else:
            method.load_trainable_state_dict(load_file(str(path / "trainable.safetensors")))
    except RuntimeError as err:  # torch's state-dict mismatch: another architecture (method.unet_config)
        detail = first_line(err, 160)
        raise MedsdError(f"checkpoint {path} does not fit this recipe's model ({detail}); {NOT_THIS_RECIPE}") from err
    if not by_accelerate:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
        if ema is not None:
            if (path / "ema.pt").is_file():
                ema.load_state_dict(torch.load(path / "ema.pt", map_location="cpu", weights_only=True))
            else:
                log.warning("checkpoint %s has no EMA; the EMA restarts from the current weights", path)
    _load_rng(path, accelerator.process_index)
    log.info("resumed from %s (step %d)", path, state["step"])
    return state
