"""Loading any trained artefact into one object the sampler can drive.

Plain diffusers folders (the base model, a full fine-tune, DreamBooth) and hub ids load through
`medsd.models.load_pipeline`; a LoRA and textual-inversion embeddings are applied on top. Folders that plain
diffusers cannot load carry a `medsd_model.json` `{"kind": "class_conditional" | "text_encoder_swap", ...}`;
their loaders are registered with `register_model_kind(kind, loader)` and return a `LoadedModel` whose
`encode` turns condition strings into encoder hidden states (for label models the condition strings are the
findings, e.g. "Cardiomegaly, Edema"; "" is the unconditional / null label).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsd.errors import MedsdError, first_line
from medsd.files import read_text
from medsd.text_encoder_lora import TEXT_ENCODER_PREFIX, load_text_encoder_lora, text_encoder_alpha
from medsd.weights import (
    PICKLE_SUFFIXES,
    check_model_weights,
    check_safetensors,
    error_detail,
    load_safetensors,
    pickle_refusal,
)

log = logging.getLogger(__name__)

MODEL_JSON = "medsd_model.json"
PLACEHOLDER_RE = re.compile(r"<[^<>|\s]+>")


@dataclass
class LoadedModel:
    """What the sampler needs: a U-Net, a VAE, a base scheduler config and an `encode` for conditions.

    `conditioning` is "text" (prompts) or "labels" (class-conditional: conditions are finding names).
    `pipe` is the diffusers pipeline when there is one (used for the dedicated inpainting path and parity).
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict[str, Any]
    encode: Callable[[list[str]], torch.Tensor]
    source: str
    kind: str = "diffusers"
    conditioning: str = "text"
    adapters: list[str] = field(default_factory=list)
    placeholder_tokens: list[str] = field(default_factory=list)
    tokenizer: Any = None
    pipe: Any = None
    labels: list[str] | None = None  # a label model's findings: what `--all-labels` enumerates
    max_length: int | None = None  # tokens the encoder reads (default: the tokenizer's model_max_length)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        sample = self.unet.config.sample_size
        return (sample if isinstance(sample, int) else sample[0]) * self.vae_scale_factor

    @property
    def adapters_text(self) -> str:
        return "; ".join(self.adapters)


ModelLoader = Callable[[Path, dict[str, Any], str, torch.dtype], LoadedModel]
_KINDS: dict[str, ModelLoader] = {}
# Modules that register the kinds medsd's own training writes; imported on first use so that generation
# does not pay for the training code's imports unless such a folder is loaded.
BUILTIN_KIND_MODULES = {
    "class_conditional": "medsd.train.class_conditional",
    "text_encoder_swap": "medsd.train.text_encoder_swap",
}


def register_model_kind(kind: str, loader: ModelLoader) -> None:
    """Register a loader for folders whose medsd_model.json says `{"kind": kind}`.

    The loader is called as `loader(folder, spec, device, dtype)` and returns a LoadedModel.
    """
    _KINDS[kind] = loader


def model_kinds() -> list[str]:
    """Kinds with a registered loader (besides plain diffusers folders)."""
    return sorted(_KINDS)


