"""Small LoRA layers computed as one matmul while training: `(W + s·B·A)·x` instead of `W·x + s·B·(A·x)`.

Both are the same function of x, A and B, so outputs and gradients agree up to float rounding. On a small layer
the usual form is a chain of small, memory-bound operations (two rank-r matmuls, a scale and an add, and their
backward), each paying the framework's per-operation cost; the merged form is one matmul plus, in backward, one
weight gradient of the layer's own size. That extra gradient costs `tokens x in x out` multiply-adds, so on
wide layers the merged form is slower: only layers up to `max_features` wide are switched (measured on CPU, see
docs/training.md). peft has no such training mode (`merge_adapter` folds the adapter into W in place, after
which it no longer trains), hence this file; checkpoints and saved adapters are peft's own, unchanged.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


def merge_small_lora_layers(model: torch.nn.Module, max_features: int) -> int:
    """Give every peft LoRA Linear in `model` with at most `max_features` inputs and outputs the merged forward.

    Returns how many layers were switched. Layers whose adapter cannot be merged at call time (dropout, DoRA or
    another variant, a LoRA bias, several active adapters, mixed dtypes, disabled or merged adapters) fall back
    to peft's own forward on every call, so the switch never changes what a layer computes.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    switched = 0
    for module in model.modules():
        if (isinstance(module, LoraLinear) and not module.fan_in_fan_out
                and max(module.in_features, module.out_features) <= max_features):
            module.forward = types.MethodType(_merged_forward, module)
            switched += 1
    return switched


def _merged_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft `lora.Linear.forward`, as one `F.linear` with the adapted weight when a single plain adapter is on."""
    name = _single_plain_adapter(self, x)
    if name is None or args or kwargs:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.get_base_layer()
    weight = torch.addmm(base.weight, self.lora_B[name].weight, self.lora_A[name].weight, alpha=self.scaling[name])
    return F.linear(x, weight, base.bias)


def _single_plain_adapter(layer: Any, x: torch.Tensor) -> str | None:
    """The one active adapter when it is plain LoRA in the input's dtype (mergeable), else None."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    plain = (name not in layer.lora_variant and not layer.lora_bias[name]
             and isinstance(layer.lora_dropout[name], torch.nn.Identity))
    dtypes = {x.dtype, layer.get_base_layer().weight.dtype, layer.lora_A[name].weight.dtype,
              layer.lora_B[name].weight.dtype}
    return name if plain and len(dtypes) == 1 and not torch.is_autocast_enabled(x.device.type) else None
