"""The dashboard in a real browser against real processes: gunicorn serving ``dashboard.wsgi``,
a real ``stapipe worker`` (embedded filesystem broker, SQLite) running a ``tiny`` pipeline on the
synthetic dataset, and Debian's Chromium driven by Playwright.

Log in, submit, watch the loss chart gain points while a stage trains (without a reload, keeping
the zoom), see the stage that the test-only fault hook (``STAPIPE_FAULTS``) breaks fail, re-run it
from its page and see it succeed. Screenshots go to the ``artifacts_dir`` fixture.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .browser_stack import CHROMIUM, CHROMIUM_ARGS, dashboard_and_worker, wait_for, wait_js
from .conftest import TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.slow]
FAILING_STAGE = "train_st_coarse"
WATCHED_STAGE = "train_s_coarse"
WATCHED_EPOCHS = 100  # a tiny epoch on the synthetic set takes ~0.2 s: leave time to watch (and zoom)


@pytest.fixture
def stack(tmp_path: Path, synth_root: Path) -> Iterator[str]:
    """gunicorn + one worker on the embedded defaults; yields the dashboard's base URL."""
    with dashboard_and_worker(tmp_path / "home", synth_root.parent, "e2e@test",
                              STAPIPE_FAULTS=f"{FAILING_STAGE}:1") as base:
        yield base


