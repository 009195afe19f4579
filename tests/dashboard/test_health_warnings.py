"""Health warnings of a training stage (#18): produced by the real trainer, stored in the stage's
summary the way the worker stores it, returned by the API, shown on the stage and pipeline pages
(screenshots in Chromium, the pages served by the Flask test client) and by ``stapipe run``'s follow.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from sta_models.config import TrainConfig
from sta_models.scratch import RECIPE
from sta_models.training import train_branch
from stapipe_settings import Settings
from tests.models.conftest import make_row, write_features
from worker.follow import follow
from worker.stages import _jsonable

from .conftest import make_pipeline, stage_of

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def three_class_features(feat: Path) -> dict[str, list]:
    """Six 3-s feature files in ``feat``, two per class: one train and one val row each."""
    feat.mkdir(parents=True)
    rows: dict[str, list] = {"train": [], "val": []}
    for c in range(3):
        for j in range(2):
            write_features(feat / f"v{c}{j}.h5", c, seconds=3, seed=10 * c + j)
            rows["val" if j else "train"].append(make_row(f"v{c}{j}", c, 0, 3))
    return rows


@pytest.fixture(scope="module")
def at_chance_summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real SA record: random init (so the from-scratch recipe), 1 epoch at a tiny lr → at chance."""
    root = tmp_path_factory.mktemp("sa")
    feat = root / "features"
    rows = three_class_features(feat)
    cfg = TrainConfig(backbone="resnet18", input_size=32, epochs=1, batch_size=9, lr=1e-4, workers=0,
                      device="cpu")
    result = train_branch("sa", rows, feat, root / "out", cfg, use_cache=False)
    summary = _jsonable(result.record)  # what a branch training's body (worker.stages) stores
    summary.pop("history", None)
    return summary


def test_warnings_in_the_api_pages_and_follow(at_chance_summary: dict, browser_client: FlaskClient,
                                              session: Session, settings: Settings, artifacts_dir: Path) -> None:
    api = browser_client  # GETs with the session cookie
    codes = [w["code"] for w in at_chance_summary["warnings"]]
    assert "at_chance" in codes and at_chance_summary["recipe"]["name"] == RECIPE.name
    p = make_pipeline(session, settings, statuses={"train_s_coarse": "succeeded", "train_sa_coarse": "succeeded"})
    stage = stage_of(p, "train_sa_coarse")
    stage.summary = at_chance_summary
    p.status = "succeeded"
    session.commit()

    body = api.get(f"/api/v1/stages/{stage.id}").get_json()
    assert [w["code"] for w in body["warnings"]] == codes
    assert api.get(f"/api/v1/stages/{stage_of(p, 'train_s_coarse').id}").get_json()["warnings"] == []

    stage_html = browser_client.get(f"/stages/{stage.id}").get_data(as_text=True)
    assert 'id="stage-warnings"' in stage_html and "below 1.5× chance" in stage_html
    assert 'id="stage-recipe"' in stage_html and RECIPE.name in stage_html and "audio, backbone from random init" in stage_html
    assert "BatchNorm statistics recomputed before each validation" in stage_html
    pipe_html = browser_client.get(f"/pipelines/{p.id}").get_data(as_text=True)
    assert 'id="pipeline-warnings"' in pipe_html and 'data-kind="train_sa_coarse" data-code="at_chance"' in pipe_html

    list_html = browser_client.get("/").get_data(as_text=True)
    assert "data-warning>train_sa_coarse: " in list_html and "below 1.5× chance" in list_html

    out = io.StringIO()
    assert follow(settings.db_url, p.id, out, timeout=5) == "succeeded"
    text = out.getvalue()
    assert "WARNING SA: best val top-1" in text and "health warnings, see above" in text

    _screenshots(browser_client, [f"/stages/{stage.id}", f"/pipelines/{p.id}", "/"],
                 artifacts_dir / "health-warnings")


def _screenshots(client: FlaskClient, paths: list[str], out: Path,
                 wait_for: str = ".flash.warning, [data-warning]") -> None:
    """Render pages in Chromium; every request (CSS, JS, API polls) is answered by the test client."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (make install puts it there)")
    from playwright.sync_api import sync_playwright

    def serve(route) -> None:  # type: ignore[no-untyped-def]
        url = urlsplit(route.request.url)
        r = client.open(url.path + (f"?{url.query}" if url.query else ""), method=route.request.method,
                        headers={"X-CSRF-Token": "x"})
        route.fulfill(status=r.status_code, body=r.get_data(), headers={"content-type": r.content_type or "text/html"})

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("http://dash.test/**", serve)
            for i, path in enumerate(paths):
                page.goto(f"http://dash.test{path}")
                page.wait_for_selector(wait_for)
                page.screenshot(path=str(out / f"{i + 1:02d}-{path.strip('/').replace('/', '-')}.png"), full_page=True)
        finally:
            browser.close()
