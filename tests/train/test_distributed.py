"""Two CPU processes under `accelerate launch` (DDP over gloo) train, checkpoint per process and save once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from conftest import ShapesDataset, make_config
from medsd.train.loop import train
cfg = make_config({model!r}, {out!r}, "lora", max_steps=3, checkpointing_steps=2)
result = train(cfg, ShapesDataset())
rank = int(os.environ.get("RANK", 0))
with open(os.path.join({tmp!r}, f"result_{{rank}}.json"), "w") as handle:
    json.dump({{"n": result.num_processes, "losses": result.losses}}, handle)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_with_accelerate_launch(tiny_model_dir, tmp_path):
    script = tmp_path / "run.py"
    out = tmp_path / "out"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_model_dir), out=str(out),
                                    tmp=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
         "--main_process_port", str(_free_port()), str(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    results = [json.loads((tmp_path / f"result_{rank}.json").read_text()) for rank in (0, 1)]
    assert len(results) == 2 and all(r["n"] == 2 for r in results)
    assert results[0]["losses"] == results[1]["losses"]  # the logged loss is averaged over both processes
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "rng_0.safetensors").is_file() and (checkpoint / "rng_1.safetensors").is_file()
    assert json.loads((checkpoint / "state.json").read_text())["num_processes"] == 2
    assert (out / "pytorch_lora_weights.safetensors").is_file()
