"""Take the README's screenshot of the page: serve `medsd ui` over a runs folder, generate from a prompt in
Chromium (Playwright) and save the page as a PNG.

    python -m medsd.ui.screenshot --runs demo_out/runs --prompt "Cardiomegaly" --out docs/images/ui.png

Needs the test extra (playwright) and Debian's chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from medsd.errors import MedsdError

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def take_screenshot(runs: str, prompt: str, out: str | Path, models: list[str] = (), images: int = 8,
                    steps: int = 25, chromium: str = "/usr/bin/chromium", work: str = "ui_screenshot_out") -> Path:
    """Serve the page on a free port, generate `images` images of `prompt`, save the page to `out`."""
    from playwright.sync_api import sync_playwright

    from medsd.ui.cli import build_server
    from medsd.ui.server import go_offline, launch

    if not Path(chromium).is_file():
        raise MedsdError(f"chromium not found at {chromium}; install it with `apt-get install -y chromium`")
    go_offline()
    server = build_server(list(models), runs, out=work, device="cpu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = launch(server["app"], port=port, allowed_paths=server["allowed_paths"], css=server["css"])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.fill("#prompt textarea", prompt)
            for elem_id, value in (("num-images", images), ("steps", steps)):
                field = page.locator(f"#{elem_id} input[type=number]").first
                field.fill(str(value))
                field.press("Enter")
            page.click("#generate")
            page.wait_for_function(f"document.querySelectorAll('#gen-gallery img').length === {images}")
            page.wait_for_timeout(1000)  # let the score bars finish their transition
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=False)
            browser.close()
    finally:
        server["app"].close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="demo_out/runs")
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--prompt", default="Cardiomegaly")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", default="docs/images/ui.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--work", default="ui_screenshot_out", help="where the generated images are written")
    args = parser.parse_args()
    try:
        path = take_screenshot(args.runs, args.prompt, args.out, args.model, args.images, args.steps, args.chromium,
                               args.work)
    except MedsdError as err:
        raise SystemExit(f"screenshot: error: {err}") from None
    print(f"screenshot: {path}")


if __name__ == "__main__":
    main()
