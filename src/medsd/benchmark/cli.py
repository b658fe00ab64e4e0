"""`medsd benchmark ...`: measurements with known truth on the phantom (`adaptation`: which method teaches a new
finding)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `medsd benchmark adaptation`."""
    from medsd.benchmark.methods import METHODS
    from medsd.benchmark.plan import DEFAULT_HELD_OUT

    p = subparsers.add_parser(
        "adaptation", help="Teach a base that never saw some findings each one from N examples, with every text "
        "method; judge what it learned and what it forgot.",
        description="Pretrain (or reuse, --base) a phantom text-to-image model without the held-out findings, adapt "
        "it to each from N = 5, 25, 100 examples with every text method under one time budget per run, and judge "
        "the results. Writes OUT/results.json, OUT/report.html and OUT/table.md; finished runs are reused.")
    p.add_argument("--out", default="benchmark_out/adaptation",
                   help="output folder (default: benchmark_out/adaptation)")
    p.add_argument("--base", type=Path, default=None,
                   help="reuse a base: a pipeline folder or a pretrain_text_model output that never saw the findings")
    p.add_argument("--judge", type=Path, default=None,
                   help="reuse a trained phantom judge that knows every finding (e.g. the demo's OUT/classifier)")
    p.add_argument("--base-minutes", type=float, default=None,
                   help="training minutes of the base, split like the default (2.5 autoencoder, 1 report reader, 10 "
                   "text-to-image)")
    p.add_argument("--base-layers-per-block", type=int, default=None, metavar="K",
                   help="ResNet blocks per level of the base's U-Net (default 2, the README table's; the demo's "
                   "text model has 1)")
    p.add_argument("--quick", action="store_true", help="N = 100 and six methods (every family), ~12 min with a base")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, every stage in a few minutes (tests)")
    p.add_argument("--findings", nargs="+", default=None, metavar="FINDING",
                   help=f"held-out findings (default: {', '.join(DEFAULT_HELD_OUT)})")
    p.add_argument("--adapt", nargs="+", default=None, metavar="FINDING",
                   help="adapt to only these of the held-out findings (default: each); the base still never "
                   "sees any of --findings, and a later call without --adapt reuses these runs and adds the others")
    p.add_argument("--n", nargs="+", type=int, default=None, metavar="N",
                   help="training images per run (default: 5 25 100)")
    p.add_argument("--methods", nargs="+", default=None, metavar="ID", help=f"method ids: {', '.join(METHODS)}")
    p.add_argument("--learning-rate", nargs="+", default=None, metavar="ID=RATE",
                   help="train these methods at another learning rate (e.g. full_unet_te=1e-3); each such run is "
                   "its own row, id ID_lrRATE")
    p.add_argument("--run-minutes", type=float, default=None, help="training budget of every run (default: 0.5)")
    p.add_argument("--run-steps", type=int, default=None,
                   help="train every run for exactly this many steps instead of a time budget (numbers that do not "
                   "depend on the machine's load)")
    p.add_argument("--rehearsal-images", type=int, default=None, metavar="K",
                   help="base-finding images the rehearsal settings add to the N examples (default: 100)")
    p.add_argument("--example-share", type=float, default=None, metavar="S",
                   help="rehearsal settings: repeat the N examples so they make about this share of the training "
                   "images, e.g. 0.33 (default: each once)")
    p.add_argument("--masked-loss-weight", type=float, default=None, metavar="W",
                   help="adaptation runs count the loss 1 + W inside the findings' masks and the heart's region "
                   "(training.masked_loss_weight); default 0, the plain loss")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on shared cores more threads were slower; try 2 on a quiet "
                   "machine)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and sampling")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from medsd.benchmark.plan import AdaptationPlan
    from medsd.benchmark.stages import run_adaptation_benchmark
    from medsd.errors import MedsdError

    if args.rehearsal_images is not None and args.rehearsal_images < 1:
        raise MedsdError(f"--rehearsal-images {args.rehearsal_images}: give one or more images (default 100)")
    if args.example_share is not None and not 0 < args.example_share < 1:
        raise MedsdError(f"--example-share {args.example_share}: give a share between 0 and 1, e.g. 0.33")
    if args.base_layers_per_block is not None and args.base_layers_per_block < 1:
        raise MedsdError(f"--base-layers-per-block {args.base_layers_per_block}: give 1 or more (default 2)")
    if args.masked_loss_weight is not None and args.masked_loss_weight < 0:
        raise MedsdError(f"--masked-loss-weight {args.masked_loss_weight}: give 0 or more, e.g. 4 (default 0)")
    torch.set_num_threads(max(1, args.threads))
    plan = AdaptationPlan.smoke() if args.smoke else AdaptationPlan.quick() if args.quick else AdaptationPlan()
    plan = plan.with_options(held_out=tuple(args.findings) if args.findings else None,
                             adapt=tuple(args.adapt) if args.adapt else None,
                             n_examples=tuple(args.n) if args.n else None,
                             methods=tuple(args.methods) if args.methods else None, run_minutes=args.run_minutes,
                             learning_rates=_learning_rates(args.learning_rate),
                             rehearsal_images=args.rehearsal_images, example_share=args.example_share,
                             masked_loss_weight=args.masked_loss_weight)
    if args.base_minutes:
        plan = plan.with_base_minutes(args.base_minutes)
    if args.base_layers_per_block is not None:
        plan = replace(plan, base=replace(plan.base, unet_config={"layers_per_block": args.base_layers_per_block}))
    if args.run_steps:
        plan = replace(plan, run_minutes=None, max_steps=args.run_steps)
    summary = run_adaptation_benchmark(Path(args.out), plan, base=args.base, judge=args.judge, seed=args.seed)
    print(Path(summary["table"]).read_text())
    print(f"report: {summary['report']}\nresults: {summary['results']}\nstage seconds: {summary['seconds']}")
    return 0


def _learning_rates(pairs: list[str] | None) -> tuple[tuple[str, float], ...] | None:
    """`ID=RATE` arguments as (id, rate) pairs; a malformed one is one clear error."""
    from medsd.errors import MedsdError

    if not pairs:
        return None
    parsed = []
    for pair in pairs:
        method, _, rate = pair.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = float("nan")
        if not method or not value > 0:
            raise MedsdError(f"--learning-rate {pair!r}: write ID=RATE with a positive rate, e.g. full_unet_te=1e-3")
        parsed.append((method, value))
    return tuple(parsed)