@pytest.fixture
def page(stack: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (make install puts it there)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def api(stack: str, path: str) -> dict:
    r = requests.get(f"{stack}/api/v1{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def test_submit_watch_fail_rerun_in_a_real_browser(stack: str, page, artifacts_dir: Path,  # type: ignore[no-untyped-def]
                                                   synth_root: Path) -> None:
    shots = artifacts_dir / "dashboard-browser"
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # log in
    page.goto(stack + "/")
    assert page.url.startswith(stack + "/login")
    page.fill("#password", "wrong")
    page.click("button[type=submit]")
    assert page.locator(".flash.error").inner_text() == "Wrong password or token."
    page.screenshot(path=str(shots / "01-login.png"))
    page.fill("#password", TOKEN)
    page.click("button[type=submit]")
    assert page.locator("h1").first.inner_text().startswith("Pipelines")

    # submit a tiny pipeline: a bad value first (error next to the field), then a good one
    with page.expect_navigation(wait_until="load"):  # the preset script must run before the preset changes
        page.click("text=New pipeline >> nth=0")
    page.select_option("#preset", "paper")
    assert page.input_value("select[name='coarse.s.backbone']") == "resnext101_32x8d"  # preset refill
    page.select_option("#preset", "tiny")
    assert page.input_value("select[name='coarse.s.backbone']") == "resnet18"
    page.fill("#name", "browser e2e")
    page.fill("#dataset_root", "../../")
    page.fill("input[name='coarse.s.epochs']", "0")
    page.click("#new-pipeline button[type=submit]")
    assert page.locator(".field-error[data-field='dataset_root']").inner_text() == \
        "the dataset must be a folder inside the data root"
    assert page.locator(".field-error[data-field='coarse.s.epochs']").inner_text() == "must be at least 1"
    page.screenshot(path=str(shots / "02-new-pipeline-errors.png"), full_page=True)
    page.fill("#dataset_root", synth_root.name)
    page.fill("input[name='coarse.s.epochs']", str(WATCHED_EPOCHS))
    page.fill("input[name='coarse.s.input_size']", "64")  # keep the watched epochs short
    for field in ("coarse.sa.epochs", "coarse.st.epochs", "fine.s.epochs", "fine.sa.epochs", "fine.st.epochs",
                  "sta.epochs"):
        page.fill(f"input[name='{field}']", "1")
    page.click("#new-pipeline button[type=submit]")
    assert re.search(r"/pipelines/\d+$", page.url), page.url
    pipeline_id = int(page.url.rsplit("/", 1)[1])
    assert f"Pipeline {pipeline_id} submitted." in page.locator(".flash").first.inner_text()
    assert page.locator("#graph .node").count() == 13
    page.screenshot(path=str(shots / "03-pipeline.png"), full_page=True)
    stages = {s["kind"]: s["id"] for s in api(stack, f"/pipelines/{pipeline_id}")["stages"]}

    # the loss chart gains points while the stage trains, without a reload, keeping the zoom
    page.goto(f"{stack}/stages/{stages[WATCHED_STAGE]}")
    page.evaluate("window.__sameDocument = true")
    points = lambda: int(page.get_attribute("#curves", "data-points") or 0)  # noqa: E731
    wait_js(page, "Number(document.querySelector('#curves').dataset.points || 0) >= 2", 600, "two epochs")
    first = points()
    assert first < WATCHED_EPOCHS, "the stage finished before the test could watch it train"
    over = page.locator("#chart-loss .u-over")
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    zoom = page.evaluate("(() => { const s = window.stapipeCharts['chart-loss'].scales.x; return [s.min, s.max]; })()")
    wait_js(page, f"Number(document.querySelector('#curves').dataset.points) > {first}", 300, "another epoch")
    assert page.evaluate("window.__sameDocument") is True  # updated in place, no reload
    assert points() > first
    kept = page.evaluate("(() => { const s = window.stapipeCharts['chart-loss'].scales.x; return [s.min, s.max]; })()")
    assert kept == zoom, "new points reset the user's zoom"
    assert page.locator("#epoch-table tbody tr").count() == points()
    page.screenshot(path=str(shots / "04-stage-training.png"), full_page=True)
    page.dblclick("#chart-loss .u-over")  # reset zoom

    # the injected fault fails its stage on attempt 1
    wait_for(lambda: api(stack, f"/stages/{stages[FAILING_STAGE]}")["status"] == "failed", 900, "the fault")
    page.goto(f"{stack}/stages/{stages[FAILING_STAGE]}")
    assert page.locator("#stage-status .badge").inner_text() == "failed"
    assert "injected fault" in page.locator("#stage-error").inner_text()
    page.screenshot(path=str(shots / "05-stage-failed.png"), full_page=True)

    # re-run it from its page: the confirmation lists what runs again
    page.click("#rerun-link")
    plan = page.locator("#rerun-plan li").evaluate_all("els => els.map(e => e.dataset.kind)")
    assert plan[:2] == [FAILING_STAGE, "cams_coarse"] and WATCHED_STAGE not in plan and "evaluate" in plan
    page.screenshot(path=str(shots / "06-rerun-confirm.png"), full_page=True)
    page.click("#confirm-rerun")
    assert "Re-running" in page.locator(".flash").first.inner_text()

    # ... and it succeeds: the stage page's badge turns green by itself
    page.goto(f"{stack}/stages/{stages[FAILING_STAGE]}")
    wait_js(page, "document.querySelector('#stage-status .badge').dataset.status === 'succeeded'", 900,
            "the re-run to succeed")
    page.wait_for_selector("#finished-note")
    assert page.locator("#stage-attempts").inner_text() == "2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.locator("#stage-started").inner_text())
    assert page.locator("#stage-duration").inner_text() != "–"  # updated in place, no reload
    page.screenshot(path=str(shots / "07-stage-succeeded.png"), full_page=True)

    # stop the rest of the pipeline from its page
    page.goto(f"{stack}/pipelines/{pipeline_id}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-pipeline")
    assert f"Pipeline {pipeline_id} is being cancelled." in page.locator(".flash").first.inner_text()
    page.screenshot(path=str(shots / "08-pipeline-cancelled.png"), full_page=True)
    assert errors == []
    seconds = [e["seconds"] for e in api(stack, f"/stages/{stages[WATCHED_STAGE]}/metrics")["epochs"]]
    print(f"{WATCHED_STAGE}: {len(seconds)} epochs, {sum(seconds) / len(seconds):.2f} s per epoch")
