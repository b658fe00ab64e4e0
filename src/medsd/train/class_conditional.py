"""Class-conditional latent diffusion from scratch (Packhäuser et al. 2023; Medfusion, Müller-Franzes et al. 2023).

No text: a learned label-embedding table feeds the U-Net's cross-attention. Rows 0..L-1 are the labels, row L
"no finding" (so a normal image is not the same as "anything"), row L+1 the null label of classifier-free
guidance. A multi-label sample is either a sequence of its positive labels' rows (padded with null) or their
sum as one token; during training each sample's condition is replaced by null with `label_dropout`.

The U-Net starts from random weights (or the model's, `init: pretrained`) and works in the latent space of
`method.vae`: train one first with the `autoencoder` method when the model's VAE is random (tiny models).
Saves `OUT/model/` = unet/, vae/, scheduler/, label_embedding.safetensors and medsd_model.json
`{"kind": "class_conditional", "labels": [...], "mode": ...}`, which `medsd generate` loads.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from medsd.errors import MedsdError
from medsd.train.conditioning import (
    cast,
    encoded_pipeline,
    fresh_unet,
    register_loader,
    save_scheduler,
    set_trainable,
    write_model_json,
)
from medsd.train.methods import Method

log = logging.getLogger(__name__)

NO_FINDING = {"no finding", "no_finding", "normal", "none", "healthy"}


class LabelEmbedding(torch.nn.Module):
    """Label vectors -> cross-attention tokens: [B, L] (1/0/NaN) -> [B, L or 1, dim]."""

    def __init__(self, labels: list[str], dim: int, mode: str = "sequence"):
        super().__init__()
        self.labels, self.mode = list(labels), mode
        self.table = torch.nn.Embedding(len(labels) + 2, dim)

    @property
    def no_finding(self) -> int:
        return len(self.labels)

    @property
    def null(self) -> int:
        return len(self.labels) + 1

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens for a batch of label vectors; `drop` (bool [B]) replaces a sample by the null condition."""
        device = self.table.weight.device
        positive = torch.nan_to_num(labels.float(), nan=0.0).to(device) > 0.5
        empty = ~positive.any(dim=1)
        dropped = drop.to(device) if drop is not None else torch.zeros_like(empty)
        n = len(self.labels)
        if self.mode == "sum":
            tokens = positive.float() @ self.table.weight[:n]
            tokens = torch.where(empty[:, None], self.table.weight[self.no_finding], tokens)
            tokens = torch.where(dropped[:, None], self.table.weight[self.null], tokens)
            return tokens[:, None, :]
        null = torch.full(positive.shape, self.null, dtype=torch.long, device=device)
        ids = torch.where(positive, torch.arange(n, device=device), null)
        # Positive labels first, in label order; the rest is null padding.
        order = torch.sort((~positive).int(), dim=1, stable=True).indices
        ids = ids.gather(1, order)
        ids[:, 0] = torch.where(empty, self.no_finding, ids[:, 0])
        ids = torch.where(dropped[:, None], self.null, ids)
        return self.table(ids)

    def parse(self, conditions: list[str]) -> torch.Tensor:
        """Condition strings -> label vectors: "Cardiomegaly, Edema" (also "+", " and ", "AND"); "no finding";
        "" is the null condition (returned as NaN rows, see `encode`)."""
        lookup = {self._key(name): i for i, name in enumerate(self.labels)}
        rows = []
        for text in conditions:
            row = torch.zeros(len(self.labels))
            parts = [p for p in re.split(r",|\+|\band\b|\bAND\b|;", text) if p.strip()]
            if not parts:
                row[:] = float("nan")
            for part in parts:
                key = self._key(part)
                if key in {self._key(x) for x in NO_FINDING}:
                    continue
                if key not in lookup:
                    raise MedsdError(f"condition {text!r}: {part.strip()!r} is not a label of this model; "
                                     f"known labels: {', '.join(self.labels)} (or 'no finding'; '' = unconditional)")
                row[lookup[key]] = 1.0
            rows.append(row)
        return torch.stack(rows) if rows else torch.zeros(0, len(self.labels))

    def encode(self, conditions: list[str]) -> torch.Tensor:
        """Condition strings -> tokens; an empty string is the null (unconditional) condition."""
        labels = self.parse(conditions)
        null = torch.isnan(labels).all(dim=1)
        return self(labels, drop=null)

    @staticmethod
    def _key(name: str) -> str:
        return re.sub(r"[^a-z0-9]+", "", name.lower().replace("<", "").replace(">", ""))


