"""Typed, validated YAML configs: strict pydantic models, dotted overrides, one-line errors.

Every recipe is a YAML file validated once at the edge (the CLI) into pydantic models; below that, code takes
plain typed objects. An unknown key, a wrong type or an out-of-range value fails before any work starts with a
message naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medsd.errors import MedsdError
from medsd.files import read_text

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated, NaN/inf refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, binary, non-UTF-8 or empty file or a non-mapping top level is a MedsdError."""
    text = read_text(path, "config file", "pass the path to a YAML recipe (see configs/)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or (str(err).splitlines() or ["syntax error"])[0]
        raise MedsdError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        raise MedsdError(
            f"config file {path} is empty; a recipe needs its sections (see configs/, e.g. configs/tiny_lora.yaml)"
        )
    if not isinstance(data, dict):
        raise MedsdError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


NULL_WORDS = ("", "null", "none", "~")


def parse_override(text: str, annotation: Any = None) -> tuple[list[str], Any]:
    """Split ``key.sub=value`` into its key path and a value read against the field's type.

    With the field's `annotation`, a value for a text field stays the text as typed (YAML 1.1 would turn
    ``no`` into False and ``1e-4`` into a string); other fields read YAML (``10`` an int, ``[a,b]`` a list).
    """
    if "=" not in text:
        raise MedsdError(f"override {text!r} must look like key.sub=value (for example training.max_steps=10)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise MedsdError(f"override {text!r} has an empty key")
    return parts, _typed_value(raw, annotation)


def _typed_value(raw: str, annotation: Any) -> Any:
    stripped = raw.strip()
    options = _flatten(annotation) if annotation is not None else []
    if annotation is not None and type(None) in options and stripped.lower() in NULL_WORDS:
        return None
    try:
        value = yaml.safe_load(raw) if stripped else None
    except yaml.YAMLError:
        value = raw
    if any(_is_text(o) for o in options) and not (isinstance(value, list | dict) and _admits_container(options)):
        return stripped
    return value


def _flatten(annotation: Any) -> list[Any]:
    """The alternatives of a (possibly Annotated / Optional / Union) annotation."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _flatten(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [leaf for arg in get_args(annotation) for leaf in _flatten(arg)]
    return [annotation]


def _is_text(option: Any) -> bool:
    if option in (str, Path):
        return True
    return get_origin(option) is Literal and any(isinstance(v, str) for v in get_args(option))


def _admits_container(options: list[Any]) -> bool:
    return any(get_origin(o) in (list, tuple, dict, set) or o in (list, tuple, dict, set) for o in options)


def annotation_at(model: type[BaseModel] | None, parts: list[str], data: Any = None) -> Any:
    """The annotation of the field at dotted `parts` below `model` (None when unknown). Through a union of
    sections (the `method:` kinds) the one named by `data` is followed, else the first having the field."""
    annotation: Any = model
    for part in parts:
        candidates = [o for o in _flatten(annotation) if isinstance(o, type) and issubclass(o, BaseModel)]
        candidates = [c for c in candidates if part in c.model_fields]
        if not candidates:
            return None
        name = data.get("name") if isinstance(data, dict) else None
        chosen = next((c for c in candidates if _literal_default(c, "name") == name), candidates[0])
        annotation = chosen.model_fields[part].annotation
        data = data.get(part) if isinstance(data, dict) else None
    return annotation


def _literal_default(model: type[BaseModel], field: str) -> Any:
    info = model.model_fields.get(field)
    return info.default if info is not None else None


def apply_overrides(
    data: dict[str, Any], overrides: list[str] | None, model: type[BaseModel] | None = None, section: str | None = None
) -> dict[str, Any]:
    """Apply dotted ``--set`` overrides to a nested mapping (in place) and return it.

    `model` types the values (see `parse_override`); it describes the whole file, or only `section` of it.
    """
    for text in overrides or []:
        parts, _ = parse_override(text)
        if section is not None:
            field_path = parts[1:] if parts[0] == section else None
            annotation = annotation_at(model, field_path, data.get(section)) if field_path else None
        else:
            annotation = annotation_at(model, parts, data)
        parts, value = parse_override(text, annotation)
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
        elif kind == "value_error":  # a validator's own sentence already names the values
            msg = str(problem.get("ctx", {}).get("error", problem["msg"]))
        else:
            msg = problem["msg"]
            if kind != "missing":
                msg += f" (got {problem.get('input')!r})"
            if kind == "literal_error" and isinstance(problem.get("input"), bool):
                msg += "; YAML reads no/yes/on/off as true/false: quote the word, e.g. 'no'"
        lines.append(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")  # a whole-recipe check has no key
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
    data = apply_overrides(read_yaml(path), overrides, model, section)
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