def load_model(
    source: str | Path,
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
    embeddings: Sequence[str | Path] = (),
    device: str = "auto",
    dtype: str | torch.dtype = "float32",
) -> LoadedModel:
    """Load a base model / full fine-tune / registered medsd kind, then apply a LoRA and TI embeddings."""
    from medsd.models import LOAD_ERRORS, load_pipeline, resolve_device, resolve_dtype

    source = str(source)
    path = Path(source).expanduser()
    if lora is not None:
        lora_file(lora)  # a missing or damaged adapter fails before the model is loaded
    for item in embeddings:
        embeddings_file(item)
    if path.is_file():
        raise MedsdError(f"model {source!r} is a file; pass the model's folder (the one holding model_index.json "
                         "or medsd_model.json)")
    if _looks_local(source) and not path.is_dir():
        raise MedsdError(
            f"model folder {source!r} does not exist; pass a diffusers folder (e.g. from `medsd model tiny --out "
            "DIR` or a training run's output) or a Hugging Face id"
        )
    spec_file = path / MODEL_JSON
    if spec_file.is_file():
        try:
            spec = json.loads(read_text(spec_file, "model description"))
        except json.JSONDecodeError as err:
            raise MedsdError(f"{spec_file} is not valid JSON ({err}); it should be like {{\"kind\": ...}}") from err
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in _KINDS and kind in BUILTIN_KIND_MODULES:
            importlib.import_module(BUILTIN_KIND_MODULES[kind])  # registers its loader
        if kind not in _KINDS:
            raise MedsdError(
                f"{spec_file} declares kind {kind!r}, which has no loader here; known kinds: "
                f"{', '.join(model_kinds()) or 'none registered'} (is the medsd version that trained it installed?)"
            )
        check_model_weights(path)
        try:
            model = _KINDS[kind](path, spec, str(resolve_device(device)), resolve_dtype(dtype))
        except LOAD_ERRORS as err:
            raise MedsdError(f"{kind} model folder {source!r} could not be loaded ({error_detail(err)}); "
                             "its files are incomplete or damaged: copy the folder again or retrain") from err
    else:
        if path.is_dir():
            source = str(path.resolve())  # an absolute path identifies the model in every image's metadata
        pipe = load_pipeline(source, dtype=dtype, device=device)
        pipe.set_progress_bar_config(disable=True)
        model = from_pipeline(pipe, source)
    if lora is not None:
        apply_lora(model, lora, lora_scale)
    for item in embeddings:
        apply_embeddings(model, item)
    return model


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists() or source.count("/") != 1


def from_pipeline(pipe: Any, source: str) -> LoadedModel:
    """Wrap a diffusers StableDiffusionPipeline: `encode` is the pipeline's own `encode_prompt`."""

    def encode(prompts: list[str]) -> torch.Tensor:
        # encode_prompt expands multi-vector textual-inversion tokens and warns about truncation itself.
        embeds, _ = pipe.encode_prompt(list(prompts), pipe.device, 1, False)
        return embeds

    return LoadedModel(
        unet=pipe.unet, vae=pipe.vae, scheduler_config=dict(pipe.scheduler.config), encode=encode,
        source=source, tokenizer=pipe.tokenizer, pipe=pipe,
    )


