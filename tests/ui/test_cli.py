"""`medsd ui` on the command line: registration, the missing-gradio message, --auth, serving behind a login."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from medsd.cli import build_parser, main
from medsd.errors import MedsdError
from medsd.ui import server as S


@pytest.fixture
def restore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`medsd ui` sets gradio's offline variables; put them back after the test."""
    for key in S.OFFLINE_ENV:
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)


def test_ui_is_a_stage_with_localhost_defaults() -> None:
    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.runs, args.auth) == ("127.0.0.1", 7860, "demo_out/runs", None)
    assert "ui" in build_parser().format_help()


def test_without_gradio_it_says_how_to_install(monkeypatch, capsys, restore_env, tiny_model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    assert main(["ui", "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'medsd[ui]'" in err


def test_missing_runs_folder_is_one_line(capsys, restore_env, tmp_path: Path) -> None:
    assert main(["ui", "--runs", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "medsd demo" in err


def test_parse_auth(tmp_path: Path) -> None:
    assert S.parse_auth(None) is None
    assert S.parse_auth("ana:s3cret:x") == [("ana", "s3cret:x")]
    users = tmp_path / "users.txt"
    users.write_text("# readers\nana:one\n\nbo:two\n")
    assert S.parse_auth(str(users)) == [("ana", "one"), ("bo", "two")]
    for bad in ("nopassword", ":x", "user:"):
        with pytest.raises(MedsdError, match="user:password"):
            S.parse_auth(bad)
    users.write_text("# nobody\n")
    with pytest.raises(MedsdError, match="no user:password"):
        S.parse_auth(str(users))


def test_login_is_required_with_auth(restore_env, tiny_model_dir: Path, tmp_path: Path) -> None:
    import httpx

    from medsd.ui.catalog import build_catalog
    from medsd.ui.service import GenerationService

    S.go_offline()
    from medsd.ui.app import build_app

    app = build_app(GenerationService(build_catalog([str(tiny_model_dir)], None), tmp_path))
    url = S.launch(app, port=_free_port(), auth=[("ana", "s3cret")])
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("config").status_code == 401
            assert http.post("login", data={"username": "ana", "password": "wrong"}).status_code == 400
            assert http.post("login", data={"username": "ana", "password": "s3cret"}).status_code == 200
            assert http.get("config").status_code == 200  # the login cookie is kept by the client
    finally:
        app.close()


def test_a_busy_port_is_one_clear_error(restore_env, tiny_model_dir: Path, tmp_path: Path) -> None:
    import socket

    from medsd.ui.app import build_app
    from medsd.ui.catalog import build_catalog
    from medsd.ui.service import GenerationService

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        app = build_app(GenerationService(build_catalog([str(tiny_model_dir)], None), tmp_path))
        with pytest.raises(MedsdError, match="--port"):
            S.launch(app, port=sock.getsockname()[1])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
