"""LoRA: low-rank adapters (peft) on the U-Net attention projections, optionally on the text encoder.

Saves `pytorch_lora_weights.safetensors` in the diffusers format (`pipe.load_lora_weights(dir)` loads it) and,
optionally, `lora_kohya.safetensors` with kohya / AUTOMATIC1111 key names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from medsd.train.methods import Method

log = logging.getLogger(__name__)


def add_text_encoder_adapter(text_encoder: torch.nn.Module, config: object) -> None:
    """transformers' `text_encoder.add_adapter(config)`, done with peft itself.

    transformers 5.x refuses `add_adapter` below peft 0.22, which is not released; the call only injects the
    LoRA layers and records their config, which peft's `inject_adapter_in_model` and two attributes do.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, text_encoder, "default")
    text_encoder.peft_config = {"default": config}
    text_encoder._hf_peft_config_loaded = True


class LoraFineTune(Method):
    """Freeze the base model; train only LoRA matrices (A, B) on the chosen projections."""

    name = "lora"

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Freeze everything, hold it in `weight_dtype`, add adapters, keep the adapters in float32."""
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        c, cfg = self.components, self.cfg
        self.weight_dtype = weight_dtype
        for module in (c.unet, c.vae, c.text_encoder):
            module.requires_grad_(False)
            if weight_dtype != torch.float32:
                module.to(dtype=weight_dtype)
        c.unet.add_adapter(LoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, init_lora_weights="gaussian",
            target_modules=list(cfg.target_modules),
        ))
        if cfg.train_text_encoder:
            add_text_encoder_adapter(c.text_encoder, LoraConfig(
                r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, init_lora_weights="gaussian",
                target_modules=list(cfg.text_encoder_target_modules),
            ))
        if weight_dtype != torch.float32:
            # Optimizer updates on fp16/bf16 adapters underflow (and fp16 grads cannot be unscaled): the known
            # diffusers pitfall. Keep the small trained matrices in float32; autocast handles the mixed matmuls.
            cast_training_params(list(self.trainable_modules().values()), dtype=torch.float32)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The U-Net (its LoRA parameters), and the text encoder when it gets adapters too."""
        modules = {"unet": self.components.unet}
        if self.cfg.train_text_encoder:
            modules["text_encoder"] = self.components.text_encoder
        return modules

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the adapter weights (peft keys), so checkpoints stay small on real models."""
        from peft.utils import get_peft_model_state_dict

        return {
            f"{name}.{k}": v.detach().float().contiguous()
            for name, module in self.trainable_modules().items()
            for k, v in get_peft_model_state_dict(module).items()
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put checkpointed adapter weights back."""
        from peft.utils import set_peft_model_state_dict

        for name, module in self.trainable_modules().items():
            prefix = f"{name}."
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            result = set_peft_model_state_dict(module, part)
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"checkpoint has unexpected LoRA keys for {name}: {result.unexpected_keys[:3]}")
        # set_peft_model_state_dict copies in the checkpoint dtype; keep adapters float32 for training.
        for p in self.trainable_parameters():
            p.data = p.data.float()

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """`pytorch_lora_weights.safetensors` (diffusers) and, if asked, `lora_kohya.safetensors`."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        layers = {
            name: convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
            for name, module in self.trainable_modules().items()
        }
        StableDiffusionPipeline.save_lora_weights(
            out_dir, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers.get("text_encoder"),
            safe_serialization=True,
        )
        artefacts = {"lora": str(Path(out_dir) / "pytorch_lora_weights.safetensors")}
        if self.cfg.export_kohya:
            peft_state = {
                f"{name}.{k}": v.detach().float().contiguous()
                for name, module in self.trainable_modules().items()
                for k, v in get_peft_model_state_dict(module).items()
            }
            kohya = convert_state_dict_to_kohya(peft_state)
            # diffusers writes alpha = rank; ours may differ, and A1111 scales by alpha / rank.
            for key in [k for k in kohya if k.endswith(".alpha")]:
                kohya[key] = torch.tensor(float(self.cfg.alpha))
            path = Path(out_dir) / "lora_kohya.safetensors"
            save_file({k: v.contiguous() for k, v in kohya.items()}, str(path), metadata={"ss_network_dim": str(
                self.cfg.rank), "ss_network_alpha": str(self.cfg.alpha)})
            artefacts["lora_kohya"] = str(path)
        return artefacts
