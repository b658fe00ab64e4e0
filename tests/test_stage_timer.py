"""Timed stages, one of them in a second process beside the others (how the demo overlaps its judge)."""

from __future__ import annotations

import operator
import time

import pytest
import torch

from medsd.stage_timer import StageTimer, torch_threads


def test_a_stage_beside_the_others_returns_its_result_and_time_at_one_thread_each() -> None:
    timer = StageTimer()
    before = torch.get_num_threads()
    with timer.beside("threads there", torch.get_num_threads) as job:
        assert torch.get_num_threads() == 1  # the body shares the cores with the second process
        here = timer.run("here", operator.add, 2, 3)
        assert job.result() == 1  # the second process also runs at one thread
    assert here == 5 and torch.get_num_threads() == before
    assert set(timer.seconds) == {"threads there", "here"}
    assert all(seconds >= 0 for seconds in timer.seconds.values())


def test_an_error_in_the_second_process_is_raised_where_its_result_is_asked() -> None:
    timer = StageTimer()
    with pytest.raises(ValueError, match="invalid literal"):
        with timer.beside("bad", int, "not a number") as job:
            job.result()
    assert "bad" not in timer.seconds


def test_leaving_the_block_waits_for_the_second_process() -> None:
    timer = StageTimer()
    with timer.beside("sum", sum, [1, 2, 3]) as job:
        pass
    assert timer.seconds["sum"] >= 0 and job.result() == 6


def test_an_error_in_the_body_restores_the_threads_and_stops_the_second_process() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="body failed"):
        with StageTimer().beside("slow", time.sleep, 60):
            raise RuntimeError("body failed")
    assert torch.get_num_threads() == before


def test_torch_threads_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_training_callback_takes_the_threads_back_once_the_stage_beside_it_is_done() -> None:
    before = torch.get_num_threads()
    with StageTimer().beside("sleep", time.sleep, 2) as job:
        callback = job.threads_back_when_done(2)
        callback(1, 0.5)
        assert torch.get_num_threads() == 1 and not job.ready()  # still running: the core is taken
        job.result()
        callback(2, 0.5)
        assert torch.get_num_threads() == 2 and job.ready()
    assert torch.get_num_threads() == before
