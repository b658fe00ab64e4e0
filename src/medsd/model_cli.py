"""`medsd model ...`: build tiny offline models and describe models."""

from __future__ import annotations

import argparse
import json

from medsd.files import output_dir
from medsd.models import TINY_SIZES, build_tiny_model, count_parameters, load_components


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `model tiny` and `model info`."""
    tiny = subparsers.add_parser(
        "tiny",
        help="build a tiny Stable-Diffusion-architecture model offline (diffusers layout)",
        description="Build a randomly initialised SD-architecture model (U-Net, VAE, CLIP text encoder, PNDM "
        "scheduler, radiology BPE tokenizer) that plain diffusers loads. 'test' builds in seconds; 'demo' is "
        "the largest that trains usefully at 64-128 px on 2 CPU cores.",
    )
    tiny.add_argument("--out", required=True, help="output folder")
    tiny.add_argument("--size", choices=sorted(TINY_SIZES), default="test", help="preset (default: test)")
    tiny.add_argument("--seed", type=int, default=0, help="weight-init seed")
    tiny.set_defaults(func=run_tiny)

    info = subparsers.add_parser("info", help="print a model's parts and parameter counts")
    info.add_argument("model", help="Hugging Face id or local diffusers folder")
    info.set_defaults(func=run_info)


def run_tiny(args: argparse.Namespace) -> int:
    output_dir(args.out, "--out")
    out = build_tiny_model(args.out, size=args.size, seed=args.seed)
    print(f"tiny {args.size} model written to {out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    parts = load_components(args.model)
    summary = {
        "source": parts.source,
        "unet_parameters": count_parameters(parts.unet),
        "vae_parameters": count_parameters(parts.vae),
        "text_encoder_parameters": count_parameters(parts.text_encoder),
        "vocab_size": len(parts.tokenizer),
        "cross_attention_dim": parts.unet.config.cross_attention_dim,
        "vae_scale_factor": 2 ** (len(parts.vae.config.block_out_channels) - 1),
        "prediction_type": parts.noise_scheduler.config.prediction_type,
    }
    print(json.dumps(summary, indent=2))
    return 0
