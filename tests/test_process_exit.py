"""`medsd.process_exit.finish`: what a normal exit would still do is done before the process ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    from pathlib import Path
    from medsd.process_exit import finish

    out = Path(sys.argv[1])
    atexit.register(lambda: (out / "atexit.txt").write_text("handler ran"))

    def slow_writer():
        time.sleep(0.3)
        (out / "thread.txt").write_text("thread finished")

    threading.Thread(target=slow_writer).start()

    class Cycle:
        def __init__(self):
            self.me = self
            self.stream = open(out / "cycle.txt", "w")
            self.stream.write("buffered until finalized")
        def __del__(self):
            self.stream.close()

    Cycle()
    print("no newline, still buffered", end="")
    finish(3)
    print("never reached")
""")


def test_finish_waits_for_threads_runs_handlers_finalizes_and_flushes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stdout == "no newline, still buffered"
    assert (tmp_path / "thread.txt").read_text() == "thread finished"
    assert (tmp_path / "atexit.txt").read_text() == "handler ran"
    assert (tmp_path / "cycle.txt").read_text() == "buffered until finalized"


def test_command_line_exit_codes_survive_the_fast_exit(tmp_path: Path) -> None:
    usage = subprocess.run([sys.executable, "-m", "medsd", "no-such-command"], capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    refused = subprocess.run([sys.executable, "-m", "medsd", "model", "info", str(tmp_path / "missing")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("medsd: error: ")
    built = subprocess.run([sys.executable, "-m", "medsd", "-q", "model", "tiny", "--out", str(tmp_path / "m"),
                            "--size", "test"], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "m" / "model_index.json").is_file()
