"""The `medsd` command line: one entry point, subcommands grouped by pipeline stage.

Each stage's module adds its own arguments (`register(subparsers)` for groups of subcommands,
`configure(parser)` for a command with its own options); this file only wires them together, sets up
logging and turns a MedsdError (or a file-system error the user can fix) into one line on stderr with exit
code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from medsd import __version__
from medsd.errors import MedsdError, describe_os_error
from medsd.process_exit import finish

log = logging.getLogger("medsd")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

GROUPS: dict[str, str] = {
    "data": "Read, inspect and prepare data sets; render the offline chest X-ray phantom.",
    "model": "Build tiny offline models; inspect models.",
    "train": "Fine-tune or train a model from a YAML recipe (lora, full, ...).",
    "generate": "Generate synthetic images: prompts, label combinations, composable prompts, interpolation, "
    "inpainting.",
    "evaluate": "Measure synthetic images: FID/KID/PRDC, diversity, faithfulness, augmentation AUC, "
    "memorization, report.",
    "demo": "Run the whole pipeline offline on the phantom with a tiny model (the README's main job).",
    "env": "Print Python, torch (device), diffusers, transformers, peft and accelerate versions; warn when the "
    "installed set differs from the tested lock.",
    "ui": "Serve a web page for generating and inspecting images (needs the ui extra: gradio).",
    "benchmark": "Measure methods where the truth is known (adaptation: which method teaches a new finding).",
}

# Where each stage's CLI lives: (module, function) — "register" adds subcommands to a group,
# "configure" adds options to a single command.
STAGES: dict[str, tuple[str, str]] = {
    "data": ("medsd.data.cli", "register"),
    "model": ("medsd.model_cli", "register"),
    "train": ("medsd.train.cli", "configure"),
    "generate": ("medsd.generate.cli", "configure"),
    "evaluate": ("medsd.evaluate.cli", "register"),
    "demo": ("medsd.demo", "configure"),
    "env": ("medsd.env", "configure"),
    "ui": ("medsd.ui.cli", "configure"),
    "benchmark": ("medsd.benchmark.cli", "register"),
}


def _attach(stage: str, parser: argparse.ArgumentParser) -> None:
    module_name, function = STAGES[stage]
    module = importlib.import_module(module_name)
    if function == "register":
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        getattr(module, function)(sub)
        parser.set_defaults(func=lambda args: _print_help(parser))
    else:
        getattr(module, function)(parser)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def requested_stage(argv: Sequence[str]) -> str | None:
    """The stage a command line names (the first word that is one), or None (`medsd --help`, a typo)."""
    return next((word for word in argv if word in GROUPS), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `medsd` argument parser: every stage listed, and attached (its module imported, its options added)
    only when `argv` names it; with `argv` None, every stage attached.

    Attaching a stage imports its command-line module, and some pull in torch and diffusers: attached all at
    once, `medsd --help` took 5.5 s, and every command paid for the imports of the others.
    """
    wanted = None if argv is None else requested_stage(argv)
    parser = argparse.ArgumentParser(
        prog="medsd",
        description="Medical Stable Diffusion: adapt pretrained latent diffusion models to medical images, "
        "generate synthetic images and measure them.",
    )
    parser.add_argument("--version", action="version", version=f"medsd {__version__}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    noise.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    groups = parser.add_subparsers(title="stages", dest="stage", metavar="STAGE")
    for stage, help_text in GROUPS.items():
        stage_parser = groups.add_parser(stage, help=help_text, description=help_text)
        if argv is None or stage == wanted:
            _attach(stage, stage_parser)
    return parser


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log to stderr; --verbose shows debug, --quiet only warnings; third-party chatter stays at warning."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    for noisy in ("diffusers", "transformers", "accelerate", "PIL", "matplotlib", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line as a function (tests and tools call it): returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedsdError as err:
        return _report(err, str(err), args.verbose)
    except OSError as err:
        # A file-system problem the user can fix (permissions, full disk, a file in the way) that no check
        # caught earlier: name the path; any other OSError is a bug and keeps its traceback.
        message = describe_os_error(err)
        if message is None:
            raise
        return _report(err, message, args.verbose)
    except KeyboardInterrupt:
        print("medsd: interrupted", file=sys.stderr)
        return 130


def _report(err: BaseException, message: str, verbose: bool) -> int:
    """Print the user's error: one line per problem, each prefixed; the traceback only with --verbose."""
    if verbose:
        log.debug("details", exc_info=err)
    for line in message.splitlines() or [type(err).__name__]:
        print(f"medsd: error: {line}", file=sys.stderr)
    return 2


def run() -> NoReturn:
    """The `medsd` console script and `python -m medsd`: `main`, then the process ends without the
    interpreter's teardown (`medsd.process_exit`), which would add over a second to every command."""
    try:
        code = main()
    except SystemExit as stop:  # argparse's --help, --version and usage errors
        if not isinstance(stop.code, int | None):
            raise  # a message to print: the interpreter's own exit prints it
        code = stop.code or 0
    finish(code)


if __name__ == "__main__":
    run()
