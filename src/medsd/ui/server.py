"""Serving the page: offline, on localhost unless asked otherwise, optionally behind a password.

Offline means the page itself reaches nothing outside the machine: gradio's analytics and version check are
off, no share link, no server-side rendering (it would need Node), no PWA manifest, no run history (it can
sync to the Hub), and the default theme's fonts are gradio's bundled files, not a font CDN. (Loading a model
by Hugging Face id still follows the usual HF_HUB_OFFLINE setting, as `medsd generate` does.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medsd.errors import MedsdError

log = logging.getLogger(__name__)

# Set before gradio is imported: these are read at import time as well as at launch.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GRADIO_SHARE": "False",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
    "GRADIO_RUN_HISTORY": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def go_offline() -> None:
    """Turn off everything in gradio that would reach the internet."""
    os.environ.update(OFFLINE_ENV)


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """`user:pass`, or a file with one `user:pass` per line (blank lines and #comments skipped)."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        entries, source = [line for line in lines if line and not line.startswith("#")], f"--auth file {value}"
    else:
        entries, source = [value], "--auth"
    pairs = []
    for entry in entries:
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise MedsdError(f"{source} needs user:password (or a file of user:password lines); got {entry[:40]!r}")
        pairs.append((user, password))
    if not pairs:
        raise MedsdError(f"{source} holds no user:password line")
    return pairs


def launch(app, host: str = "127.0.0.1", port: int = 7860, auth: list[tuple[str, str]] | None = None,
           allowed_paths: list[str] = (), css: str | None = None, quiet: bool = True) -> str:
    """Serve `app` from a background thread; returns the local URL (`app.block_thread()` waits on it)."""
    import gradio as gr

    if host not in ("127.0.0.1", "localhost", "::1") and not auth:
        log.warning("serving on %s without --auth: anyone who can reach this port can generate images", host)
    app.queue(default_concurrency_limit=1)
    try:
        _, url, _ = app.launch(
            server_name=host, server_port=port, auth=auth, share=False, inbrowser=False, show_error=False,
            prevent_thread_lock=True, quiet=quiet, ssr_mode=False, pwa=False, mcp_server=False, run_history=False,
            enable_monitoring=False, footer_links=["api", "settings"], allowed_paths=list(allowed_paths),
            theme=gr.themes.Default(), css=css, auth_message="medsd: sign in with the user and password of --auth",
        )
    except OSError as err:
        raise MedsdError(f"cannot serve on {host}:{port} ({err}); pick a free port with --port N") from None
    return url
