"""Generation: synthetic images from prompts, findings, composable prompts, interpolation and inpainting.

`medsd.generate(...)` or `from medsd.generate import generate` (imported lazily, so `medsd --help` stays
fast); interpolation and inpainting live in `medsd.generate.interpolate.interpolate` and
`medsd.generate.inpaint.inpaint`.
"""

from __future__ import annotations

import sys
import types
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


class _CallableModule(types.ModuleType):
    """Lets `medsd.generate(...)` call the API while `medsd.generate.<module>` stays a package."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from medsd.generate.api import generate

        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
