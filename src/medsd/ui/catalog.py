"""What the web interface can offer: model folders, LoRA / textual-inversion adapters and reports.

Found by looking at files, never by loading weights, so the page opens at once even over a large runs folder:
a diffusers folder has `model_index.json`, a medsd model folder has `medsd_model.json`, a LoRA is a
`pytorch_lora_weights.safetensors`, textual-inversion embeddings are a `learned_embeds.safetensors`, and a
training run names its base model in `artefacts.json` (or the `model.pretrained` of its `config.yaml`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medsd.errors import MedsdError
from medsd.generate.loading import MODEL_JSON

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
TI_FILE = "learned_embeds.safetensors"
REPORT_FILE = "report.html"
# Training-time folders: checkpoints hold optimizer state, caches latents; neither is something to sample from.
SKIP_DIRS = {"checkpoints", "cache", "logs", "validation", ".git", "__pycache__"}
MAX_DEPTH = 4


@dataclass(frozen=True)
class ModelEntry:
    """A model folder (or hub id) the page can load."""

    source: str
    name: str
    kind: str = "diffusers"
    labels: tuple[str, ...] = ()  # a class-conditional model's findings; empty for text models
    size: int | None = None  # native image side in pixels, when the folder's configs say

    @property
    def conditioning(self) -> str:
        return "labels" if self.kind == "class_conditional" else "text"


@dataclass(frozen=True)
class Adapter:
    """A LoRA or textual-inversion file and the base model its run trained on (when the run says)."""

    kind: str  # "lora" | "ti"
    path: str
    name: str
    base_model: str | None = None


@dataclass
class Catalog:
    """Everything the page offers, in the order it offers it (the first model is the default)."""

    models: list[ModelEntry] = field(default_factory=list)
    adapters: list[Adapter] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    root: Path | None = None  # names are shown relative to this folder

    def model(self, source: str) -> ModelEntry:
        for entry in self.models:
            if source in (entry.source, entry.name):
                return entry
        raise MedsdError(f"model {source!r} is not offered here; pick one of: {', '.join(self.model_names)}")

    def adapter(self, name: str) -> Adapter:
        for item in self.adapters:
            if name in (item.name, item.path):
                return item
        raise MedsdError(f"adapter {name!r} is not offered here; pick one of: {', '.join(self.adapter_names())}")

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def adapter_names(self, kind: str | None = None) -> list[str]:
        return [a.name for a in self.adapters if kind is None or a.kind == kind]

    def report_names(self) -> list[str]:
        return [self._label(p) for p in self.reports]

    def report(self, name: str) -> Path:
        for path in self.reports:
            if name in (self._label(path), str(path)):
                return path
        raise MedsdError(f"report {name!r} is not offered here; pick one of: {', '.join(self.report_names())}")

    def _label(self, path: Path) -> str:
        return _relative(path, self.root)


def build_catalog(models: list[str] = (), runs: str | Path | None = None) -> Catalog:
    """Models given on the command line first, then model folders, adapters and reports found under `runs`
    (and reports beside it: the demo writes `OUT/report/report.html` next to `OUT/runs`)."""
    runs_dir = Path(runs).expanduser().resolve() if runs else None
    if runs_dir is not None and not runs_dir.is_dir():
        if not models:
            raise MedsdError(
                f"runs folder {str(runs)!r} does not exist; run `medsd demo` first (it writes demo_out/runs), "
                "pass --runs DIR, or pass --model DIR"
            )
        log.warning("runs folder %s does not exist; offering only the --model folders", runs)
        runs_dir = None
    root = runs_dir.parent if runs_dir is not None else None
    catalog = Catalog(root=root)
    for source in models:
        catalog.models.append(_given_model(source, root))
    if runs_dir is not None:
        _scan_runs(catalog, runs_dir)
        catalog.reports = sorted({*_find(runs_dir, REPORT_FILE), *_find(root, REPORT_FILE, depth=2)})
    if not catalog.models:
        raise MedsdError(
            f"no model folders found under {runs_dir}; pass --model DIR (a diffusers folder, a training run's "
            "output or a Hugging Face id)"
        )
    return catalog


def _given_model(source: str, root: Path | None) -> ModelEntry:
    path = Path(source).expanduser()
    if path.is_dir():
        return describe_model(path.resolve(), root)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise MedsdError(f"--model {source!r} is not a folder; pass a diffusers folder or a Hugging Face id")
    return ModelEntry(source=source, name=source)  # a hub id: loaded (or refused, offline) when picked


def describe_model(path: Path, root: Path | None = None) -> ModelEntry:
    """Kind and labels of a model folder, read from its medsd_model.json (plain diffusers folders have none)."""
    spec_file = path / MODEL_JSON
    kind, labels = "diffusers", ()
    if spec_file.is_file():
        try:
            spec = json.loads(spec_file.read_text())
        except json.JSONDecodeError:
            spec = {}
        kind = str(spec.get("kind", "unknown"))
        labels = tuple(spec.get("labels") or ())
    return ModelEntry(source=str(path), name=_relative(path, root), kind=kind, labels=labels,
                      size=native_size(path))


def native_size(path: Path) -> int | None:
    """U-Net sample size × the VAE's downsampling factor, from the folder's config files (no weights read)."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        sample = unet["sample_size"]
        sample = sample if isinstance(sample, int) else sample[0]
        return int(sample) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _scan_runs(catalog: Catalog, runs_dir: Path) -> None:
    root = catalog.root
    trained = [p.parent for name in ("model_index.json", MODEL_JSON) for p in _find(runs_dir, name)]
    bases: list[Path] = []
    for lora in _find(runs_dir, LORA_FILE):
        base = _base_model(lora.parent)
        catalog.adapters.append(Adapter("lora", str(lora), _relative(lora.parent, root), base))
        if base and Path(base).is_dir():
            bases.append(Path(base).resolve())
    for ti in _find(runs_dir, TI_FILE):
        base = _base_model(ti.parent)
        catalog.adapters.append(Adapter("ti", str(ti), _relative(ti.parent, root), base))
        if base and Path(base).is_dir():
            bases.append(Path(base).resolve())
    seen = {m.source for m in catalog.models}
    # Trained models first (what a user came to look at), then the base models their adapters need. A report
    # reader's pipeline is a stage on the way (its U-Net never trained), so it comes after the models that did.
    trained = sorted(set(trained), key=lambda path: (_method(path.parent) in TEXT_ONLY_METHODS, str(path)))
    for path in [*trained, *sorted(set(bases))]:
        if str(path) not in seen:
            seen.add(str(path))
            catalog.models.append(describe_model(path, root))


