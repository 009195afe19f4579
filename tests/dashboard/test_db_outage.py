"""The dashboard during a database outage: 503 with a clear message, never a 500 (issue #14)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from stapipe_settings import Settings
from tests.conftest import PG_ADMIN_URL, fresh_pg_database, require_servers

from .conftest import TOKEN, login
from .test_auth_shared import dashboards  # noqa: F401  (gunicorn processes)

pytestmark = pytest.mark.postgres


@pytest.fixture
def outage_app(tmp_path: Path, sent) -> Iterator[tuple[Flask, str]]:  # noqa: ANN001
    require_servers(postgres=True)
    from dashboard.app import create_app
    from db.migrate import upgrade

    with fresh_pg_database("stapipe_outage") as url:
        upgrade(url)
        home = tmp_path / "home"
        (home / "data" / "ave-synth").mkdir(parents=True)
        app = create_app(Settings(home=home, database_url=url, dashboard_password=TOKEN, secret_key="s" * 64),
                         testing=True)
        try:
            yield app, url
        finally:
            app.extensions["stapipe_engine"].dispose()


def _set_allow(url: str, allow: bool) -> None:
    db = make_url(url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS {str(allow).lower()}'))
        if not allow:
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": db})
    admin.dispose()


def test_outage_answers_503_and_recovers(outage_app: tuple[Flask, str]) -> None:
    app, url = outage_app
    api = app.test_client()
    api.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    page = app.test_client()
    assert login(page).status_code == 302
    assert api.get("/api/v1/pipelines").status_code == 200
    _set_allow(url, False)
    try:
        for path in ("/api/v1/pipelines", "/api/v1/pipelines/1", "/api/v1/stages/1/metrics"):
            r = api.get(path)
            assert r.status_code == 503, (path, r.status_code, r.data[:200])
            assert r.headers["Retry-After"] == "5"
            assert r.get_json()["message"].startswith("The database is not reachable right now")
        r = api.post("/api/v1/pipelines", json={"name": "x", "dataset_root": "ave-synth", "preset": "tiny"})
        assert r.status_code == 503
        r = page.get("/")
        assert r.status_code == 503 and b"The database is not reachable right now" in r.data
        assert api.get("/healthz").status_code == 503
    finally:
        _set_allow(url, True)
    assert api.get("/api/v1/pipelines").status_code == 200  # pool_pre_ping: back without a restart


def test_outage_page_in_a_real_browser(dashboards, artifacts_dir: Path) -> None:  # noqa: ANN001, F811
    """What a person sees while the database is down: gunicorn on PostgreSQL, Chromium."""
    from playwright.sync_api import sync_playwright

    from .browser_stack import CHROMIUM, CHROMIUM_ARGS

    with fresh_pg_database("stapipe_outage") as url:
        from db.migrate import upgrade

        upgrade(url)
        base = dashboards("pg", STAPIPE_DATABASE_URL=url)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 600})
                page.goto(f"{base}/login")
                page.fill("input[name=password]", TOKEN)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/")
                _set_allow(url, False)
                try:
                    response = page.goto(f"{base}/")
                    assert response is not None and response.status == 503
                    assert "The database is not reachable right now" in page.inner_text("body")
                    page.screenshot(path=str(artifacts_dir / "db-outage-503.png"), full_page=True)
                finally:
                    _set_allow(url, True)
                assert page.goto(f"{base}/").status == 200
            finally:
                browser.close()
