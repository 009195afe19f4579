"""The researcher's pages in Chromium against real processes (gunicorn + one ``stapipe worker`` on
the embedded defaults): the workers page, two real pipelines (the second made with "New pipeline
from this one" and an edited STA setting, so it reuses every stage up to the pseudo-GT), the
reused stage pages, the charts, the compare page, and a third identical pipeline whose 13 stages
are all reused. Screenshots go to test-artifacts/dashboard-researcher/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .browser_stack import CHROMIUM, CHROMIUM_ARGS, dashboard_and_worker, wait_for, wait_js
from .conftest import TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.slow]
FAST = {"coarse.s.epochs": 2, "coarse.sa.epochs": 1, "coarse.st.epochs": 1, "fine.s.epochs": 1,
        "fine.sa.epochs": 1, "fine.st.epochs": 1, "sta.epochs": 4,
        **{f"{g}.{b}.input_size": 64 for g in ("coarse", "fine") for b in ("s", "sa", "st")}}


@pytest.fixture
def stack(tmp_path: Path, synth_root: Path) -> Iterator[str]:
    with dashboard_and_worker(tmp_path / "home", synth_root.parent, "researcher@test") as base:
        yield base


def call(stack: str, method: str, path: str, **kw) -> dict:  # type: ignore[no-untyped-def]
    r = requests.request(method, f"{stack}/api/v1{path}", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=20, **kw)
    r.raise_for_status()
    return r.json()


def finished(stack: str, pid: int, timeout: float = 1500) -> dict:
    p = wait_for(lambda: (lambda b: b if b["status"] in ("succeeded", "failed", "cancelled") else None)(
        call(stack, "GET", f"/pipelines/{pid}")), timeout, f"pipeline {pid}", interval=2)
    assert p["status"] == "succeeded", [(s["kind"], s["status"], s["error_summary"]) for s in p["stages"]]
    return p


def test_workers_reuse_charts_compare_clone(stack: str, artifacts_dir: Path, synth_root: Path) -> None:
    from playwright.sync_api import sync_playwright

    shots = artifacts_dir / "dashboard-researcher"
    shots.mkdir(parents=True, exist_ok=True)
    a = call(stack, "POST", "/pipelines", json={"name": "baseline", "dataset_root": synth_root.name,
                                                "preset": "tiny", "overrides": FAST})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(stack + "/login")
        page.fill("#password", TOKEN)
        page.click("button[type=submit]")

        # workers page: the real worker is online with its queues and device
        wait_for(lambda: call(stack, "GET", "/workers")["online"] == 1, 90, "the worker to register")
        page.goto(stack + "/workers")
        row = page.locator("tr[data-worker='researcher@test']")
        assert row.get_attribute("data-online") == "yes"
        assert "cpu, gpu" in row.inner_text() and "cpu (" in row.inner_text()
        assert page.locator("[data-unserved]").count() == 0
        page.screenshot(path=str(shots / "01-workers.png"), full_page=True)

        # progress on the stage page while something trains: "epoch e/n · batch b/m"
        stages_a = {s["kind"]: s for s in call(stack, "GET", f"/pipelines/{a['id']}")["stages"]}
        text = wait_for(lambda: (call(stack, "GET", f"/stages/{stages_a['train_s_coarse']['id']}")["progress"]
                                 ["text"] or ""), 600, "training progress")
        assert text.startswith("epoch ") and " · batch " in text and "/2 · " in text, text
        finished(stack, a["id"])
        # a CAM stage's progress covers its three branches, not just the last one's batches
        for kind in ("cams_coarse", "cams_fine"):
            cams = call(stack, "GET", f"/stages/{stages_a[kind]['id']}")["progress"]["text"] or ""
            assert re.fullmatch(r"(\d+)/\1 CAM batches · branch 3/3 \(s (\d+)/\2, sa (\d+)/\3, st (\d+)/\4\)", cams), cams

        # clone and edit: the form is pre-filled from pipeline A; change the STA learning rate
        page.goto(f"{stack}/pipelines/{a['id']}")
        page.click("#clone-pipeline")
        assert page.input_value("#name") == "baseline (copy)"
        assert page.input_value("input[name='sta.epochs']") == "4"
        assert page.input_value("#dataset_root") == synth_root.name
        page.fill("#name", "lower sta lr")
        lr = float(page.input_value("input[name='sta.lr']"))
        page.fill("input[name='sta.lr']", repr(lr / 4))
        page.screenshot(path=str(shots / "02-clone-form.png"), full_page=True)
        page.click("#new-pipeline button[type=submit]")
        b_id = int(page.url.rsplit("/", 1)[1])
        b = finished(stack, b_id)
        reused = {s["kind"] for s in b["stages"] if s["status"] == "reused"}
        assert reused == {s["kind"] for s in b["stages"]} - {"train_sta", "evaluate"}, reused

        # the pipeline page says "reused" (never "skipped") and links each reused stage to its source
        page.goto(f"{stack}/pipelines/{b_id}")
        assert "skipped" not in page.content()
        assert page.locator("#graph .node.st-reused").count() == 11
        page.screenshot(path=str(shots / "03-pipeline-reused.png"), full_page=True)

        # a reused training stage shows the source's curves, log and artefacts, with a link
        s_b = {s["kind"]: s for s in b["stages"]}
        page.goto(f"{stack}/stages/{s_b['train_s_coarse']['id']}")
        assert page.locator("#reused-note a").get_attribute("href") == f"/stages/{stages_a['train_s_coarse']['id']}"
        wait_js(page, "Number(document.querySelector('#curves').dataset.points || 0) === 2", 20, "the source's curves")
        wait_js(page, "document.querySelector('#log').textContent.includes('epoch 2/2')", 20, "the source's log")
        assert page.locator("#artefacts tbody tr").count() > 0
        page.screenshot(path=str(shots / "04-reused-stage.png"), full_page=True)

        # a stage that does not train has no Curves section
        page.goto(f"{stack}/stages/{s_b['pseudo_gt']['id']}")
        assert not page.locator("#curves").is_visible()

        # charts of the STA training: by scale, integer epoch ticks, best epoch, log toggle, shared zoom
        page.goto(f"{stack}/stages/{s_b['train_sta']['id']}")
        wait_js(page, "Number(document.querySelector('#curves').dataset.points || 0) === 4", 20, "STA epochs")
        ids = page.locator("#curves .chart").evaluate_all("els => els.filter(e => e.children.length).map(e => e.id)")
        assert {"chart-loss", "chart-metrics", "chart-nss", "chart-kld"} <= set(ids), ids
        ticks = [t for t in page.evaluate("window.stapipeCharts['chart-loss'].axes[0]._values") if t]  # drawn on canvas
        assert ticks and all(t.isdigit() for t in ticks), ticks  # integer epochs only, no 2.5
        assert page.get_attribute("#curves", "data-best-epoch") in {"1", "2", "3", "4"}
        assert "nan_frames" not in page.locator("#chart-metrics").inner_text()
        page.check("#log-scale")
        assert "(log scale)" in page.locator("#chart-loss .u-title").inner_text()
        over = page.locator("#chart-loss .u-over")
        box = over.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.02, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()
        xs = page.evaluate("Object.values(window.stapipeCharts).map(c => [c.scales.x.min, c.scales.x.max])")
        assert len(xs) >= 4 and all(x == xs[0] for x in xs), xs
        page.screenshot(path=str(shots / "05-sta-charts.png"), full_page=True)

        # compare: tick both pipelines in the list
        page.goto(stack + "/")
        assert page.locator(f"tr[data-pipeline-id='{a['id']}'] td[data-col='cc']").inner_text() != "–"
        page.check(f"input[name='pipelines'][value='{a['id']}']")
        page.check(f"input[name='pipelines'][value='{b_id}']")
        page.screenshot(path=str(shots / "06-list-ticked.png"), full_page=True)
        page.click("#compare-button")
        assert page.locator("#compare-results tr[data-metric='cc'] td").count() == 2
        assert page.locator("#compare-results td[data-best]").count() >= 1
        keys = page.locator("#config-diff tbody tr").evaluate_all("els => els.map(e => e.dataset.key)")
        assert keys == ["sta.lr"], keys
        assert page.get_attribute("#compare-chart", "data-series") == "2"
        card, plot = page.locator("#compare-chart").bounding_box(), page.locator("#compare-chart .uplot").bounding_box()
        assert card and plot and plot["x"] + plot["width"] <= card["x"] + card["width"] + 1  # inside its card
        assert plot["width"] > 0.8 * card["width"]  # and using it
        page.screenshot(path=str(shots / "07-compare.png"), full_page=True)

        # the same configuration again: all 13 stages reused, and the Results page shows the table
        c = call(stack, "POST", "/pipelines", json={"name": "again", "dataset_root": synth_root.name,
                                                    "preset": "tiny", "overrides": FAST})
        assert c["status"] == "succeeded" and c["progress"]["stages_reused"] == 13
        page.goto(f"{stack}/pipelines/{c['id']}/results")
        page.screenshot(path=str(shots / "08-results-of-reused.png"), full_page=True)
        body = page.locator("main").inner_text()
        assert "skipped" not in body and "No evaluation yet" not in body, body
        # the reused evaluate stage's metrics.json and overlay videos are the source's (the tables
        # themselves are the Results page's, built by the "results" work)
        assert page.locator("main a", has_text="metrics.json").count() == 1
        assert page.locator("main video").count() > 0
        assert errors == []
        browser.close()
    time.sleep(0)
