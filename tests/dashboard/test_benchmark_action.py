"""The pipeline page's "Benchmark on STAViS sets" action end to end (issue 13): the button adds
the optional benchmark stage on the gpu queue, the stage runs (real STA checkpoint from a real
2-epoch training, real STAViS-layout set from the generator), the Results page shows the table
with our row, the centre baseline and the published STANet row, and the action re-runs it.

Celery transport is the one part replaced: the orchestration's send is recorded (conftest), and
the recorded message is executed with ``worker.tasks.run_stage_message`` — exactly what the
Celery task ``run_stage`` calls (the ``benchmark`` body from the stage registry). The page
is rendered by Debian's Chromium, its requests answered by the Flask app.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Stage
from stapipe_settings import Settings, get_settings

from .conftest import KINDS, csrf_of, make_pipeline, stage_of

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def finished(session: Session, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A succeeded pipeline whose train_sta folder holds a real STA checkpoint, and a STAViS root."""
    from sta_models.callbacks import NO_CALLBACKS
    from sta_models.config import preset
    from sta_models.sta_training import train_sta
    from sta_models.synth_stavis import SynthVideo, generate_stavis
    from tests.sta.sta_helpers import tiny_config, write_tiny_dataset

    p = make_pipeline(session, settings, statuses=dict.fromkeys(KINDS, "succeeded"))
    p.status = "succeeded"
    cfg = preset("tiny")
    cfg.sta.device = "cpu"
    cfg.evaluate.n_splits = 3
    p.config = cfg.model_dump(mode="json")
    session.commit()
    feats, gts, splits = write_tiny_dataset(tmp_path / "tiny")
    train_sta(splits, feats, gts, settings.artefact_dir / str(p.id) / "train_sta", tiny_config(epochs=1),
              NO_CALLBACKS, channels=8, use_cache=False)
    stavis = generate_stavis(tmp_path / "stavis", "AVAD", (SynthVideo("v1", 25.0, 1.2, wav=True),
                                                           SynthVideo("v2", 30000 / 1001, 1.0, wav=False)))
    monkeypatch.setenv("STAPIPE_STAVIS_ROOT", str(stavis))
    monkeypatch.setenv("STAPIPE_HOME", str(settings.home))
    get_settings.cache_clear()
    yield p
    get_settings.cache_clear()


def _press(client: FlaskClient, pipeline_id: int) -> str:
    page = client.get(f"/pipelines/{pipeline_id}").get_data(as_text=True)
    assert 'id="benchmark-stavis"' in page and "Benchmark on STAViS sets" in page
    r = client.post(f"/pipelines/{pipeline_id}/benchmark", data={"csrf_token": csrf_of(client)})
    assert r.status_code == 302
    return r.headers["Location"]


def _run_sent(sent, settings: Settings, stage_id: int) -> str:  # noqa: ANN001
    from worker.tasks import run_stage_message

    what, obj_id, queue, token = sent.messages[-1]
    assert (what, obj_id, queue) == ("stage", stage_id, "gpu")
    return run_stage_message(settings.db_url, stage_id, token, "test-host", 3)


def _screenshot(client: FlaskClient, url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (make install puts it there)"

    def serve(route) -> None:  # noqa: ANN001 — answer the browser's requests from the Flask app
        path = re.sub(r"^http://dash", "", route.request.url)
        r = client.get(path)
        route.fulfill(status=r.status_code, body=r.get_data(), headers={"content-type": r.content_type})

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 800})
            page.route("http://dash/**", serve)
            page.goto(f"http://dash{url}")
            page.wait_for_selector("#benchmark-table")
            page.locator("#benchmark").screenshot(path=str(out))
        finally:
            browser.close()


def test_benchmark_action_runs_on_the_gpu_queue_and_fills_the_results_page(
        browser_client: FlaskClient, finished, session: Session, settings: Settings, sent, artifacts_dir: Path) -> None:
    p = finished
    location = _press(browser_client, p.id)
    stage = session.scalars(select(Stage).where(Stage.pipeline_id == p.id, Stage.kind == "benchmark")).one()
    assert location.endswith(f"/stages/{stage.id}") and stage.status == "queued" and stage.queue == "gpu"
    assert stage.depends_on == ["train_sta"]
    # while it is queued the action is not offered, and pressing it anyway is refused
    assert 'id="benchmark-stavis"' not in browser_client.get(f"/pipelines/{p.id}").get_data(as_text=True)
    browser_client.post(f"/pipelines/{p.id}/benchmark", data={"csrf_token": csrf_of(browser_client)})
    assert "already queued" in browser_client.get(f"/pipelines/{p.id}").get_data(as_text=True)

    assert _run_sent(sent, settings, stage.id) == "succeeded"
    session.expire_all()
    stage = session.get(Stage, stage.id)
    assert stage.status == "succeeded" and stage.progress_total > 0
    assert stage.summary["runs"]["AVAD"]["frames_scored"] == 30 + 30
    html = browser_client.get(f"/pipelines/{p.id}/results").get_data(as_text=True)
    assert 'id="benchmark-table"' in html
    for method in ("sta", "centre", "published"):
        assert f'data-method="{method}"' in html
    assert "0.873" in html and "2.018" in html  # the published AVAD row
    _screenshot(browser_client, f"/pipelines/{p.id}/results", artifacts_dir / "benchmark_results.png")

    # re-run: the action is offered again and queues the same stage anew
    assert _press(browser_client, p.id).endswith(f"/stages/{stage.id}")
    session.expire_all()
    assert session.get(Stage, stage.id).status == "queued" and len(sent.messages) == 2
    assert stage_of(p, "train_sta").status == "succeeded"


def test_no_stavis_sets_fails_the_stage_with_one_line(browser_client: FlaskClient, finished, session: Session,
                                                       settings: Settings, sent, monkeypatch) -> None:
    monkeypatch.setenv("STAPIPE_STAVIS_ROOT", str(settings.home / "nowhere"))
    get_settings.cache_clear()
    _press(browser_client, finished.id)
    stage = session.scalars(select(Stage).where(Stage.kind == "benchmark")).one()
    assert _run_sent(sent, settings, stage.id) == "failed"
    session.expire_all()
    stage = session.get(Stage, stage.id)
    assert "no STAViS test sets" in stage.error_summary and "STAPIPE_STAVIS_ROOT" in stage.error_summary
    assert "\n" not in stage.error_summary
