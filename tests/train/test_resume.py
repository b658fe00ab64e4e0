"""Checkpoints: a run interrupted mid-way resumes onto the same loss curve; a NaN stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsd.errors import MedsdError
from medsd.train.checkpoint import list_checkpoints
from medsd.train.loop import train


class Killed(Exception):
    """Stands in for the process dying."""


def _kill_at(step: int):
    def callback(current: int, loss: float) -> None:
        if current == step:
            raise Killed(f"killed at step {current}")

    return callback


def test_interrupted_run_resumes_same_loss_curve(tiny_model_dir, shapes, shared_cache, tmp_path, recipe):
    settings = {"max_steps": 6, "checkpointing_steps": 3, "cache_dir": str(shared_cache), "learning_rate": 1e-2}
    straight = train(recipe(tiny_model_dir, tmp_path / "a", "lora", **settings), shapes)

    cfg = recipe(tiny_model_dir, tmp_path / "b", "lora", **settings)
    with pytest.raises(Killed):
        train(cfg, shapes, callbacks=[_kill_at(4)])  # dies after step 4, last checkpoint is step 3
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [3]
    resumed = train(cfg, shapes, resume="latest")

    assert sorted(resumed.losses) == [4, 5, 6]  # crosses into the second epoch (4 batches per epoch)
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(straight.losses[step], rel=1e-5, abs=1e-7)
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    state = json.loads((tmp_path / "b" / "checkpoints" / "checkpoint-6" / "state.json").read_text())
    assert state["step"] == 6 and state["epoch"] == 1


def test_nan_loss_stops_with_clear_error_and_good_checkpoint(tiny_model_dir, shapes, tmp_path, recipe):
    cfg = recipe(tiny_model_dir, tmp_path / "nan", "lora", max_steps=4, checkpointing_steps=2, cache_latents=False)

    def poison(step: int, loss: float) -> None:
        if step == 2:
            shapes.poison = True  # every later image is NaN

    # accelerate's loader reads one batch ahead, so the first NaN batch is step 3 or 4.
    with pytest.raises(MedsdError, match=r"loss became nan at step [34].*checkpoint-2.*--resume latest"):
        train(cfg, shapes, callbacks=[poison])
    assert [s for s, _ in list_checkpoints(tmp_path / "nan")] == [2]
    shapes.poison = False
    resumed = train(cfg, shapes, resume="latest")
    assert resumed.step == 4 and sorted(resumed.losses) == [3, 4]


def test_resume_rejects_a_folder_that_is_not_a_checkpoint(tiny_model_dir, shapes, tmp_path, recipe):
    cfg = recipe(tiny_model_dir, tmp_path / "x", "lora", max_steps=1)
    with pytest.raises(MedsdError, match="not a complete checkpoint"):
        train(cfg, shapes, resume=str(tmp_path))


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import ShapesDataset, make_config
from medsd.train.loop import train
cfg = make_config({model!r}, {out!r}, "lora", max_steps=400, checkpointing_steps=1, checkpoints_total_limit=2,
                  cache_dir={cache!r})
train(cfg, ShapesDataset(), resume="latest")
"""


def test_sigkill_never_leaves_a_broken_checkpoint(tiny_model_dir, shared_cache, shapes, tmp_path, recipe):
    out = tmp_path / "killed"
    script = SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_model_dir), out=str(out),
                           cache=str(shared_cache))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                         os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(out)) < 2:
        time.sleep(0.05)
    time.sleep(0.37)  # land somewhere inside a later step or checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = list_checkpoints(out)
    assert found, "no checkpoint was written before the kill"
    for _, path in found:
        load_file(str(path / "trainable.safetensors"))
        torch.load(path / "optimizer.pt", weights_only=True)
        json.loads((path / "state.json").read_text())
    last = found[-1][0]
    cfg = recipe(tiny_model_dir, out, "lora", max_steps=last + 1, checkpointing_steps=1,
                 checkpoints_total_limit=2, cache_dir=str(shared_cache))
    resumed = train(cfg, shapes, resume="latest")
    assert sorted(resumed.losses) == [last + 1]


def test_out_of_memory_becomes_advice(tiny_model_dir, shapes, tmp_path, recipe, monkeypatch):
    import medsd.train.loop

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(medsd.train.loop, "diffusion_loss", oom)
    cfg = recipe(tiny_model_dir, tmp_path / "oom", "full", max_steps=1, batch_size=4)
    with pytest.raises(MedsdError, match=r"out of memory.*batch_size \(now 4\).*gradient_checkpointing.*bf16"):
        train(cfg, shapes)
