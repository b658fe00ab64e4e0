"""`medsd model ...`: build tiny or full-size random-weight models offline, and describe models."""

from __future__ import annotations

import argparse
import json

from medsd.architectures import ARCHITECTURES, build_random_model
from medsd.files import output_dir
from medsd.models import TINY_SIZES, build_tiny_model, count_parameters, load_components


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `model tiny`, `model random` and `model info`."""
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

    random = subparsers.add_parser(
        "random",
        help="build a random-weight model with the exact SD 1.5 / SD 2 architecture offline (diffusers layout)",
        description="Build a Stable Diffusion folder with the real architecture and random weights: for speed "
        "and memory measurements and full-size tests without downloads. "
        + " ".join(f"{a.name}: {a.description}." for a in ARCHITECTURES.values())
        + " The text encoder's vocabulary is the tokenizer's (the shipped radiology BPE: 2,048 tokens). Writes "
        "about 4.3 GB (float32) and needs about 5 GB of memory while building.",
    )
    random.add_argument("--arch", choices=list(ARCHITECTURES), default="sd15", help="architecture (default: sd15)")
    random.add_argument("--out", required=True, help="output folder")
    random.add_argument("--tokenizer", default=None,
                        help="CLIP tokenizer folder (vocab.json + merges.txt) or a diffusers model folder whose "
                        "tokenizer/ to use (default: the shipped radiology tokenizer)")
    random.add_argument("--seed", type=int, default=0, help="weight-init seed")
    random.set_defaults(func=run_random)

    info = subparsers.add_parser("info", help="print a model's parts and parameter counts")
    info.add_argument("model", help="Hugging Face id or local diffusers folder")
    info.set_defaults(func=run_info)


def run_tiny(args: argparse.Namespace) -> int:
    output_dir(args.out, "--out")
    out = build_tiny_model(args.out, size=args.size, seed=args.seed)
    print(f"tiny {args.size} model written to {out}")
    return 0


def run_random(args: argparse.Namespace) -> int:
    output_dir(args.out, "--out")
    out = build_random_model(args.out, arch=args.arch, tokenizer=args.tokenizer, seed=args.seed)
    print(f"random-weight {args.arch} model written to {out}")
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
