"""Timed pipeline stages, one of which may run in a second process beside the others.

Why a second process: a small model such as the phantom judge trains at one thread (a second thread barely
speeds it up), so on 2 cores it leaves one idle. Beside the demo's text-to-image stage, that stage runs at one
thread while the judge trains (about two thirds of its two-thread speed: 31 against 45-50 images/s) and takes
the second thread back when it is done (`threads_back_when_done`): the judge's 3 minutes become training
minutes. A time-budgeted stage that ends before its neighbour is a worse match: beside the autoencoder (3
minutes) the judge cost it a third of its steps and still outlasted it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with `n` torch CPU threads, then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_thread_worker(log_level: int, log_format: str) -> None:
    # A spawned process starts with torch's default (all cores) and no logging set up.
    import torch

    torch.set_num_threads(1)
    os.environ["TQDM_DISABLE"] = "1"  # its progress bar would fight the main process's for the same terminal line
    logging.basicConfig(level=log_level, format=log_format, force=True)


def _timed(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


class BesideJob:
    """A stage started in a second process; `result()` waits for it (and re-raises its error here)."""

    def __init__(self, timer: StageTimer, name: str, pending: Any) -> None:
        self._timer, self.name, self._pending, self._done = timer, name, pending, False
        self._result: Any = None

    def ready(self) -> bool:
        """Whether the stage has finished (without waiting for it)."""
        return self._done or self._pending.ready()

    def threads_back_when_done(self, threads: int) -> Callable[[int, float], None]:
        """A training callback (`medsd.train.loop.train(callbacks=...)`): once this stage has finished, the
        training process takes `threads` torch threads again (its core is free)."""

        def callback(step: int, loss: float) -> None:
            import torch

            if torch.get_num_threads() < threads and self.ready():
                log.info("stage %s finished: training goes on at %d threads from step %d", self.name, threads, step)
                torch.set_num_threads(threads)

        return callback

    def result(self) -> Any:
        if not self._done:
            waited = time.perf_counter()
            self._result, seconds = self._pending.get()
            self._done = True
            self._timer.seconds[self.name] = round(seconds, 1)
            log.info("stage %s done in %.0f s (waited %.0f s for it)", self.name, seconds,
                     time.perf_counter() - waited)
        return self._result


class StageTimer:
    """Times each stage and logs where it is, so a newcomer sees progress through a long run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        log.info("stage: %s", name)
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 1)
        log.info("stage %s done in %.0f s", name, self.seconds[name])
        return result

    @contextmanager
    def beside(self, name: str, fn: Callable[..., Any], *args: Any) -> Iterator[BesideJob]:
        """Start `fn(*args)` in a second process at one torch thread; the body runs here at one thread too.

        The body calls `job.result()` where it needs the stage's result; leaving the block waits for it in
        any case. An error in the body stops the second process; an error there is raised by `result()`.
        `fn` and `args` must pickle (a module-level function; paths, numbers, dataclasses).
        """
        from medsd.cli import LOG_FORMAT

        context = multiprocessing.get_context("spawn")  # fork would copy this process's torch thread pools
        log.info("stage: %s (in a second process, beside the next stages)", name)
        with context.Pool(1, initializer=_one_thread_worker,
                          initargs=(logging.getLogger().level, LOG_FORMAT)) as pool:
            job = BesideJob(self, name, pool.apply_async(_timed, (fn, args)))
            with torch_threads(1):
                yield job
            job.result()
