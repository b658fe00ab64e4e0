"""A few bad inputs through real `python -m medsd` processes: what reaches the terminal is one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_errors_reach_the_terminal_as_one_line(inputs) -> None:
    commands = {
        "binary recipe": ["train", inputs.file("recipe.yaml", bytes(range(256)))],
        "NaN guidance": ["generate", "--model", inputs.model, "--prompt", "x", "--guidance", "nan"],
        "pickle LoRA": ["generate", "--model", inputs.model, "--prompt", "x", "--lora", inputs.pickle_file("l.bin")],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    # started together: most of each one's time is Python importing torch, which overlaps well
    running = {name: subprocess.Popen([sys.executable, "-m", "medsd", *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env)
               for name, argv in commands.items()}
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 2, (name, err[-1500:])
        assert "Traceback" not in err + out, (name, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("medsd: error: "), (name, lines)
