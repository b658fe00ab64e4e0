"""`medsd train CONFIG.yaml [--set key=value ...] [--resume latest|PATH]`."""

from __future__ import annotations

import argparse
import logging

from medsd.config_base import add_set_option

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `medsd train` to `parser`."""
    parser.description = (
        "Train a method (lora, full, ...) from a YAML recipe. Works under `accelerate launch` for several "
        "GPUs or nodes. Writes OUT/config.yaml, OUT/logs (TensorBoard), OUT/checkpoints and the method's artefacts."
    )
    parser.add_argument("config", help="YAML recipe (see configs/, e.g. configs/tiny_lora.yaml)")
    add_set_option(parser)
    parser.add_argument(
        "--resume", default=None, metavar="latest|PATH",
        help="continue from the newest checkpoint in OUT/checkpoints (`latest`) or from a checkpoint folder",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load and validate the recipe, train, print where the artefacts are."""
    from medsd.config import load_run_config
    from medsd.train.loop import train

    cfg = load_run_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    for kind, path in result.artefacts.items():
        print(f"{kind}: {path}")
    if result.losses:
        last = max(result.losses)
        print(f"trained to step {result.step} (last loss {result.losses[last]:.4f}) in {result.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m medsd.train.cli`), handy under `accelerate launch`: `medsd train ARGS`."""
    import sys

    from medsd.cli import main as medsd_main

    return medsd_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
