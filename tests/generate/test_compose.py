"""Composable prompts: parsing, errors, and the weighted sum of noise predictions."""

from __future__ import annotations

import numpy as np
import pytest

from medsd.errors import MedsdError
from medsd.generate.compose import Term, format_terms, is_plain, parse_prompt
from medsd.generate.sampling import Condition, sample


def test_parse_weights_and_not():
    assert parse_prompt("0.25*<healthy> AND 0.75*<cardiomegaly>") == [
        Term(0.25, "<healthy>"), Term(0.75, "<cardiomegaly>")
    ]
    assert parse_prompt("a chest x-ray AND NOT pleural effusion") == [
        Term(1.0, "a chest x-ray"), Term(-1.0, "pleural effusion")
    ]
    assert parse_prompt("-0.5 * edema AND 1.5*cardiomegaly")[0] == Term(-0.5, "edema")
    assert parse_prompt("a chest x-ray with edema") == [Term(1.0, "a chest x-ray with edema")]
    # "*" inside ordinary text (spaces before it) is prompt text, not a weight
    assert is_plain(parse_prompt("a chest x-ray * with edema"))
    assert format_terms(parse_prompt("0.25*a AND 0.75*b")) == "0.25*a AND 0.75*b"


@pytest.mark.parametrize("prompt", ["abc*<healthy> AND 0.5*<edema>", "inf*<healthy>", "0.5*<a> AND 0.5*"])
def test_bad_weight_is_a_clear_error(prompt):
    with pytest.raises(MedsdError, match="composable prompt"):
        parse_prompt(prompt)


def test_weights_one_zero_equal_the_plain_prompt(tiny):
    kw = {"steps": 3, "guidance": 4.0, "scheduler": "ddim"}
    plain = sample(tiny, [Condition.from_prompt("a chest x-ray with edema")], [7], **kw)
    composed = sample(tiny, [Condition.from_prompt("1*a chest x-ray with edema AND 0*pneumothorax")], [7], **kw)
    np.testing.assert_allclose(composed, plain, atol=1e-5)
    pushed = sample(tiny, [Condition.from_prompt("1*a chest x-ray with edema AND -1*pneumothorax")], [7], **kw)
    assert np.abs(pushed - plain).max() > 1e-3


def test_composable_is_weighted_sum_of_predictions(tiny):
    """0.5*A AND 0.5*B with guidance g equals CFG on the average of the two predictions: check against a
    hand-written loop that calls the U-Net separately per condition."""
    import torch

    from medsd.generate.schedulers import make_scheduler

    g, steps = 3.0, 2
    got = sample(tiny, [Condition.from_prompt("0.5*edema AND 0.5*cardiomegaly")], [3], steps, g, "ddim")
    with torch.inference_mode():
        emb = tiny.encode(["", "edema", "cardiomegaly"])
        sched = make_scheduler("ddim", tiny.scheduler_config)
        sched.set_timesteps(steps)
        latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(3)) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = [tiny.unet(sched.scale_model_input(latents, t), t, encoder_hidden_states=e[None]).sample for e in emb]
            pred = eps[0] + g * (0.5 * (eps[1] - eps[0]) + 0.5 * (eps[2] - eps[0]))
            latents = sched.step(pred, t, latents).prev_sample
        from medsd.generate.sampling import decode

        want = decode(tiny, latents)
    np.testing.assert_allclose(got, want, atol=1e-4)
