"""`medsd data ...` subcommands: phantom (see medsd.phantom.cli), inspect, prepare, export."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medsd.config_base import add_set_option, load_yaml_section
from medsd.data.config import DataConfig
from medsd.phantom import cli as phantom_cli


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data subcommands (phantom, phantom-classifier, inspect, prepare, export)."""
    phantom_cli.register(subparsers)

    p = subparsers.add_parser(
        "inspect",
        help="Summarise a recipe's data set: counts, label combinations, image stats, a contact sheet.",
        description="Reads the `data:` section of CONFIG and writes inspect.json + contact_sheet.png.",
    )
    p.add_argument("config", help="YAML recipe with a `data:` section")
    p.add_argument("--out", default=None, help="output folder (default: inspect_<source> beside the config)")
    p.add_argument("--samples", type=int, default=16, help="images to decode for stats and the contact sheet")
    p.add_argument("--check-all", action="store_true", help="decode every image to list all unreadable files")
    p.add_argument("--all-labels", action="store_true", help="print every label combination with its count")
    add_set_option(p, "data.resolution=128")
    p.set_defaults(func=run_inspect)

    p = subparsers.add_parser(
        "prepare",
        help="Decode and preprocess every image once into a cache folder (resumable, parallel).",
        description="Writes images.npy + metadata.csv into data.cache_dir (or --out); training then reads it.",
    )
    p.add_argument("config", help="YAML recipe with a `data:` section")
    p.add_argument("--out", default=None, help="cache folder (default: data.cache_dir)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: data.workers)")
    add_set_option(p, "data.resolution=128")
    p.set_defaults(func=run_prepare)

    p = subparsers.add_parser(
        "export",
        help="Write a recipe's samples as PNG files + labels.csv (the folder `medsd evaluate` reads).",
        description="Exports what training sees (preprocessed; PI-CAI slices, PCam patches) for evaluation.",
    )
    p.add_argument("config", help="YAML recipe with a `data:` section")
    p.add_argument("--out", required=True, help="output folder (images/ and labels.csv)")
    p.add_argument("--split", default=None, choices=["train", "val", "test", "all"], help="default: data.split")
    p.add_argument("--limit", type=int, default=None, help="export at most this many samples")
    add_set_option(p, "data.resolution=256")
    p.set_defaults(func=run_export)


def _load(args: argparse.Namespace) -> DataConfig:
    return load_yaml_section(args.config, "data", DataConfig, args.overrides)


def run_inspect(args: argparse.Namespace) -> int:
    """Print a summary of the data set and write the report files."""
    from medsd.data.inspect import inspect_dataset

    cfg = _load(args)
    out = Path(args.out) if args.out else Path(args.config).parent / f"inspect_{cfg.source}"
    report = inspect_dataset(cfg, out, n_samples=args.samples, check_all=args.check_all)
    print(f"{report['source']}: {report['size']} samples, {report['patients']} patients")
    print("selection: " + " → ".join(f"{name}: {n}" for name, n in report["selection"]))
    print(f"{'label':<28} {'pos':>8} {'unc':>8} {'neg':>8} {'blank':>8} {'pos*':>8}")
    for name, c in report["label_counts"].items():
        print(
            f"{name:<28} {c['positive']:>8} {c['uncertain']:>8} {c['negative']:>8} {c['blank']:>8} "
            f"{c['positive_after_policy']:>8}"
        )
    combos = report["label_combinations"] if args.all_labels else report["label_combinations"][:10]
    print(f"label combinations ({report['n_label_combinations']} distinct):")
    for entry in combos:
        print(f"  {entry['count']:>8}  {' + '.join(entry['labels']) or 'no finding'}")
    print(f"image: shape {report['image_shape']} dtype {report['dtype']} range {report['value_range']}")
    for prompt in report["sample_prompts"][:5]:
        print(f"  prompt: {prompt}")
    print(f"unreadable: {len(report['unreadable'])} of {report['checked_images']} checked")
    for entry in report["unreadable"][:20]:
        print(f"  {entry['path']}: {entry['reason']}")
    print(f"wrote {out / 'inspect.json'}" + (f" and {report['contact_sheet']}" if "contact_sheet" in report else ""))
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Fill the cache and print its summary."""
    from medsd.data.prepare import prepare_cache

    cfg = _load(args)
    report = prepare_cache(cfg, cache_dir=args.out, workers=args.workers)
    print(json.dumps({k: v for k, v in report.items() if k not in ("skipped_files", "pathologies")}, indent=2))
    for path, reason in report["skipped_files"][:20]:
        print(f"skipped {path}: {reason}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write the PNGs and labels.csv and say how many."""
    from medsd.data.export import export_samples

    result = export_samples(_load(args), args.out, args.split, args.limit)
    print(f"wrote {result['written']} images and labels.csv ({', '.join(result['pathologies'])}) to {result['out']}"
          + (f"; skipped {len(result['skipped'])} unreadable" if result["skipped"] else ""))
    return 0
