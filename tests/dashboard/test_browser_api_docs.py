"""The "API" link opens a readable page: Swagger UI from the app's own static files renders
openapi.yaml in Chromium under the dashboard's Content-Security-Policy (no CDN, no inline script)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from .browser_stack import CHROMIUM, CHROMIUM_ARGS
from .conftest import TOKEN

pytestmark = [pytest.mark.browser]


def test_api_link_opens_swagger_ui(app: Flask, artifacts_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_port}"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(base + "/login")
            page.fill("#password", TOKEN)
            page.click("button[type=submit]")
            page.click(".topbar nav a[href='/api-docs']")
            page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
            assert page.url == base + "/api-docs"
            assert page.locator(".opblock-summary-path", has_text="/api/v1/workers").count() >= 1
            assert page.locator(".opblock-summary-path", has_text="/api/v1/compare").count() >= 1
            shots = artifacts_dir / "dashboard-researcher"
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "09-api-docs.png"))
            assert errors == [] and all(u.startswith(base) or u.startswith("data:") for u in requested), (
                errors, [u for u in requested if not u.startswith(base)])
            browser.close()
    finally:
        srv.shutdown()
        thread.join(5)
