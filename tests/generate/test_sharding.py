"""Sharding across processes: the single-process path (a no-op split) and, slow, two real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from medsd.generate import generate
from medsd.generate.metadata import RESULTS_CSV


def test_single_process_takes_every_job(tiny, tmp_path):
    from accelerate import PartialState

    assert PartialState(cpu=True).num_processes == 1
    frame = generate(tiny, ["a", "b"], out_dir=tmp_path, num_images=2, steps=1, scheduler="ddim", progress=False)
    assert len(frame) == 4 and len(list(tmp_path.glob("*.png"))) == 4


@pytest.mark.slow
def test_two_processes_share_the_jobs(tiny_model_dir, tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent("""
        import sys
        from accelerate import PartialState
        from medsd.generate import generate
        state = PartialState(cpu=True)
        generate(sys.argv[1], ["a", "b"], out_dir=sys.argv[2], num_images=3, batch_size=2, steps=2,
                 scheduler="ddim", progress=False, device="cpu")
        print(f"rank {state.process_index} of {state.num_processes}")
    """))
    torchrun = Path(sys.executable).with_name("torchrun")
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script), str(tiny_model_dir),
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 0 of 2" in done.stdout and "rank 1 of 2" in done.stdout
    table = pd.read_csv(tmp_path / "out" / RESULTS_CSV)
    assert table["file"].tolist() == [f"{k:06d}.png" for k in range(6)]
    assert len(list((tmp_path / "out").glob("*.png"))) == 6
