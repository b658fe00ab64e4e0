"""Generation: synthetic images from prompts, findings, composable prompts, interpolation and inpainting.

`from medsd.generate import generate` (imported lazily, so `medsd --help` stays fast); interpolation and
inpainting live in `medsd.generate.interpolate.interpolate` and `medsd.generate.inpaint.inpaint`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["generate", "load_model", "register_model_kind"]


def __getattr__(name: str) -> Any:
    if name == "generate":
        from medsd.generate.api import generate

        return generate
    if name in ("load_model", "register_model_kind"):
        from medsd.generate import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'medsd.generate' has no attribute {name!r}")
