"""Ending the `medsd` process without the interpreter's teardown.

After a command has returned, everything it produced is on disk; what remains of a normal exit is Python
freeing every module and object of torch, diffusers and transformers and their C++ destructors: about 1.4 s
on the 2-core CPU machine (`import torch, diffusers, transformers, peft` then exit, against `os._exit`), and
about 2 s after a compiled training run, on every command. `finish` does what a normal exit does that can
matter to the user, in the same order, and skips the rest.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn


def finish(code: int) -> NoReturn:
    """Exit with `code` once the work that a normal exit would still do is done.

    In order, as the interpreter's own shutdown: wait for non-daemon threads (a writer thread still saving
    an image), run the atexit handlers (logging's final flush, TensorBoard's event files, multiprocessing's
    cleanup), finalize objects only reference cycles keep (their `__del__`/`close` may flush a file), flush
    stdout and stderr; then leave without freeing memory the operating system reclaims anyway.
    """
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    # atexit has no public "run the handlers now"; _run_exitfuncs is what the interpreter itself calls at
    # shutdown (and clears the handlers, so none runs twice).
    atexit._run_exitfuncs()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach the reader
            pass
    os._exit(code)
