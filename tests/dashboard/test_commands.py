"""``stapipe submit / status / rerun / cancel`` against a real HTTP server running the app."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from stapipe_settings import Settings
from worker.cli import main

from .conftest import TOKEN, make_pipeline, stage_of
from .test_disk import write_dataset


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(5)


def run(server: str, *argv: str, token: str = TOKEN) -> int:
    return main([argv[0], "--url", server, "--token", token, *argv[1:]])


def test_submit_status_cancel(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "submit", "--dataset", "ave-synth", "--preset", "tiny", "--set", "coarse.*.epochs=1",
               "--set", "sta.decay_epochs=[2]") == 0
    out = capsys.readouterr().out
    assert "submitted pipeline 1 (ave-synth, preset tiny)" in out
    assert f"{server}/pipelines/1" in out
    assert run(server, "status") == 0
    assert "    1  running     0/13" in capsys.readouterr().out
    assert run(server, "status", "1") == 0
    out = capsys.readouterr().out
    assert "extract          queued" in out and "evaluate         pending" in out
    assert run(server, "cancel", "1") == 0
    assert "pipeline 1 is cancelled" in capsys.readouterr().out
    assert run(server, "cancel", "1") == 1
    assert "HTTP 409: pipeline 1 already finished (cancelled)" in capsys.readouterr().err


def test_submit_with_an_absolute_dataset_path(server: str, settings: Settings, capsys) -> None:  # type: ignore[no-untyped-def]
    assert run(server, "submit", "--dataset", str(settings.data_dir / "ave-synth"), "--name", "abs") == 0
    assert "submitted pipeline 1 (abs" in capsys.readouterr().out


def test_submit_reports_field_errors(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "submit", "--dataset", "../../etc", "--set", "coarse.s.epochs=0") == 1
    err = capsys.readouterr().err
    assert "HTTP 422" in err
    assert "dataset_root: the dataset must be a folder inside the data root" in err or "dataset_root: no such" in err
    assert "coarse.s.epochs: must be at least 1" in err
    assert run(server, "submit", "--dataset", "x", "--set", "nonsense") == 2


def test_rerun(server: str, session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_s_coarse": "failed"})
    sid = stage_of(p, "train_s_coarse").id
    assert run(server, "rerun", str(sid)) == 2  # no terminal (pytest's stdin): nobody can confirm
    assert "not a terminal, so nobody can confirm; add --yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda _prompt: "n")
    assert run(server, "rerun", str(sid)) == 1
    assert "these stages will run again: train_s_coarse, cams_coarse" in capsys.readouterr().out
    assert run(server, "rerun", str(sid), "--yes") == 0
    assert "re-running 10 stage(s)" in capsys.readouterr().out
    assert run(server, "rerun", str(sid), "--yes") == 1
    assert "only failed or cancelled" in capsys.readouterr().err


def test_wrong_token_and_unreachable_server(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "status", token="bad") == 1
    err = capsys.readouterr().err
    assert "HTTP 401: invalid API token" in err and "token from --token" in err
    assert run("http://127.0.0.1:9", "status") == 1
    err = capsys.readouterr().err
    assert "cannot reach the dashboard" in err and "dashboard URL http://127.0.0.1:9 from --url" in err


def test_the_cli_finds_the_dashboard_where_stapipe_up_wrote_it(server: str, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from stapipe_settings import Settings, get_settings
    from worker.embedded import url_path, write_url

    monkeypatch.setenv("STAPIPE_HOME", str(tmp_path / "cli-home"))
    monkeypatch.delenv("STAPIPE_API_URL", raising=False)
    monkeypatch.setenv("STAPIPE_DASHBOARD_PASSWORD", TOKEN)
    get_settings.cache_clear()
    try:
        assert main(["status"]) == 1  # nothing written yet: the default URL, and the error says why
        err = capsys.readouterr().err
        assert "from the default (no STAPIPE_API_URL, no " in err and "is `stapipe up` running?" in err
        write_url(Settings(), server)
        assert main(["status"]) == 0
        monkeypatch.setenv("STAPIPE_DASHBOARD_PASSWORD", "wrong")
        get_settings.cache_clear()
        assert main(["status"]) == 1
        assert "token from STAPIPE_DASHBOARD_PASSWORD" in capsys.readouterr().err
        monkeypatch.setenv("STAPIPE_API_URL", "http://127.0.0.1:9")
        get_settings.cache_clear()
        assert main(["status"]) == 1
        assert "from STAPIPE_API_URL" in capsys.readouterr().err
        assert url_path(Settings()).read_text().strip() == server
    finally:
        get_settings.cache_clear()


def test_stapipe_dashboard_serves_and_prints_its_generated_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import contextlib
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")}
    env.update(STAPIPE_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "dashboard", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                    break
            assert time.monotonic() < deadline and proc.poll() is None, "the dashboard did not start"
            time.sleep(0.3)
        token = (tmp_path / "home" / "dashboard_token").read_text().strip()
        r = requests.get(f"http://127.0.0.1:{port}/api/v1/pipelines", headers={"Authorization": f"Bearer {token}"},
                         timeout=5)
        assert r.status_code == 200 and r.json()["total"] == 0  # migrated on start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=10)[0].decode()
    assert f"login token (generated in {tmp_path / 'home' / 'dashboard_token'}): {token}" in out


def test_submit_prints_the_estimate_first(server: str, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(settings)
    assert run(server, "submit", "--dataset", "ave-synth", "--preset", "tiny") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("disk estimate: ") and "for 12 videos (" in out[0] and "largest: train_" in out[0]
    assert out[1].startswith("submitted pipeline 1 ")
