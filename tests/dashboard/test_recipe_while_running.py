"""The from-scratch recipe is on a training stage's page from its first batch, not only once the
stage has finished: the real trainer reports its setup through the worker's real DB callbacks
(``DbCallbacks.started``), and the page read back *during* training names the recipe. Screenshot
of the running stage: ``test-artifacts/recipe-while-running/``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from sta_models.config import TrainConfig
from sta_models.scratch import RECIPE
from sta_models.training import train_branch
from stapipe_settings import Settings
from worker.logs import StageLog
from worker.stage_runner import DbCallbacks

from .conftest import make_pipeline, stage_of
from .test_health_warnings import _screenshots, three_class_features

pytestmark = [pytest.mark.browser]


def test_recipe_is_shown_while_the_stage_trains(browser_client: FlaskClient, session: Session, settings: Settings,
                                               tmp_path: Path, artifacts_dir: Path) -> None:
    feat = tmp_path / "features"
    rows = three_class_features(feat)
    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_sa_coarse": "running"})
    stage = stage_of(p, "train_sa_coarse")
    stage.celery_task_id = "token-1"
    session.commit()
    stage_id = stage.id
    session.close()

    seen: list[tuple[str, dict]] = []
    db = DbCallbacks(settings.db_url, stage_id, "token-1", StageLog(tmp_path / "stage.log"))
    cbs = db.build()

    def progress(done: int, total: int, what: str = "") -> None:  # the first batch: look at the page
        if not seen:
            seen.append((browser_client.get(f"/stages/{stage_id}").get_data(as_text=True),
                         browser_client.get(f"/api/v1/stages/{stage_id}").get_json()))
        db.progress(done, total, what)

    cfg = TrainConfig(backbone="resnet18", input_size=32, epochs=1, batch_size=3, workers=0, device="cpu")
    result = train_branch("sa", rows, feat, tmp_path / "out", cfg, dataclasses.replace(cbs, progress=progress),
                          use_cache=False)
    assert result.record["recipe"]["name"] == RECIPE.name  # what the finished record will say
    html, body = seen[0]
    assert body["status"] == "running" and body["summary"]["recipe"]["name"] == RECIPE.name, body
    assert body["summary"]["random_init"] == ["audio", "backbone"]
    assert 'id="stage-recipe"' in html and "Training with the from-scratch recipe" in html
    assert RECIPE.name in html and "audio, backbone from random init" in html
    _screenshots(browser_client, [f"/stages/{stage_id}"], artifacts_dir / "recipe-while-running",
                 wait_for="#stage-recipe")
