"""`medsd generate` (prompts, prompt files, every finding / label combination), `medsd generate interpolate`
and `medsd generate inpaint`. Heavy imports happen inside the run functions so `--help` stays fast."""

from __future__ import annotations

import argparse

from medsd.generate.jobs import DEFAULT_TEMPLATE
from medsd.generate.schedulers import SCHEDULERS


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `medsd generate` plus the `interpolate` and `inpaint` subcommands (options after the name)."""
    parser.description = (
        "Generate synthetic images with a base model, LoRA, textual-inversion embeddings, full fine-tune or "
        "medsd model folder. Prompts may be composable: '0.25*<healthy> AND 0.75*<cardiomegaly>'."
    )
    _model_args(parser)
    conditions = parser.add_argument_group("what to generate (one of)")
    conditions.add_argument("--prompt", action="append", help="a prompt (repeatable); composable 'w*A AND w*B' ok")
    conditions.add_argument("--prompts", metavar="FILE", help="prompts: .txt (one per line) or .csv with 'prompt'")
    conditions.add_argument("--all-labels", action="store_true",
                            help="every single finding, or with --labels-from every label combination in a CSV")
    parser.add_argument("--labels-from", metavar="CSV", help="CheXpert-style label CSV for --all-labels")
    parser.add_argument("--min-count", type=int, default=1, help="skip label combinations rarer than this")
    parser.add_argument("--proportional", action="store_true",
                        help="with --labels-from: --num-images in total, split over combinations as in the data")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template for labels ({labels})")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt / label combination")
    _sampling_args(parser, out_default="generated")
    parser.add_argument("--dicom", action="store_true", help="also write DICOM (derived/synthetic, no patient data)")
    parser.add_argument("--no-resume", action="store_true", help="regenerate images whose PNG already exists")
    parser.set_defaults(func=run_generate)

    sub = parser.add_subparsers(title="modes", dest="generate_mode", required=False, metavar="{interpolate,inpaint}")
    interp = sub.add_parser("interpolate", help="from one condition to another in K frames with one seed",
                            description="Interpolate between two prompts (or label conditions) with one seed.")
    _model_args(interp)
    interp.add_argument("--start", required=True, help="start condition, e.g. 'A chest X-ray with no finding'")
    interp.add_argument("--end", required=True, help="end condition, e.g. 'A chest X-ray with cardiomegaly'")
    interp.add_argument("--frames", type=int, default=5, help="number of images, start and end included")
    interp.add_argument("--method", choices=["embedding", "compose"], default="embedding",
                        help="blend encoder states, or blend noise predictions with composable weights")
    _sampling_args(interp, out_default="interpolation")
    interp.set_defaults(func=run_interpolate)

    inp = sub.add_parser("inpaint", help="regenerate a masked region of an image",
                         description="Inpaint: a dedicated inpainting model, or latent blending with any model.")
    _model_args(inp)
    inp.add_argument("--image", required=True, help="PNG to edit")
    inp.add_argument("--mask", help="PNG of the same size: white = regenerate, black = keep")
    inp.add_argument("--box", help="x0,y0,x1,y1 region to regenerate (instead of --mask)")
    inp.add_argument("--prompt", required=True, help="what the region should show")
    inp.add_argument("--num-images", type=int, default=1, help="number of variants (seeds seed, seed+1, ...)")
    inp.add_argument("--resample", type=int, default=1,
                     help="RePaint resampling passes per step (ordinary models; needs --scheduler ddim or ddpm)")
    _sampling_args(inp, out_default="inpainted", size=False)
    inp.set_defaults(func=run_inpaint)


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="diffusers folder, Hugging Face id or medsd model folder (required)")
    parser.add_argument("--lora", help="LoRA folder or pytorch_lora_weights.safetensors")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength")
    parser.add_argument("--embeddings", nargs="+", action="extend", default=[], metavar="[TOKEN=]FILE",
                        help="textual-inversion learned_embeds.safetensors (one or more)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])


def _sampling_args(parser: argparse.ArgumentParser, out_default: str, size: bool = True) -> None:
    parser.add_argument("--negative-prompt", default="", help="what to steer away from")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (RoentGen: 75 with pndm)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (RoentGen: 4)")
    parser.add_argument("--scheduler", default="pndm", help=f"one of: {', '.join(SCHEDULERS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    parser.add_argument("--batch-size", type=int, default=8, help="images per U-Net batch")
    if size:
        parser.add_argument("--height", type=int, help="pixels (default: the model's native size)")
        parser.add_argument("--width", type=int, help="pixels (default: the model's native size)")
    parser.add_argument("--out", default=out_default, help="output folder")
    # Its own dest: sharing `quiet` with the global -q would let this default reset `medsd -q generate`.
    parser.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bar")


def _common(args: argparse.Namespace) -> dict:
    from medsd.errors import MedsdError

    if not args.model:
        raise MedsdError("--model is required (a diffusers folder, Hugging Face id or medsd model folder)")
    return {
        "lora": args.lora, "lora_scale": args.lora_scale, "embeddings": args.embeddings, "device": args.device,
        "dtype": args.dtype, "negative_prompt": args.negative_prompt, "steps": args.steps,
        "guidance": args.guidance, "scheduler": args.scheduler, "seed": args.seed, "batch_size": args.batch_size,
        "out_dir": args.out, "progress": not args.no_progress,
    }


def run_generate(args: argparse.Namespace) -> int:
    """`medsd generate`."""
    from medsd.generate.api import generate

    frame = generate(
        args.model, args.prompt, prompts_file=args.prompts, all_labels=args.all_labels,
        labels_from=args.labels_from, min_count=args.min_count, proportional=args.proportional,
        template=args.template,
        num_images=args.num_images, height=args.height, width=args.width, dicom=args.dicom,
        resume=not args.no_resume, **_common(args),
    )
    print(f"{len(frame)} images in {args.out} (table: {args.out}/generation_results.csv)")
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    """`medsd generate interpolate`."""
    from medsd.generate.interpolate import interpolate

    frame = interpolate(args.model, args.start, args.end, frames=args.frames, method=args.method,
                        height=args.height, width=args.width, **_common(args))
    print(f"{len(frame)} frames and strip.png in {args.out}")
    return 0


def run_inpaint(args: argparse.Namespace) -> int:
    """`medsd generate inpaint`."""
    from medsd.generate.inpaint import inpaint

    frame = inpaint(args.model, args.image, args.prompt, mask=args.mask, box=args.box,
                    num_images=args.num_images, resample=args.resample, **_common(args))
    print(f"{len(frame)} inpainted images and mask.png in {args.out}")
    return 0