TEXT_ONLY_METHODS = {"report_reader"}


def _method(run_dir: Path) -> str | None:
    """The method a run trained with (`artefacts.json`), if it says."""
    return _artefacts(run_dir).get("method")


def _artefacts(run_dir: Path) -> dict:
    """A run's `artefacts.json` (method, base model, files); {} when it is missing or unreadable."""
    path = run_dir / "artefacts.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("cannot read %s: %s", path, err)
        return {}
    return info if isinstance(info, dict) else {}


def _base_model(run_dir: Path) -> str | None:
    """The base model a run trained on: `artefacts.json` `base_model`, else `config.yaml` `model.pretrained`."""
    if (run_dir / "artefacts.json").is_file():
        return _artefacts(run_dir).get("base_model")
    try:
        config = run_dir / "config.yaml"
        if config.is_file():
            return (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("pretrained")
    except (yaml.YAMLError, AttributeError) as err:
        log.warning("cannot read the base model of %s: %s", run_dir, err)
    return None


def _find(top: Path | None, filename: str, depth: int = MAX_DEPTH) -> list[Path]:
    """Files named `filename` up to `depth` folders below `top`, skipping training-state folders."""
    if top is None or not top.is_dir():
        return []
    found, frontier = [], [top]
    for _ in range(depth + 1):
        next_frontier = []
        for folder in frontier:
            try:
                children = sorted(folder.iterdir())
            except OSError:
                continue
            for child in children:
                if child.is_file() and child.name == filename:
                    found.append(child.resolve())
                elif child.is_dir() and child.name not in SKIP_DIRS:
                    next_frontier.append(child)
        frontier = next_frontier
    return found


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(Path(path).resolve().relative_to(root))
        except ValueError:
            pass
    return str(path)
