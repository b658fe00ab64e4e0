"""Sampler (scheduler) names → diffusers schedulers built from the model's own noise-schedule config.

Building from the model's config keeps its betas, timestep spacing and prediction type, so switching the
sampler never silently changes the noise schedule the model was trained with.
"""

from __future__ import annotations

from typing import Any

from medsd.errors import MedsdError

# name: (diffusers class name, config overrides, note for --help)
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS; RoentGen used 75 steps, guidance 4"),
    "ddim": ("DDIMScheduler", {}, "deterministic DDIM (eta 0)"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler ancestral; budget paper: 100 steps, guidance 2"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "DPM-Solver++ 2M; good images in 20-25 steps",
    ),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM-Solver++ 2M with Karras sigmas",
    ),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC multistep"),
    "lms": ("LMSDiscreteScheduler", {}, "linear multistep"),
    "ddpm": ("DDPMScheduler", {}, "ancestral DDPM (needs many steps)"),
}
ALIASES = {"euler_ancestral": "euler_a", "dpm++2m": "dpmpp_2m", "dpmsolver++": "dpmpp_2m", "plms": "pndm"}


def scheduler_names() -> list[str]:
    """The accepted scheduler names."""
    return list(SCHEDULERS)


def canonical_scheduler_name(name: str) -> str:
    """Normalise a user-given name ('Euler_Ancestral' → 'euler_a'); MedsdError when unknown."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise MedsdError(f"scheduler {name!r} is not known; choose one of: {', '.join(SCHEDULERS)}")
    return key


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh scheduler of the named kind, using the model scheduler's config (betas, prediction type)."""
    import diffusers

    class_name, overrides, _ = SCHEDULERS[canonical_scheduler_name(name)]
    return getattr(diffusers, class_name).from_config(dict(base_config), **overrides)