def file_digest(path: str | Path) -> str:
    """First 12 hex digits of a file's SHA-256: the identity of an adapter in metadata."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def lora_file(lora: str | Path) -> Path:
    """The checked safetensors file of a LoRA given as a folder or a file (a pickle .bin is refused)."""
    path = Path(lora).expanduser()
    if path.is_dir():
        path = path / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        raise MedsdError(f"LoRA {str(lora)!r} not found; pass a training output folder or its "
                         "pytorch_lora_weights.safetensors")
    return check_safetensors(path, "LoRA file")  # before diffusers, which would try to unpickle a .bin


def apply_lora(model: LoadedModel, lora: str | Path, scale: float = 1.0) -> None:
    """Load a diffusers-format LoRA (folder or .safetensors file) and fuse it at `scale` for fast sampling."""
    path = lora_file(lora)
    if model.pipe is None:
        raise MedsdError(f"LoRA cannot be applied to a {model.kind} model; it needs a diffusers pipeline")
    pipe = model.pipe
    try:
        state, alphas, metadata = pipe.lora_state_dict(str(path.parent), weight_name=path.name, use_safetensors=True,
                                                       return_lora_metadata=True)
        unet_state = {k: v for k, v in state.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
        if unet_state:
            pipe.load_lora_into_unet(unet_state, network_alphas=alphas, unet=pipe.unet, adapter_name="medsd_lora",
                                     _pipeline=pipe, metadata=metadata)
            # Fusing removes the per-layer LoRA overhead from every U-Net call of a long sampling run.
            pipe.fuse_lora(components=["unet"], lora_scale=scale)
        # The text-encoder part goes in with peft directly, not through transformers' PEFT glue (see
        # medsd.text_encoder_lora): the same weights, without a transformers-peft version check in the way.
        load_text_encoder_lora(pipe.text_encoder, state, alpha=text_encoder_alpha(alphas, metadata), scale=scale)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        detail = first_line(err, 300)
        raise MedsdError(f"LoRA {str(path)!r} does not fit model {model.source!r}: {detail}") from err
    model.adapters.append(f"lora:{path}@{scale:g}#{file_digest(path)}")


def embeddings_file(item: str | Path) -> tuple[str, str, Path]:
    """(token or "", file as given, checked path) of an `--embeddings [TOKEN=]FILE` item."""
    token, _, file = str(item).rpartition("=") if "=" in str(item) else ("", "", str(item))
    path = Path(file).expanduser()
    if not path.is_file():
        raise MedsdError(f"embeddings file {file!r} not found (expected a learned_embeds.safetensors)")
    if path.suffix != ".safetensors":
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise pickle_refusal(path, "embeddings file")
        raise MedsdError(f"embeddings file {file!r} is not .safetensors; pass a learned_embeds.safetensors")
    return token, file, check_safetensors(path, "embeddings file")


def apply_embeddings(model: LoadedModel, item: str | Path) -> list[str]:
    """Load textual-inversion embeddings from a safetensors file: `FILE` or `TOKEN=FILE`.

    Keys of the file are the placeholder tokens (diffusers' format; several tokens per file are fine);
    a single `emb_params` tensor needs `TOKEN=FILE`. Each tensor is [n_vectors, hidden] or [hidden].
    """
    token, file, path = embeddings_file(item)
    if model.pipe is None:
        raise MedsdError(f"textual-inversion embeddings cannot be applied to a {model.kind} model")
    state = load_safetensors(path, "embeddings file")
    bad = [key for key, tensor in state.items() if tensor.ndim not in (1, 2)]
    if bad or not state:
        raise MedsdError(f"embeddings file {file!r} holds no [vectors, width] tensors (keys: {list(state)[:4]}); "
                         "pass a learned_embeds.safetensors written by textual-inversion training")
    if token:
        if len(state) != 1:
            raise MedsdError(f"{file!r} holds {len(state)} tensors; TOKEN=FILE needs a file with exactly one")
        state = {token: next(iter(state.values()))}
    elif "emb_params" in state:
        raise MedsdError(f"{file!r} stores its vectors as 'emb_params'; name the token: --embeddings '<tok>={file}'")
    tokens, tensors = list(state), [t if t.ndim == 2 else t[None] for t in state.values()]
    try:
        model.pipe.load_textual_inversion(tensors, token=tokens)
    except (ValueError, RuntimeError) as err:
        raise MedsdError(f"could not load embeddings {file!r}: {str(err)[:300]}") from err
    model.placeholder_tokens.extend(tokens)
    model.adapters.append(f"ti:{path}[{','.join(tokens)}]#{file_digest(path)}")
    return tokens


def check_prompt(model: LoadedModel, prompt: str) -> list[str]:
    """Warn (and return the warnings) about unknown placeholder tokens and text the tokenizer would cut."""
    warnings: list[str] = []
    unknown = [tok for tok in PLACEHOLDER_RE.findall(prompt) if tok not in model.placeholder_tokens]
    if unknown and model.conditioning == "text":
        known = ", ".join(model.placeholder_tokens) or "none (load some with --embeddings FILE)"
        warnings.append(
            f"prompt {prompt!r} uses placeholder token(s) {', '.join(sorted(set(unknown)))} that no loaded "
            f"embedding defines; they are read as ordinary text. Known tokens: {known}"
        )
    tok = model.tokenizer
    if tok is not None and model.conditioning == "text":
        text = model.pipe.maybe_convert_prompt(prompt, tok) if model.pipe is not None else prompt
        ids = tok(text, truncation=False, add_special_tokens=True).input_ids
        limit = model.max_length or tok.model_max_length
        if len(ids) > limit:
            cut = tok.decode(ids[limit - 1 : -1])
            warnings.append(
                f"prompt {prompt[:60]!r}... is {len(ids)} tokens, longer than the tokenizer's {limit}; "
                f"this part is cut: {cut!r}"
            )
    for message in warnings:
        log.warning(message)
    return warnings
