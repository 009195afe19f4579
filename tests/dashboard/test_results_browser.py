"""The Results page in Chromium on a real evaluate output (tests/real_evaluation.py): the dataset
table with the best values marked, the ablation, the per-video table sorted worst first and
re-sorted by a click, and a strip whose second follows its slider. Screenshots under
test-artifacts/results/.

The app is the real Flask app served by werkzeug in a thread (no worker is needed: the evaluate
output is already on disk and recorded by the worker's own recorder).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from stapipe_settings import Settings

from .browser_stack import CHROMIUM, CHROMIUM_ARGS
from .conftest import TOKEN, install_evaluation, make_pipeline

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _sta_values(page: Any, key: str) -> list[float | None]:
    cells = page.locator(f"#video-table tbody td[data-key='{key}']")
    return [float(v) if v else None for v in cells.evaluate_all("cs => cs.map(c => c.dataset.value)")]


def test_results_page_in_chromium(served: str, session: Session, settings: Settings, real_evaluation: Any,
                                  artifacts_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    p = make_pipeline(session, settings, name="results in chromium", statuses={"evaluate": "succeeded"})
    install_evaluation(session, settings, p, real_evaluation)
    shots = artifacts_dir / "results"
    shots.mkdir(parents=True, exist_ok=True)
    sta = real_evaluation.scored.sta
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(20_000)
            page.goto(f"{served}/pipelines/{p.id}/results")
            page.fill("#password", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("#dataset-table")
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.reload()

            # dataset table: one row per method, STA's CC marked best (STA beats the centre bias here)
            assert page.locator("#dataset-table tr[data-method]").evaluate_all(
                "rs => rs.map(r => r.dataset.method)") == ["sta", "centre"]
            sta_cc = page.locator("#dataset-table tr[data-method='sta'] td[data-metric='cc']")
            assert sta_cc.inner_text().startswith(f"{sta.dataset['cc']:.3f}")
            best = "sta" if sta.dataset["cc"] > real_evaluation.scored.centre.dataset["cc"] else "centre"
            assert "best" in page.locator(f"#dataset-table tr[data-method='{best}'] td[data-metric='cc']"
                                          ).get_attribute("class")
            kld_best = page.locator("#dataset-table td.best[data-metric='kld']").locator("xpath=..")
            lower = min(("sta", sta.dataset["kld"]), ("centre", real_evaluation.scored.centre.dataset["kld"]),
                        key=lambda t: t[1])[0]
            assert kld_best.get_attribute("data-method") == lower  # lower is better for KLD
            assert page.locator("#ablation-table tbody tr").count() == 11
            page.locator("#ablation-table").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "01-dataset-and-ablation.png"), full_page=True)

            # per-video table: worst STA CC first; a click on NSS sorts worst NSS first, again reverses
            cc = _sta_values(page, "sta-cc")
            assert cc == sorted(cc) and len(cc) == len(sta.videos)
            page.click("#video-table th[data-key='sta-nss']")
            nss = _sta_values(page, "sta-nss")
            assert nss == sorted(nss)
            page.click("#video-table th[data-key='sta-nss']")
            assert _sta_values(page, "sta-nss") == sorted(nss, reverse=True)
            page.click("#video-table th[data-key='sta-kld']")  # worst KLD = highest first
            kld = _sta_values(page, "sta-kld")
            assert kld == sorted(kld, reverse=True)
            page.locator("#video-table").screenshot(path=str(shots / "02-per-video-sorted-by-kld.png"))

            # strip: the slider picks the second (one row of the sprite sheet)
            video = sta.videos[0].video
            card = page.locator(f"#strip-{video}")
            card.scroll_into_view_if_needed()
            img = card.locator(".strip-view img")
            img.evaluate("i => i.complete || new Promise(r => i.onload = r)")
            assert img.evaluate("i => i.naturalWidth") > 0
            slider = card.locator("input.strip-second")
            slider.fill("0")
            assert card.locator("output").inner_text() == "0"
            assert img.evaluate("i => i.style.transform") in ("translateY(-0px)", "translateY(0px)")
            slider.fill("2")
            height = int(img.get_attribute("data-row-height"))
            assert card.locator("output").inner_text() == "2"
            box = card.locator(".strip-view").bounding_box()
            assert box is not None and round(box["height"]) == height  # one second shown, not the whole sheet
            assert img.evaluate("i => i.style.transform") == f"translateY(-{2 * height}px)"
            assert card.locator(".strip-labels span").all_inner_texts() == ["frame", "ground truth", "STA",
                                                                            "centre bias"]
            card.screenshot(path=str(shots / "03-strip-second-2.png"))
            page.screenshot(path=str(shots / "04-results-page.png"), full_page=True)
            assert page.locator(".strip-card video").count() >= 1
            assert not errors, errors
        finally:
            browser.close()
