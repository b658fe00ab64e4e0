"""`medsd ui`: serve the web interface over model folders and a runs folder (the demo's by default).

gradio is an optional dependency (`pip install 'medsd[ui]'`); it is imported only when the command runs,
so `medsd --help` and every other command work without it.
"""

from __future__ import annotations

import argparse
import logging

from medsd.errors import MedsdError

log = logging.getLogger(__name__)

INSTALL_HINT = "the web interface needs gradio; install it with: pip install 'medsd[ui]'"


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `medsd ui`."""
    parser.description = (
        "Serve an interactive web page for generating and inspecting images: prompts (report text, labels, "
        "composable 'w*A AND w*B'), every finding, interpolation healthy -> finding, inpainting with a drawn "
        "mask, the judge's scores beside each image, and the runs' report.html. Offline; localhost by default. "
        "On a remote GPU machine: `ssh -L 7860:127.0.0.1:7860 HOST`, then open http://127.0.0.1:7860."
    )
    parser.add_argument("--model", action="append", default=[], metavar="DIR",
                        help="model folder or Hugging Face id to offer (repeatable; listed first)")
    parser.add_argument("--runs", default="demo_out/runs",
                        help="folder searched for model folders, LoRA / textual-inversion adapters and report.html "
                        "(default: demo_out/runs)")
    parser.add_argument("--judge", metavar="DIR",
                        help="phantom reference classifier folder whose per-finding scores are shown beside each "
                        "image (default: classifier/ beside --runs, when present)")
    parser.add_argument("--no-judge", action="store_true", help="show no judge scores")
    parser.add_argument("--out", default="ui_out", help="where generated images are written (default: ui_out)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; use an SSH tunnel to reach it)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--auth", metavar="USER:PASS|FILE",
                        help="require a login: user:password, or a file with one user:password per line")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=8, help="images per U-Net batch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the catalog, load the judge, serve the page until interrupted."""
    from medsd.ui.server import go_offline, launch, parse_auth

    go_offline()
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise MedsdError(INSTALL_HINT) from None
    server = build_server(args.model, args.runs, judge=None if args.no_judge else (args.judge or "auto"),
                          out=args.out, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    auth = parse_auth(args.auth)
    url = launch(server["app"], host=args.host, port=args.port, auth=auth, allowed_paths=server["allowed_paths"],
                 css=server["css"])
    print(f"medsd ui: serving {url} (Ctrl+C stops it); images are written to {server['service'].out_dir}", flush=True)
    server["app"].block_thread()
    return 0


def build_server(models: list[str], runs: str | None, judge: str | None = "auto", out: str = "ui_out",
                 device: str = "auto", dtype: str = "float32", batch_size: int = 8) -> dict:
    """The app and the paths it may serve; `judge="auto"` takes the demo's classifier beside `runs`."""
    from medsd.ui.app import CSS, build_app
    from medsd.ui.catalog import build_catalog
    from medsd.ui.judge import default_judge_folder, load_judge
    from medsd.ui.service import Choice, GenerationService

    if batch_size < 1:
        raise MedsdError(f"--batch-size must be at least 1, got {batch_size}")
    catalog = build_catalog(models, runs)
    judge_dir = default_judge_folder(runs) if judge == "auto" else judge
    scorer = load_judge(judge_dir) if judge_dir else None
    if scorer is None:
        log.info("no judge: pass --judge DIR (a phantom reference classifier) to see per-finding scores")
    service = GenerationService(catalog, out, scorer, device=device, dtype=dtype, batch_size=batch_size)
    service.out_dir.mkdir(parents=True, exist_ok=True)
    # Load the first model now, so the first click makes images instead of waiting for imports and weights.
    first = catalog.models[0]
    log.info("loading %s", first.name)
    try:
        service.load(Choice(model=first.name))
    except MedsdError as err:
        log.warning("could not load %s (%s); the page will say so if it is picked", first.name, err)
    # Generated images are returned from this folder; the reports are served by exact path, nothing else.
    allowed = [str(service.out_dir), *(str(p) for p in catalog.reports)]
    return {"app": build_app(service), "service": service, "allowed_paths": allowed, "css": CSS}
