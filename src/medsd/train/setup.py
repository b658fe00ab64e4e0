"""Setting a run up: model and method, speed settings, data (cached or not), optimizer, LR schedule, EMA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from medsd.errors import MedsdError, first_line
from medsd.train.cache import PromptEmbeddingCache, build_latent_cache
from medsd.train.config import TrainingConfig
from medsd.train.methods import Method, build_method

log = logging.getLogger(__name__)


def build_run_method(cfg: Any, accelerator: Any, weight_dtype: torch.dtype) -> Method:
    """Check device and precision, load the model, let the method freeze/adapt it, apply the speed settings.

    `weight_dtype` is the compute precision (training.mixed_precision); the frozen parts are held in
    `model.dtype` (`auto`: the same), see `medsd.train.precision`.
    """
    from medsd.models import load_components
    from medsd.train.precision import check_run_device, frozen_weight_dtype

    m = cfg.model
    check_run_device(cfg, accelerator)
    frozen_dtype = frozen_weight_dtype(m.dtype, cfg.training.mixed_precision)
    components = load_components(m.pretrained, dtype="float32", revision=m.revision, variant=m.variant)
    if cfg.training.prediction_type is not None:
        components.noise_scheduler.register_to_config(prediction_type=cfg.training.prediction_type)
    for module in (components.unet, components.vae, components.text_encoder):
        module.to(accelerator.device)
    method = build_method(cfg.method, components, cfg.training)
    method.output_dir = Path(cfg.output_dir)
    method.setup(frozen_dtype)
    apply_speed_settings(method, cfg.training, accelerator)
    return method


def apply_speed_settings(method: Method, tc: TrainingConfig, accelerator: Any) -> None:
    c = method.components
    if tc.gradient_checkpointing:
        c.unet.enable_gradient_checkpointing()
        if "text_encoder" in method.trainable_modules():
            c.text_encoder.gradient_checkpointing_enable()
    use_xformers = tc.attention == "xformers" or (tc.attention == "auto" and accelerator.device.type == "cuda")
    if use_xformers:
        try:
            import xformers  # noqa: F401

            c.unet.enable_xformers_memory_efficient_attention()
        except ImportError as err:
            if tc.attention == "xformers":
                raise MedsdError("training.attention=xformers but xformers is not installed; "
                                 "`pip install xformers` or use attention: sdpa") from err
    if tc.channels_last:
        c.unet.to(memory_format=torch.channels_last)
    if tc.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True


def compile_unet(unet: torch.nn.Module, mode: bool | str, accelerator: Any) -> torch.nn.Module:
    """`training.compile`: true wraps the whole U-Net in torch.compile; "blocks" compiles its repeated blocks.

    "blocks" is diffusers' regional compilation (`compile_repeated_blocks`): every transformer block shares one
    compiled graph per input shape, so it compiles in a fraction of the time for part of the gain. Compilation
    happens during the first step(s); torch caches the result on disk for later runs of the same model.
    """
    if mode != "blocks":
        return torch.compile(unet)
    model = accelerator.unwrap_model(unet)
    if not getattr(model, "_repeated_blocks", None):
        raise MedsdError(f"training.compile=blocks needs a diffusers model with repeated blocks; "
                         f"{type(model).__name__} has none: use compile: true")
    model.compile_repeated_blocks(fullgraph=True)
    return unet


def training_data(cfg: Any, dataset: Dataset, method: Method, accelerator: Any) -> tuple[Dataset, str | None]:
    """The latent cache when allowed (not with augmentation), else the raw images (encoded every step)."""
    tc = cfg.training
    augment = bool(getattr(cfg.data, "augment", False))
    if not tc.cache_latents or augment or not method.uses_latent_cache:
        if tc.cache_latents:
            log.info("data.augment is on: encoding latents on the fly (a cache would freeze one augmentation)")
        return dataset, None
    root = Path(tc.cache_dir) if tc.cache_dir else Path(cfg.output_dir) / "cache"
    cache, hit = build_latent_cache(
        dataset, method.components.vae, root, cfg.data.model_dump(mode="json"), accelerator,
        batch_size=tc.batch_size, num_workers=tc.dataloader_num_workers,
    )
    return cache, f"{'hit' if hit else 'built'}:{cache.directory}"


def text_cache(tc: TrainingConfig, method: Method) -> PromptEmbeddingCache | None:
    if tc.cache_text_embeddings and method.prompt_features_are_frozen:
        return PromptEmbeddingCache(method.encode_prompts)
    return None


def make_optimizer(method: Method, tc: TrainingConfig, accelerator: Any) -> torch.optim.Optimizer:
    scale = tc.batch_size * tc.gradient_accumulation_steps * accelerator.num_processes if tc.scale_lr else 1
    lr = tc.learning_rate * scale
    groups = method.param_groups(lr, (tc.text_encoder_learning_rate or tc.learning_rate) * scale)
    kwargs = {"betas": (tc.adam_beta1, tc.adam_beta2), "weight_decay": tc.adam_weight_decay, "eps": tc.adam_epsilon}
    if tc.use_8bit_adam:
        if accelerator.device.type != "cuda":
            raise MedsdError("training.use_8bit_adam needs a CUDA GPU (bitsandbytes); set it to false on CPU")
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise MedsdError("training.use_8bit_adam needs bitsandbytes: `pip install bitsandbytes`") from err
        return bnb.optim.AdamW8bit(groups, lr=lr, **kwargs)
    if tc.fused_optimizer and accelerator.device.type in ("cpu", "cuda"):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, **kwargs)


def make_lr_scheduler(tc: TrainingConfig, optimizer: Any, max_steps: int, processes: int) -> Any:
    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process per optimizer step, hence the factor.
    return get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=tc.lr_warmup_steps * processes,
                         num_training_steps=max_steps * processes)


def refit_lr_schedule(lr_scheduler: Any, tc: TrainingConfig, max_steps: int, processes: int) -> None:
    """Make a running schedule span `max_steps` instead (same kind, warm-up and position): the time budget's fit."""
    # diffusers builds a LambdaLR whose lambdas close over the length; build the new ones on a stand-in optimizer.
    inner = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps the torch scheduler
    groups = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in inner.optimizer.param_groups]
    inner.lr_lambdas = make_lr_scheduler(tc, torch.optim.SGD(groups, lr=1.0), max_steps, processes).lr_lambdas


def make_ema(method: Method, tc: TrainingConfig, accelerator: Any) -> Any:
    if not tc.ema:
        return None
    from diffusers.training_utils import EMAModel

    # foreach: one fused update over all shadow tensors instead of one per tensor (4.0 -> 2.5 ms a step for the
    # demo text model's 562 tensors on a 2-core CPU).
    ema = EMAModel(method.trainable_parameters(), decay=tc.ema_decay, foreach=True)
    ema.to(accelerator.device)
    return ema


def oom_advice(tc: TrainingConfig, err: Exception) -> str:
    tips = [f"lower training.batch_size (now {tc.batch_size}) and raise gradient_accumulation_steps"]
    if not tc.gradient_checkpointing:
        tips.append("set training.gradient_checkpointing: true")
    if tc.mixed_precision == "no":
        tips.append("use training.mixed_precision: bf16 (or fp16)")
    if not tc.use_8bit_adam:
        tips.append("set training.use_8bit_adam: true")
    tips.append("or use method lora instead of full")
    return f"out of memory during training ({first_line(err, 120)}); " + "; ".join(tips)
