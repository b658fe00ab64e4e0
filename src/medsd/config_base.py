"""Typed, validated YAML configs: strict pydantic models, dotted overrides, one-line errors.

Every recipe is a YAML file validated once at the edge (the CLI) into pydantic models; below that, code takes
plain typed objects. An unknown key, a wrong type or an out-of-range value fails before any work starts with a
message naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medsd.errors import MedsdError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping top level is a MedsdError."""
    path = Path(path)
    if not path.is_file():
        raise MedsdError(f"config file {path} does not exist; pass the path to a YAML recipe (see configs/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MedsdError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise MedsdError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key.sub=value`` into its key path and a YAML-parsed value (so ``10`` is an int, ``[a,b]`` a list)."""
    if "=" not in text:
        raise MedsdError(f"override {text!r} must look like key.sub=value (for example training.max_steps=10)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise MedsdError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply dotted ``--set`` overrides to a nested mapping (in place) and return it."""
    for text in overrides or []:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise MedsdError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def format_validation_error(err: ValidationError, source: str, prefix: str = "") -> str:
    """One line per problem: ``source: key.path: what was wrong (got VALUE)``."""
    lines = []
    for problem in err.errors():
        key = ".".join(str(p) for p in problem["loc"])
        key = f"{prefix}.{key}" if prefix and key else (prefix or key)
        kind = problem["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
            allowed = _allowed_keys(err, problem)
            if allowed:
                msg += f"; allowed keys here: {', '.join(allowed)}"
        else:
            msg = problem["msg"]
            if kind != "missing":
                msg += f" (got {problem.get('input')!r})"
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def _allowed_keys(err: ValidationError, problem: dict[str, Any]) -> list[str]:
    model = _model_at(err.title, problem["loc"][:-1])
    return sorted(model.model_fields) if model else []


_MODELS: dict[str, type[BaseModel]] = {}


def _model_at(title: str, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk the field annotations from the root model along ``loc`` to find which model rejected a key."""
    model = _MODELS.get(title)
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def validate(model: type[M], data: dict[str, Any], source: str, prefix: str = "") -> M:
    """Validate ``data`` into ``model``; problems become one MedsdError naming each bad key."""
    _MODELS[model.__name__] = model
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise MedsdError(format_validation_error(err, source, prefix)) from None


def load_yaml_section(
    path: str | Path, section: str | None, model: type[M], overrides: list[str] | None = None
) -> M:
    """Load one section of a YAML recipe (or the whole file when ``section`` is None) into ``model``.

    Overrides are dotted paths from the top of the file (``data.resolution=128``); those outside ``section``
    are ignored so that one ``--set`` list can serve several sections.
    """
    data = apply_overrides(read_yaml(path), overrides)
    if section is not None:
        data = data.get(section) or {}
        if not isinstance(data, dict):
            raise MedsdError(f"{path}: section {section!r} must be a mapping")
    return validate(model, data, str(path), prefix=section or "")


def dump_yaml(obj: BaseModel, path: str | Path) -> Path:
    """Write a resolved config beside a run's outputs, so the run can be reproduced exactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj.model_dump(mode="json"), sort_keys=False))
    return path


def add_set_option(parser: argparse.ArgumentParser, example: str = "training.max_steps=10") -> None:
    """The `--set KEY=VALUE` option (repeatable) that every recipe-reading command shares; dest `overrides`."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a recipe value with a dotted key, e.g. {example} (repeatable)",
    )
