"""Authentication state shared by every dashboard process (issue #14, item 5): real gunicorn
processes on one database; the throttle counts failed logins and failed bearer tokens together,
per client address; logout and a password change revoke sessions on the server."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from stapipe_settings import Settings

from .browser_stack import Processes, free_port
from .conftest import TOKEN, csrf_of, login

LIMIT = 10


@pytest.fixture
def dashboards(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start gunicorn dashboards (one process each) on one SQLite database; returns base URLs."""
    home = tmp_path / "home"
    procs = Processes(home / "test-logs")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")}
    base_env.update(STAPIPE_HOME=str(home), STAPIPE_DASHBOARD_PASSWORD=TOKEN, STAPIPE_SECRET_KEY="k" * 64,
                    PYTHONUNBUFFERED="1")

    def start(name: str, **extra: str) -> str:
        port = free_port()
        procs.start(name, [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                           "dashboard.wsgi:app"], {**base_env, **extra})
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.3)

    try:
        yield start
    finally:
        procs.stop()


def _bearer(base: str, token: str, **headers: str) -> requests.Response:
    return requests.get(f"{base}/api/v1/pipelines", headers={"Authorization": f"Bearer {token}", **headers},
                        timeout=10)


def _login(base: str, password: str, s: requests.Session | None = None) -> requests.Response:
    s = s or requests.Session()
    form = s.get(f"{base}/login", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    return s.post(f"{base}/login", data={"password": password, "csrf_token": csrf}, allow_redirects=False,
                  timeout=10)


def test_failed_tokens_and_logins_share_one_counter_across_processes(dashboards) -> None:  # noqa: ANN001
    a, b = dashboards("a"), dashboards("b")
    for i in range(LIMIT // 2):  # half the guesses on each process, tokens and passwords mixed
        assert _bearer(a, f"guess-{i}").status_code == 401
        assert (_login(b, f"guess-{i}") if i % 2 else _bearer(b, f"guess-b{i}")).status_code == 401
    for base in (a, b):
        r = _bearer(base, "one-more")
        assert r.status_code == 429 and r.headers["Retry-After"] == "60", r.text
        assert "too many failed logins or tokens" in r.json()["message"]
        assert _bearer(base, TOKEN).status_code == 429  # even the right token, for the window
        assert _login(base, TOKEN).status_code == 429


def test_x_forwarded_for_only_from_trusted_proxies(dashboards) -> None:  # noqa: ANN001
    untrusted = dashboards("plain")
    for i in range(LIMIT):  # a client inventing X-Forwarded-For does not get a fresh counter
        assert _bearer(untrusted, f"x{i}", **{"X-Forwarded-For": f"10.9.0.{i}"}).status_code == 401
    assert _bearer(untrusted, "x", **{"X-Forwarded-For": "10.9.9.9"}).status_code == 429

    proxied = dashboards("proxied", STAPIPE_TRUSTED_PROXIES="127.0.0.0/8, ::1")
    for i in range(LIMIT):  # behind the trusted proxy: counted per real client (rightmost hop)
        xff = {"X-Forwarded-For": f"6.6.6.6, 203.0.113.{i % 2}"}  # the left part is client-written
        assert _bearer(proxied, f"y{i}", **xff).status_code == 401
    assert _bearer(proxied, TOKEN, **{"X-Forwarded-For": "6.6.6.6"}).status_code == 200  # not the one counted
    assert _bearer(proxied, "z", **{"X-Forwarded-For": "203.0.113.1"}).status_code == 401  # 6 so far
    assert _bearer(proxied, TOKEN, **{"X-Forwarded-For": "198.51.100.7"}).status_code == 200
    for _ in range(LIMIT):
        _bearer(proxied, "w", **{"X-Forwarded-For": "203.0.113.0"})
    assert _bearer(proxied, TOKEN, **{"X-Forwarded-For": "203.0.113.0"}).status_code == 429
    assert _bearer(proxied, TOKEN, **{"X-Forwarded-For": "198.51.100.7"}).status_code == 200


def test_logout_revokes_a_copied_cookie(dashboards) -> None:  # noqa: ANN001
    a, b = dashboards("a"), dashboards("b")
    s = requests.Session()
    assert _login(a, TOKEN, s).status_code == 302
    cookie = s.cookies.get("stapipe_session")
    thief = requests.Session()
    thief.cookies.set("stapipe_session", cookie)
    assert thief.get(f"{b}/", allow_redirects=False, timeout=10).status_code == 200  # valid on any process
    page = s.get(f"{a}/", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert s.post(f"{a}/logout", data={"csrf_token": csrf}, allow_redirects=False, timeout=10).status_code == 302
    r = thief.get(f"{b}/", allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/login" in r.headers["Location"]  # revoked on the server
    assert thief.get(f"{b}/api/v1/pipelines", timeout=10).status_code == 401


def test_password_change_revokes_sessions(settings: Settings, client: FlaskClient) -> None:
    from sqlalchemy import select

    from dashboard.app import create_app
    from db.models import AuthSession
    from db.session import session_scope

    assert login(client).status_code == 302
    cookie = client.get_cookie("stapipe_session")
    changed = create_app(settings.model_copy(update={"dashboard_password": "changed-password-1"}), testing=True)
    other = changed.test_client()
    other.set_cookie("stapipe_session", cookie.value)
    assert other.get("/").status_code == 302
    assert login(other, "changed-password-1").status_code == 302  # the new login sweeps the old rows
    with session_scope(settings.db_url) as s:
        assert len(s.scalars(select(AuthSession)).all()) == 1
    client.post("/logout", data={"csrf_token": csrf_of(client)})  # old process: nothing left to revoke
    assert other.get("/").status_code == 200
