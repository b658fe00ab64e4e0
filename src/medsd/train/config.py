"""Settings of the training loop and of each method (`training:`, `method:` and `validation:` sections)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from medsd.config_base import StrictModel
from medsd.train.method_configs import (
    AutoencoderMethod,
    ClassConditionalMethod,
    DreamBoothMethod,
    ReportReaderMethod,
    TextEncoderSwapMethod,
    TextualInversionMethod,
)


class TrainingConfig(StrictModel):
    """The `training:` section: optimisation and speed settings shared by every method."""

    max_steps: int = Field(1000, ge=1, description="Optimizer steps to train for (ignored when num_epochs is set).")
    num_epochs: int | None = Field(
        None, ge=1, description="Train for this many passes over the data instead of max_steps (None: use max_steps)."
    )
    max_minutes: float | None = Field(
        None, gt=0,
        description="Also stop after this many minutes of optimisation (checkpoint, validation and artefacts as at "
        "max_steps): a time budget for demos and cluster slots. See fit_schedule_to_time.",
    )
    fit_schedule_to_time: bool = Field(
        True,
        description="With max_minutes: at 5%, 25%, 50% and 75% of the budget, measure the step rate and set "
        "max_steps (at most the recipe's) to what fits, so the LR schedule (cosine, linear, ...) runs to its end "
        "on time instead of being cut off. A resumed run keeps the fitted length.",
    )
    batch_size: int = Field(8, ge=1, description="Images per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate.")
    text_encoder_learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="Learning rate of a trained text encoder (None: learning_rate)."
    )
    scale_lr: bool = Field(
        False, description="Multiply the learning rate by batch size x accumulation x processes (--scale_lr).",
    )
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = Field("constant_with_warmup", description="Learning-rate schedule (diffusers.optimization.get_scheduler).")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2.")
    adam_weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    adam_epsilon: float = Field(1e-8, gt=0, description="Adam epsilon.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (None: no clipping).")
    use_8bit_adam: bool = Field(False, description="bitsandbytes 8-bit AdamW (CUDA only): less optimizer memory.")
    fused_optimizer: bool = Field(
        True, description="torch's fused AdamW (one kernel over all parameters, CPU and CUDA): the same update, "
        "3-4x cheaper than the per-tensor loop. Ignored with use_8bit_adam.",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no",
        description="Compute precision (accelerate autocast): no, fp16 (CUDA GPUs; a CPU run stops with a "
        "message) or bf16 (Ampere+ GPUs and CPUs). Frozen parts are held in it unless model.dtype says float32; "
        "trained weights stay float32 (LoRA adapters are upcast).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, ~30% slower."
    )
    attention: Literal["auto", "sdpa", "xformers"] = Field(
        "auto", description="Attention kernel: PyTorch SDPA, xformers, or auto (xformers when installed on CUDA)."
    )
    allow_tf32: bool = Field(True, description="Allow TF32 matmuls on Ampere+ GPUs.")
    cpu_fp32_math: Literal["ieee", "bf16"] = Field(
        "ieee",
        description="CPU runs in float32: bf16 lets oneDNN compute convolutions and matmuls on bfloat16 inputs "
        "with float32 accumulation (TF32's counterpart on CPUs); ieee keeps full float32. Measure before use: "
        "2x slower on an AVX512-BF16 EPYC, 2.4x on an AMX Xeon (benchmarks/bench_cpu_fp32_math.py, "
        "docs/training.md).",
    )
    channels_last: bool = Field(False, description="channels_last memory format for the U-Net (faster on GPUs).")
    compile: bool | Literal["blocks"] = Field(
        False,
        description="torch.compile the U-Net: true compiles all of it, \"blocks\" only its repeated transformer "
        "blocks (diffusers' regional compilation: a fraction of the compile time for part of the gain). The first "
        "step pays the compilation (minutes on a CPU, cached on disk for later runs; about 10 s even then), so it "
        "pays on long runs: on the demo model's CPU LoRA step true saves 18 %, from ~500 steps with a warm cache "
        "and ~7,000 with a cold one; see docs/training.md.",
    )
    ema: bool = Field(
        False, description="Keep an exponential moving average of the trained weights; saved weights use it."
    )
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="EMA decay.")
    min_snr_gamma: float | None = Field(
        None, gt=0, description="Min-SNR loss weighting gamma (5.0 is the paper's value); None: plain MSE."
    )
    masked_loss_weight: float = Field(
        0.0, ge=0,
        description="Extra weight of the denoising loss inside each image's region masks (data.mask_columns): "
        "1 + W inside, 1 outside, averaged over the image. 0: every latent cell counts the same.",
    )
    timestep_sampling: Literal["uniform", "logit_normal"] = Field(
        "uniform",
        description="How training timesteps are drawn: uniform (DDPM, SD) or logit_normal (SD3's: t/T from a "
        "logistic of N(timestep_logit_mean, timestep_logit_std), fewer of the nearly clean and pure-noise ends).",
    )
    timestep_logit_mean: float = Field(0.0, description="Mean of the normal behind logit_normal sampling.")
    timestep_logit_std: float = Field(1.0, gt=0, description="Spread of the normal behind logit_normal sampling.")
    noise_offset: float = Field(
        0.0, ge=0, description="Offset noise strength (0.05-0.1 helps very dark or bright images)."
    )
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None,
        description="Override the model's prediction type (None: keep the scheduler's; SD 2.x uses v_prediction).",
    )
    dataloader_num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    cache_latents: bool = Field(
        True,
        description="Encode VAE latents once and keep them on disk (off automatically when data.augment is on).",
    )
    cache_text_embeddings: bool = Field(
        True, description="Encode each distinct prompt once when the text encoder is frozen."
    )
    cache_dir: str | None = Field(
        None, description="Latent cache folder (None: OUTPUT/cache). Share it between runs on the same data."
    )
    checkpointing_steps: int = Field(500, ge=1, description="Write a resumable checkpoint every N steps.")
    checkpoints_total_limit: int | None = Field(3, ge=1, description="Keep only the newest K checkpoints.")
    log_every: int = Field(
        10, ge=1,
        description="Every N steps, read the step losses back from the device (one wait for all of them), stop on "
        "NaN / inf, write train/loss, train/lr and images/s to TensorBoard and refresh the progress bar. Checkpoints, "
        "validation, the last step and `callbacks` read too.",
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _unquoted_no(cls, value: object) -> object:
        """YAML reads an unquoted `mixed_precision: no` as the boolean false; it means "no"."""
        return "no" if value is False else value


class LoraMethod(StrictModel):
    """LoRA adapters (peft) on the U-Net attention projections, optionally on the text encoder."""

    name: Literal["lora"] = "lora"
    rank: int = Field(4, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(4.0, gt=0, description="LoRA alpha (scale = alpha / rank).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"],
        description="U-Net module names that get adapters (attention projections).",
    )
    train_text_encoder: bool = Field(False, description="Also put LoRA adapters on the CLIP text encoder.")
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        description="Text-encoder module names that get adapters when train_text_encoder is on.",
    )
    export_kohya: bool = Field(True, description="Also write lora_kohya.safetensors (kohya / A1111 key names).")
    merged_forward_max_features: int = Field(
        320, ge=0,
        description="Train adapted layers with at most this many input and output features as one matmul with "
        "W + (alpha/rank)·B·A instead of W·x + B·(A·x): the same result in fewer, larger operations, faster on "
        "small layers and slower on wide ones (measured on CPU; docs/training.md). 0 turns it off.",
    )


class FullMethod(StrictModel):
    """Full U-Net fine-tuning, optionally with the text encoder (RoentGen's best setting)."""

    name: Literal["full"] = "full"
    train_text_encoder: bool = Field(False, description="Also fine-tune the CLIP text encoder.")
    caption_dropout: float = Field(
        0.0, ge=0, lt=1,
        description="Share of samples trained with the empty prompt, so that classifier-free guidance has an "
        "unconditional prediction to push away from (0.1 is usual when training from scratch).",
    )
    init: Literal["pretrained", "scratch"] = Field(
        "pretrained", description="Start the U-Net from the model's weights, or from random weights built for the "
        "VAE's latent channels (a text-to-image model from scratch)."
    )
    vae: str | None = Field(
        None, description="AutoencoderKL folder (an `autoencoder` run's OUT) that replaces the model's VAE; it is "
        "saved in the pipeline. None: the model's VAE.",
    )
    unet_config: dict[str, Any] = Field(
        default_factory=dict,
        description="With init: scratch, UNet2DConditionModel settings that differ from the model's U-Net, e.g. "
        "resnet_time_scale_shift: scale_shift (AdaGN) or addition_embed_type: text (the pooled prompt added to "
        "the timestep embedding); the saved pipeline still loads in plain diffusers.",
    )

    @model_validator(mode="after")
    def _unet_config_needs_scratch(self) -> FullMethod:
        if self.unet_config and self.init != "scratch":
            raise ValueError("unet_config changes the U-Net's architecture, so the pretrained weights would not "
                             "fit; set init: scratch or remove unet_config")
        return self


# The other methods keep their settings in method_configs.py; a recipe's `method:` is any one of them.
MethodConfig = Annotated[
    LoraMethod | FullMethod | TextualInversionMethod | DreamBoothMethod | TextEncoderSwapMethod
    | ClassConditionalMethod | AutoencoderMethod | ReportReaderMethod,
    Field(discriminator="name"),
]


class ValidationConfig(StrictModel):
    """The `validation:` section: fixed prompts and seeds rendered every N steps (and at the end)."""

    prompts: list[str] = Field(default_factory=list, description="Prompts rendered at each validation (empty: none).")
    seeds: list[int] = Field(default_factory=lambda: [0], description="One image per prompt and seed.")
    steps: int = Field(500, ge=1, description="Validate every N optimizer steps.")
    num_inference_steps: int = Field(20, ge=1, description="Sampler steps per validation image.")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance scale.")
    resolution: int | None = Field(None, ge=8, description="Image side in pixels (None: data.resolution).")
    max_minutes: float | None = Field(
        10.0, gt=0,
        description="Stop a validation pass after about this long, skipping (and naming) the images left; the "
        "first image is always rendered. A GPU renders a pass in seconds; SD 1.5 on a CPU takes minutes per image. "
        "None: no limit.",
    )

    @model_validator(mode="after")
    def _seeds_not_empty(self) -> ValidationConfig:
        if self.prompts and not self.seeds:
            raise ValueError("validation.seeds must hold at least one seed when prompts are given")
        return self
