"""Textual inversion (Gal et al. 2022; the "medical diffusion on a budget" recipe): learn new token embeddings.

Each placeholder token (`<cardiomegaly>`) gets N vectors, stored as N tokens `<cardiomegaly>`, `<cardiomegaly>_1`,
... exactly as diffusers' `load_textual_inversion` does, so a prompt naming the token expands to all N.
Only the new rows of the token-embedding table train; everything else, including every original row, is
restored bit-for-bit after each optimizer step (AdamW's weight decay would otherwise move them).

Saves `learned_embeds.safetensors` ({token: [N, dim]}, the diffusers format), one single-token file per token
under `embeddings/` (plain `pipe.load_textual_inversion(file)` accepts only one token per file) and, optionally,
`a1111/SLUG.safetensors` (`emb_params`, read by AUTOMATIC1111 and kohya; the trigger word is the file name).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medsd.errors import MedsdError
from medsd.train.conditioning import set_trainable
from medsd.train.methods import Method

log = logging.getLogger(__name__)

USABLE_POSITIONS = 75  # CLIP's 77 positions minus start and end tokens


def vector_names(token: str, n: int) -> list[str]:
    """The tokenizer entries of an N-vector placeholder (diffusers' multi-vector naming)."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def expand_placeholders(prompt: str, tokens: list[str], n: int) -> str:
    """Replace each placeholder by its N vector tokens, as diffusers' `maybe_convert_prompt` does at inference."""
    if n == 1:
        return prompt
    # Longest first, so that `<a>` inside `<ab>` is never replaced by mistake.
    for token in sorted(tokens, key=len, reverse=True):
        prompt = prompt.replace(token, " ".join(vector_names(token, n)))
    return prompt


class TextualInversion(Method):
    """Train only the embedding rows of new placeholder tokens; U-Net, VAE and text encoder stay frozen."""

    name = "textual_inversion"

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Freeze the model, add the placeholder tokens and initialise their rows (needs `tokens` or classes)."""
        c = self.components
        self.weight_dtype = weight_dtype
        for module in (c.unet, c.vae):
            set_trainable(module, False, weight_dtype)
        # The text encoder stays float32: its embedding table is what trains.
        c.text_encoder.requires_grad_(False)
        self.tokens: list[str] = []
        if self.cfg.tokens:
            self.add_tokens(list(self.cfg.tokens))

    def prepare_data(self, dataset: Any) -> Any:
        """Without `tokens`, learn one token per class of the data set (`<{slug}>`, like the data layer)."""
        if not self.tokens:
            from medsd.data.prompts import placeholder_token

            classes = list(getattr(dataset, "pathologies", []))
            if not classes:
                raise MedsdError("method.tokens is not set and the data set has no classes (`pathologies`); "
                                 "set method.tokens, e.g. ['<cardiomegaly>']")
            self.add_tokens([placeholder_token(name, self.cfg.placeholder_format) for name in classes])
        return dataset

    def add_tokens(self, tokens: list[str]) -> None:
        """Add `tokens` (N vectors each) to the tokenizer and embedding table; only their rows will train."""
        c, n = self.components, self.cfg.num_vectors
        names = [name for token in tokens for name in vector_names(token, n)]
        # A name that is already one vocabulary entry is an ordinary word: learning it would redefine that word
        # in every prompt, so (like diffusers' script) refuse it.
        taken = [name for name in names if len(c.tokenizer(name, add_special_tokens=False).input_ids) == 1]
        if taken or c.tokenizer.add_tokens(names) != len(names):
            raise MedsdError(f"placeholder token(s) {taken or tokens} are already in the tokenizer's vocabulary; "
                             "choose new names such as '<my_finding>'")
        if n * len(tokens) > USABLE_POSITIONS:
            log.warning(
                "%d tokens x %d vectors = %d positions, more than CLIP's %d usable ones: a prompt naming more than "
                "%d of these tokens is cut (the extra vectors are silently dropped)", len(tokens), n,
                n * len(tokens), USABLE_POSITIONS, USABLE_POSITIONS // n)
        encoder = c.text_encoder
        table = encoder.get_input_embeddings().weight
        old_rows = table.shape[0]
        encoder.resize_token_embeddings(len(c.tokenizer), mean_resizing=False)
        table = encoder.get_input_embeddings().weight
        self.new_ids = torch.tensor(c.tokenizer.convert_tokens_to_ids(names), device=table.device)
        with torch.no_grad():
            table[self.new_ids] = self._initial_rows(table[:old_rows], len(names))
        table.requires_grad_(True)
        # The frozen rows, kept to restore them after every step (diffusers' textual_inversion.py does the same).
        self.frozen_mask = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
        self.frozen_mask[self.new_ids] = False
        self.frozen_rows = table.detach()[self.frozen_mask].clone()
        self.tokens = tokens
        log.info("textual inversion: %d token(s) x %d vector(s): %s", len(tokens), n, ", ".join(tokens))

    def _initial_rows(self, table: torch.Tensor, count: int) -> torch.Tensor:
        word = self.cfg.initializer
        if word:
            ids = self.components.tokenizer(word, add_special_tokens=False).input_ids
            if ids:
                # A word split into several sub-tokens starts from their mean.
                return table[ids].mean(dim=0, keepdim=True).expand(count, -1).clone()
            log.warning("initializer %r is not in the vocabulary; initialising randomly", word)
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(count, table.shape[1], generator=generator).to(table.device)
        return table.mean(dim=0) + noise * table.std(dim=0)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The text encoder (only its token-embedding table requires grad)."""
        return {"text_encoder": self.components.text_encoder}

    def param_groups(self, lr: float, text_lr: float) -> list[dict[str, Any]]:
        """One group: the embedding table at the main learning rate (the recipe's 0.005)."""
        return [{"params": [self.components.text_encoder.get_input_embeddings().weight], "lr": lr, "name": "embeds"}]

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP hidden states of prompts after expanding each placeholder into its N vector tokens."""
        return super().encode_prompts([expand_placeholders(p, self.tokens, self.cfg.num_vectors) for p in prompts])

    def after_step(self) -> None:
        """Put every original embedding row back: only the placeholder rows may change."""
        table = self.components.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            table[self.frozen_mask] = self.frozen_rows

    def describe(self) -> str:
        """What trains: the placeholder rows only (the optimizer sees the whole table; the rest is restored)."""
        dim = self.components.text_encoder.get_input_embeddings().weight.shape[1]
        n = self.cfg.num_vectors
        return (f"method {self.name}: {len(self.tokens)} token(s) x {n} vector(s) x {dim} = "
                f"{len(self.tokens) * n * dim:,} trained values ({', '.join(self.tokens)})")

    def learned_embeddings(self) -> dict[str, torch.Tensor]:
        """{token: [N, dim]} of the current placeholder rows (float32, CPU)."""
        table = self.components.text_encoder.get_input_embeddings().weight.detach().float().cpu()
        n = self.cfg.num_vectors
        ids = self.new_ids.cpu()
        return {token: table[ids[i * n:(i + 1) * n]].clone() for i, token in enumerate(self.tokens)}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the placeholder rows (a checkpoint is a few KB)."""
        return {f"embeds.{token}": value for token, value in self.learned_embeddings().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Write checkpointed placeholder rows back into the table."""
        table = self.components.text_encoder.get_input_embeddings().weight
        n = self.cfg.num_vectors
        with torch.no_grad():
            for i, token in enumerate(self.tokens):
                table[self.new_ids[i * n:(i + 1) * n]] = state[f"embeds.{token}"].to(table)

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """learned_embeds.safetensors (all tokens), embeddings/SLUG.safetensors per token, a1111/SLUG.safetensors."""
        from safetensors.torch import save_file

        from medsd.data.prompts import placeholder_token

        out_dir = Path(out_dir)
        learned = self.learned_embeddings()
        save_file(learned, str(out_dir / "learned_embeds.safetensors"))
        artefacts = {"learned_embeds": str(out_dir / "learned_embeds.safetensors")}
        for sub in ("embeddings", "a1111") if self.cfg.export_a1111 else ("embeddings",):
            (out_dir / sub).mkdir(exist_ok=True)
        for token, value in learned.items():
            slug = placeholder_token(token, "{slug}")
            save_file({token: value}, str(out_dir / "embeddings" / f"{slug}.safetensors"))
            if self.cfg.export_a1111:
                save_file({"emb_params": value}, str(out_dir / "a1111" / f"{slug}.safetensors"))
        artefacts["embeddings"] = str(out_dir / "embeddings")
        if self.cfg.export_a1111:
            artefacts["a1111"] = str(out_dir / "a1111")
        return artefacts
