"""LoRA on the CLIP text encoder with peft itself, for training and for loading diffusers-format files.

transformers' own PEFT glue (`add_adapter`, `load_adapter`) checks the installed peft against a minimum that
moves with each transformers release (transformers 5.24 demands peft >= 0.22 while the newest peft on the index
was 0.21.2), so a transformers upgrade alone could break LoRA on the text encoder. peft's
`inject_adapter_in_model` is what that glue calls underneath; using it directly keeps the same layers, the same
state-dict keys and the same files, with one dependency fewer in the way. The U-Net needs none of this: diffusers'
`add_adapter` already injects with peft directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from medsd.errors import MedsdError

TEXT_ENCODER_PREFIX = "text_encoder."


def lora_config(rank: int, alpha: float, targets: Sequence[str], dropout: float = 0.0):
    """The peft LoraConfig medsd trains with (gaussian init: B starts at zero, so training starts from the base)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                      target_modules=list(targets))


def add_text_encoder_lora(text_encoder: torch.nn.Module, config, adapter_name: str = "default") -> None:
    """Inject LoRA layers into `text_encoder` in place; `peft.utils.get_peft_model_state_dict` then reads them."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, text_encoder, adapter_name=adapter_name)


def load_text_encoder_lora(text_encoder: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                           alpha: float | None = None, scale: float = 1.0, adapter_name: str = "medsd_lora") -> int:
    """Add the `text_encoder.*` part of a diffusers-format LoRA state dict to `text_encoder` and merge it at `scale`.

    The rank comes from the weights; `alpha` from the caller (the file's adapter metadata or kohya alphas), else
    alpha = rank, diffusers' own default. Returns the number of adapted layers (0: the file has no text-encoder part).
    """
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import set_peft_model_state_dict

    part = {k[len(TEXT_ENCODER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TEXT_ENCODER_PREFIX)}
    if not part:
        return 0
    weights = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    if not hasattr(text_encoder, "text_model"):  # CLIP flattened in newer transformers; old files keep the prefix
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    modules = sorted({k.split(".lora_")[0] for k in weights})
    ranks = {weights[f"{m}.lora_A.weight"].shape[0] for m in modules if f"{m}.lora_A.weight" in weights}
    if len(ranks) != 1:
        raise MedsdError(f"text-encoder LoRA has mixed or missing ranks {sorted(ranks)}; medsd loads one rank per file")
    rank = ranks.pop()
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    add_text_encoder_lora(text_encoder, lora_config(rank, alpha or float(rank), targets), adapter_name=adapter_name)
    result = set_peft_model_state_dict(text_encoder, weights, adapter_name=adapter_name)
    if getattr(result, "unexpected_keys", None):
        raise MedsdError(f"text-encoder LoRA keys do not fit this text encoder: {result.unexpected_keys[:3]}")
    layers = [m for m in text_encoder.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.to(dtype=text_encoder.dtype)
        layer.set_scale(adapter_name, scale)
        layer.merge(adapter_names=[adapter_name])  # merged: each text-encoder call costs what the base costs
    return len(layers)


def text_encoder_alpha(network_alphas: Mapping[str, float] | None, metadata: Mapping | None) -> float | None:
    """The text-encoder adapter's alpha from what diffusers' `lora_state_dict` returns, if the file has one.

    diffusers files carry it in the adapter metadata (`text_encoder.lora_alpha`), kohya files as `.alpha` entries.
    """
    if metadata and f"{TEXT_ENCODER_PREFIX}lora_alpha" in metadata:
        return float(metadata[f"{TEXT_ENCODER_PREFIX}lora_alpha"])
    alphas = [float(v) for k, v in (network_alphas or {}).items() if k.startswith(TEXT_ENCODER_PREFIX)]
    return alphas[0] if alphas else None
