"""Disk in a real browser (Debian's Chromium via Playwright) against the app on a real HTTP server:
the estimate on the new-pipeline form follows the preset, bytes per stage on the pipeline page, and
the Disk page's gc button. Screenshots go to ``test-artifacts/disk-*.png``."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from stapipe_settings import Settings

from .browser_stack import CHROMIUM, CHROMIUM_ARGS, wait_js
from .conftest import TOKEN, add_artefact, make_pipeline, stage_of
from .test_commands import server  # noqa: F401  (fixture)
from .test_disk import write_dataset

pytestmark = [pytest.mark.browser]


def test_disk_in_the_browser(server: str, session: Session, settings: Settings,  # noqa: F811
                             artifacts_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    write_dataset(settings)
    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_s_coarse": "succeeded",
                                                   "train_sa_coarse": "running"})
    add_artefact(session, settings, stage_of(p, "extract"), f"{p.id}/extract/v00.h5", b"0" * 3_500_000, "features")
    add_artefact(session, settings, stage_of(p, "train_s_coarse"), f"{p.id}/train_s_coarse/best.pt",
                 b"1" * 11_000_000, "checkpoint")
    orphan = settings.artefact_dir / str(p.id) / "old_crops"
    orphan.mkdir(parents=True)
    (orphan / "r.h5").write_bytes(b"0" * 4_400_000)
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (make install puts it there)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{server}/login")
            page.fill("#password", TOKEN)
            page.click("button[type=submit]")
            page.goto(f"{server}/pipelines/new")
            page.fill("#name", "disk")
            page.fill("#dataset_root", "ave-synth")
            wait_js(page, "document.getElementById('disk-estimate').dataset.bytes > 0", 20, "the estimate")
            tiny = int(page.get_attribute("#disk-estimate", "data-bytes") or 0)
            text = page.text_content("#disk-estimate") or ""
            assert text.startswith("Disk estimate: ") and "for 12 videos" in text, text
            page.locator("#disk-estimate").scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "disk-estimate.png"))
            page.select_option("#preset", "paper")  # resnext101 checkpoints, 356 px frames: far more
            wait_js(page, f"document.getElementById('disk-estimate').dataset.bytes > {tiny * 5}", 20, "paper")
            page.fill("#dataset_root", "nowhere")
            wait_js(page, "document.getElementById('disk-estimate').textContent.includes('dataset_root')", 20,
                    "the field error")

            page.goto(f"{server}/pipelines/{p.id}")
            assert "13.8 MiB" in (page.text_content("#disk-total") or "")  # 3.5 MB + 11 MB
            extract = page.locator("#stages tr[data-kind='extract'] td.disk")
            assert extract.text_content().strip() == "3.3 MiB"
            assert page.locator("#stages tr[data-kind='evaluate'] td.disk").text_content().strip() == "–"
            page.screenshot(path=str(artifacts_dir / "disk-pipeline.png"), full_page=True)

            page.goto(f"{server}/disk")
            assert "old_crops" in page.text_content("#gc-orphans")
            page.screenshot(path=str(artifacts_dir / "disk-gc.png"), full_page=True)
            page.once("dialog", lambda d: d.accept())
            page.click("#gc-run-orphans")
            page.wait_for_url(f"{server}/disk")
            assert "freed 4.2 MiB" in page.text_content("body")
            assert not orphan.exists()
        finally:
            browser.close()
