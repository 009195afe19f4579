"""Authentication everywhere but /healthz, /login and static files; CSRF; cookies; token storage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dashboard.secrets import dashboard_token, secret_key, token_path
from stapipe_settings import Settings

from .conftest import TOKEN, csrf_of, login

PUBLIC = {"health.healthz", "auth.login", "static"}


def concrete_routes(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) for every route, ids filled with 1."""
    out = []
    for rule in app.url_map.iter_rules():
        url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "x.css" if m.group(1) == "filename" else "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((rule.endpoint, method, url))
    return out


def test_every_route_but_the_public_ones_requires_login(client: FlaskClient, app: Flask) -> None:
    checked = 0
    for endpoint, method, url in concrete_routes(app):
        if endpoint in PUBLIC:
            continue
        response = client.open(url, method=method)
        if url.startswith("/api/"):
            assert response.status_code == 401, (method, url)
            assert response.json["error"] == "Unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            assert response.status_code == 302, (method, url)
            assert response.headers["Location"].startswith("/login?next=")
        checked += 1
    assert checked >= 20


def test_unknown_urls_also_require_login(client: FlaskClient) -> None:
    assert client.get("/api/v1/nothing").status_code == 401
    assert client.get("/nothing").status_code == 302


def test_public_routes(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok", "database": "ok"}
    page = client.get("/login")
    assert page.status_code == 200
    assert b'name="password"' in page.data
    css = client.get("/static/style.css")
    assert css.status_code == 200
    assert client.get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
    assert client.get("/static/vendor/uplot/LICENSE").status_code == 200


def test_login_with_the_right_password_then_logout(client: FlaskClient) -> None:
    response = login(client)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf_of(client)}).status_code == 302
    assert client.get("/").status_code == 302


def test_wrong_password_is_refused(client: FlaskClient) -> None:
    response = login(client, "nope")
    assert response.status_code == 401
    assert b"Wrong password or token." in response.data
    assert client.get("/").status_code == 302


def test_failed_logins_are_throttled(client: FlaskClient) -> None:
    from dashboard import auth

    for _ in range(auth.FAILED_LOGIN_LIMIT):
        assert login(client, "nope").status_code == 401
    assert login(client, "nope").status_code == 429
    assert login(client).status_code == 429  # even the right one, for a minute


def test_login_form_needs_its_csrf_token(client: FlaskClient) -> None:
    client.get("/login")
    response = client.post("/login", data={"password": TOKEN})
    assert response.status_code == 400
    assert b"session expired" in response.data
    assert client.get("/").status_code == 302


def test_login_redirects_only_to_local_paths(client: FlaskClient) -> None:
    for target, expected in [("/pipelines/new", "/pipelines/new"), ("https://evil.example/", "/"),
                             ("//evil.example/", "/"), ("/\\evil.example", "/")]:
        client.get("/login")
        r = client.post("/login", data={"password": TOKEN, "csrf_token": csrf_of(client), "next": target})
        assert r.headers["Location"] == expected, target
        client.post("/logout", data={"csrf_token": csrf_of(client)})


def test_session_cookie_flags(client: FlaskClient) -> None:
    response = login(client)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("stapipe_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_secure_cookies_when_configured(settings: Settings) -> None:
    from dashboard.app import create_app

    app = create_app(settings.model_copy(update={"secure_cookies": True}), testing=True)
    client = app.test_client()
    response = login(client)
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    ("url", "data"),
    [("/pipelines/new", {"name": "x"}), ("/pipelines/1/cancel", {}), ("/stages/1/rerun", {}), ("/logout", {})],
)
def test_forms_without_or_with_a_wrong_csrf_token_are_rejected(browser_client: FlaskClient, url: str, data: dict) -> None:
    for token in (None, "wrong"):
        payload = dict(data, **({"csrf_token": token} if token else {}))
        response = browser_client.post(url, data=payload)
        assert response.status_code == 400, (url, token)
        assert b"security token is missing or wrong" in response.data
    assert browser_client.get("/").status_code == 200  # still logged in


def test_api_calls_with_the_session_cookie_need_the_csrf_header(browser_client: FlaskClient) -> None:
    body = {"name": "x", "dataset_root": "ave-synth", "preset": "tiny"}
    refused = browser_client.post("/api/v1/pipelines", json=body)
    assert refused.status_code == 400
    assert refused.json["error"] == "Bad Request"
    ok = browser_client.post("/api/v1/pipelines", json=body, headers={"X-CSRF-Token": csrf_of(browser_client)})
    assert ok.status_code == 201
    assert browser_client.get("/api/v1/pipelines").status_code == 200  # reads need no token


def test_bearer_token(client: FlaskClient) -> None:
    assert client.get("/api/v1/pipelines", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    wrong = client.get("/api/v1/pipelines", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json["message"] == "invalid API token"
    assert client.get("/api/v1/pipelines", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/healthz", headers={"Authorization": "Bearer stale"}).status_code == 200


def test_changing_the_password_logs_browsers_out(settings: Settings, client: FlaskClient) -> None:
    from dashboard.app import create_app

    login(client)
    cookie = client.get_cookie("stapipe_session")
    other = create_app(settings.model_copy(update={"dashboard_password": "changed"}), testing=True).test_client()
    other.set_cookie("stapipe_session", cookie.value)
    assert other.get("/").status_code == 302


def test_security_headers(browser_client: FlaskClient) -> None:
    r = browser_client.get("/")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"


def test_generated_token_and_secret_key_are_persisted_and_shared(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "h")
    token, created = dashboard_token(s)
    assert created and len(token) >= 24
    assert dashboard_token(s) == (token, False)  # a second process reads the same one
    assert token_path(s).stat().st_mode & 0o777 == 0o600
    assert secret_key(s) == secret_key(s)
    assert dashboard_token(Settings(home=tmp_path / "h", dashboard_password="pw")) == ("pw", False)
    assert dashboard_token(Settings(home=tmp_path / "other"), create=False) == (None, False)


def test_the_embedded_default_prints_its_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dashboard.app import create_app

    s = Settings(home=tmp_path / "h")
    app = create_app(s)
    out = capsys.readouterr().out
    token = app.extensions["stapipe"]["token"]
    assert f"login token (generated in {token_path(s)}): {token}" in out
    create_app(s)
    assert f"login token (stored in {token_path(s)}): {token}" in capsys.readouterr().out