class ClassConditional(Method):
    """Train a U-Net (from scratch by default) and a label-embedding table; the VAE is frozen."""

    name = "class_conditional"

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Swap in the chosen VAE and a fresh U-Net; the label table is built once the labels are known."""
        c, cfg = self.components, self.cfg
        self.weight_dtype = weight_dtype
        device = next(c.unet.parameters()).device
        if cfg.vae:
            c.vae = load_vae(cfg.vae).to(device)
        channels = c.vae.config.latent_channels
        if cfg.init == "scratch":
            # The U-Net works in this VAE's latent space, whatever the base model's had (Medfusion: 8 channels).
            c.unet = fresh_unet(c.unet, channels).to(device)
        elif c.unet.config.in_channels != channels:
            raise MedsdError(f"method.init=pretrained: the model's U-Net takes {c.unet.config.in_channels} latent "
                             f"channels but the VAE {cfg.vae} makes {channels}; use init: scratch or a VAE with "
                             f"{c.unet.config.in_channels}")
        set_trainable(c.vae, False, weight_dtype)
        # Labels, not text, condition this model: the text encoder is never used.
        c.text_encoder.requires_grad_(False)
        set_trainable(c.unet, True, weight_dtype)
        self.label_embedding: LabelEmbedding | None = None
        if cfg.labels:
            self._build_table(list(cfg.labels))

    def prepare_data(self, dataset: Any) -> Any:
        """Take the labels from the data set when the recipe does not list them (and check they agree)."""
        names = list(getattr(dataset, "pathologies", []) or [])
        if self.label_embedding is None:
            if not names:
                raise MedsdError("method.labels is not set and the data set has no `pathologies`; list the labels")
            self._build_table(names)
        elif names and names != self.label_embedding.labels:
            raise MedsdError(f"method.labels {self.label_embedding.labels} differ from the data set's label columns "
                             f"{names}; remove method.labels or make data.labels the same list")
        return dataset

    def _build_table(self, labels: list[str]) -> None:
        dim = self.components.unet.config.cross_attention_dim
        device = next(self.components.unet.parameters()).device
        self.label_embedding = LabelEmbedding(labels, dim, self.cfg.mode).to(device)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The U-Net and the label table."""
        if self.label_embedding is None:
            raise MedsdError("class_conditional: the labels are unknown; set method.labels")
        return {"unet": self.components.unet, "label_embedding": self.label_embedding}

    @property
    def conditioning_is_frozen(self) -> bool:
        """The label table trains, so its output is never cached; there is no text to cache either."""
        return False

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Condition strings (label names) -> tokens, for validation and generation."""
        return self.label_embedding.encode(prompts)

    def encode_condition(self, batch: dict[str, Any]) -> torch.Tensor:
        """Label tokens of the batch, with classifier-free-guidance label dropout."""
        labels = batch["labels"]
        drop = torch.rand(labels.shape[0]) < self.cfg.label_dropout
        return self.module("label_embedding")(labels, drop)

    def validation_pipeline(self, scheduler: Any) -> Any:
        """diffusers' sampler driven by label strings ("Cardiomegaly", "no finding"; "" = unconditional)."""
        c = self.components
        return encoded_pipeline(c.unet, c.vae, scheduler, self.label_embedding.encode)

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """OUT/model: unet/, vae/, scheduler/, label_embedding.safetensors, medsd_model.json."""
        from safetensors.torch import save_file

        c, target = self.components, Path(out_dir) / "model"
        c.unet.save_pretrained(target / "unet", safe_serialization=True)
        cast(c.vae, torch.float32).save_pretrained(target / "vae", safe_serialization=True)
        save_scheduler(c.noise_scheduler, target, self.training.prediction_type)
        table = self.label_embedding.table.weight.detach().float().cpu().contiguous()
        save_file({"weight": table}, str(target / "label_embedding.safetensors"))
        write_model_json(target, {
            "kind": "class_conditional", "labels": self.label_embedding.labels, "mode": self.cfg.mode,
            "no_finding_index": self.label_embedding.no_finding, "null_index": self.label_embedding.null,
            "cross_attention_dim": int(table.shape[1]), "base_model": c.source,
        })
        return {"model": str(target)}


def load_vae(path: str | Path, what: str = "method.vae") -> torch.nn.Module:
    """An AutoencoderKL from a folder, an `autoencoder` run's OUT (its vae/), or a model folder (its vae/);
    `what` names the setting in the error message."""
    from diffusers import AutoencoderKL

    folder = Path(path).expanduser()
    for candidate in (folder, folder / "vae", folder / "model" / "vae"):
        if (candidate / "config.json").is_file():
            try:
                return AutoencoderKL.from_pretrained(candidate)
            except (OSError, ValueError) as err:  # truncated weights, a config that is not an AutoencoderKL's
                raise MedsdError(f"{what}={str(path)!r}: the AutoencoderKL in {candidate} cannot be loaded "
                                 f"({type(err).__name__}); train it again or pass another folder") from err
    raise MedsdError(f"{what}={str(path)!r} holds no AutoencoderKL (config.json in it or in its vae/); "
                     "train one with the `autoencoder` method and pass its output folder")


def load_class_conditional(folder: Path, spec: dict[str, Any], device: str, dtype: torch.dtype) -> Any:
    """`medsd generate` loader for class-conditional folders: conditions are label names."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file

    from medsd.generate.loading import LoadedModel
    from medsd.models import dtype_keyword

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **dtype_keyword(dtype)).to(device).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", **dtype_keyword(dtype)).to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    table = load_file(str(folder / "label_embedding.safetensors"))["weight"]
    embedding = LabelEmbedding(spec["labels"], table.shape[1], spec.get("mode", "sequence"))
    embedding.table.weight.data.copy_(table)
    embedding.to(device).eval()

    @torch.no_grad()
    def encode(conditions: list[str]) -> torch.Tensor:
        return embedding.encode(list(conditions)).to(dtype)

    return LoadedModel(unet=unet, vae=vae, scheduler_config=dict(scheduler.config), encode=encode,
                       source=str(folder), kind="class_conditional", conditioning="labels", labels=list(spec["labels"]))


def read_spec(folder: str | Path) -> dict[str, Any]:
    """The medsd_model.json of a saved folder."""
    return json.loads((Path(folder) / "medsd_model.json").read_text())


register_loader("class_conditional", load_class_conditional)
