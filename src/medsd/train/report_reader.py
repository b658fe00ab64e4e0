"""Pretrain a text encoder to read reports: which findings are present, on which side, how severe.

A text encoder from random weights gives a U-Net from random weights nothing to hold on to: every prompt's
77 token states look alike (cosine ~0.99 between "A chest X-ray with Cardiomegaly" and "... with
Pneumothorax"), and in a demo-size budget the two never learn to use the words (measured: judge AUC ~0.5).
Real text-to-image models start from a pretrained encoder (CLIP for Stable Diffusion and RoentGen, a domain
BERT for the encoder swap). This method is the offline stand-in: it trains only the text encoder, on the
training set's own prompts, to predict what the rule-based report labeler
(`medsd.phantom.report_language.report_labels`) reads in them, as CheXbert learns from the CheXpert labeler.

A linear probe reads every token state at or after the end-of-text token (under CLIP's causal attention those
have seen the whole prompt, and they are most of the 77 positions the U-Net attends to) and predicts per
finding its presence, whether it is in the left / right lung, and its severity; losses are BCE, BCE and
squared error, the last two only where the text states them. The U-Net and VAE are neither read nor
trained. Saves OUT/pipeline: the base model with this text encoder, ready for `full` training.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medsd.train.conditioning import set_trainable
from medsd.train.methods import Method, save_pipeline_folder

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=65536)
def _targets(prompt: str, findings: tuple[str, ...]) -> tuple[list[float], list[float], list[float]]:
    """(presence [F], in-left/in-right per finding [2F] (NaN if not stated), severity [F] (NaN if not stated))."""
    from medsd.phantom.report_language import report_labels

    said = report_labels(prompt)
    nan = float("nan")
    presence = [float(f in said) for f in findings]
    sides: list[float] = []
    severity: list[float] = []
    for f in findings:
        side = said.get(f, {}).get("side")
        sides += [float(side in ("left", "bilateral")), float(side in ("right", "bilateral"))] if side else [nan, nan]
        level = said.get(f, {}).get("severity")
        severity.append(float(level) if level is not None else nan)
    return presence, sides, severity


class ReportReader(Method):
    """Train the text encoder (and a linear probe, discarded after) to read findings, side and severity."""

    name = "report_reader"
    uses_latent_cache = False  # no image is read

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Freeze U-Net and VAE; the text encoder and a fresh probe train in float32."""
        c = self.components
        self.weight_dtype = weight_dtype
        set_trainable(c.unet, False, weight_dtype)
        set_trainable(c.vae, False, weight_dtype)
        set_trainable(c.text_encoder, True, weight_dtype)
        c.text_encoder.train()
        self.findings = tuple(self.cfg.findings)
        device = next(c.text_encoder.parameters()).device
        width = c.text_encoder.config.hidden_size
        self.probe = torch.nn.Linear(width, 4 * len(self.findings)).to(device)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The text encoder and the probe."""
        return {"text_encoder": self.components.text_encoder, "probe": self.probe}

    @property
    def conditioning_is_frozen(self) -> bool:
        """The encoder trains: nothing may be cached."""
        return False

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Probe losses over every position that has read the whole prompt (module docstring)."""
        prompts = list(batch["prompt"])
        tokenizer, encoder = self.components.tokenizer, self.module("text_encoder")
        device = next(self.components.text_encoder.parameters()).device
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        hidden = encoder(ids, return_dict=False)[0]
        eos = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
        read = torch.arange(ids.shape[1], device=device)[None, :] >= eos[:, None]  # [B, T]
        n = len(self.findings)
        out = self.module("probe")(hidden)[read]  # [positions, 4F]
        rows = read.sum(dim=1)
        targets = [torch.tensor(t, device=device).repeat_interleave(rows, dim=0)
                   for t in zip(*(_targets(p, self.findings) for p in prompts), strict=True)]
        presence, sides, severity = targets
        loss = F.binary_cross_entropy_with_logits(out[:, :n], presence)
        known = ~torch.isnan(sides)
        if known.any():
            loss = loss + F.binary_cross_entropy_with_logits(out[:, n:3 * n][known], sides[known])
        known = ~torch.isnan(severity)
        if known.any():
            loss = loss + 4 * F.mse_loss(torch.sigmoid(out[:, 3 * n:])[known], severity[known])
        return loss

    def validate(self, cfg: Any, step: int, out_dir: Path, resolution: int, writer: Any = None, ema: Any = None,
                 weight_dtype: torch.dtype | None = None) -> Path | None:
        """No images to show: this method trains text only."""
        return None

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """OUT/pipeline: the base model's folder with this text encoder."""
        from medsd.tokenizer import save_tokenizer

        target = save_pipeline_folder(self.components, Path(out_dir) / "pipeline")
        # vocab.json + merges.txt too, for older readers
        save_tokenizer(self.components.tokenizer, target / "tokenizer")
        return {"pipeline": str(target)}
