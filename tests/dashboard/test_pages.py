"""HTML pages through the Flask test client: contents, the form's validation, actions, files, errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from db.models import Artefact, Stage
from stapipe_settings import Settings

from .conftest import Sent, add_artefact, add_item, csrf_of, install_evaluation, make_pipeline, stage_of


def text(response) -> str:  # type: ignore[no-untyped-def]
    return response.get_data(as_text=True)


def form_values(client: FlaskClient) -> dict[str, str]:
    """The new-pipeline form as the browser would send it untouched (tiny preset)."""
    html = text(client.get("/pipelines/new"))
    values = dict(re.findall(r'<input name="([^"]+)" value="([^"]*)"', html))
    for name, block in re.findall(r'<select name="([^"]+)".*?>(.*?)</select>', html, re.S):
        values[name] = re.search(r'<option value="([^"]+)" selected', block).group(1)
    values.update(name="my run", dataset_root="ave-synth", preset="tiny", csrf_token=csrf_of(client))
    return values


def test_pipelines_page_lists_newest_first_with_progress(browser_client: FlaskClient, session: Session,
                                                         settings: Settings) -> None:
    now = datetime.now(UTC)
    old = make_pipeline(session, settings, name="older", created=now - timedelta(hours=2))
    new = make_pipeline(session, settings, name="newer", created=now, statuses={"extract": "succeeded"})
    ex = stage_of(new, "extract")
    ex.progress_done, ex.progress_failed, ex.progress_total = 9, 1, 10
    session.commit()
    html = text(browser_client.get("/"))
    assert html.index("newer") < html.index("older")
    row = re.search(rf'<tr data-pipeline-id="{new.id}">(.*?)</tr>', html, re.S).group(1)
    assert "1/13" in row and "9 done" in row and "1 failed" in row and "/ 10" in row
    assert "ave-synth" in row and str(settings.home) not in html
    assert f'data-pipeline-id="{old.id}"' in html


def test_pipelines_page_paginates(browser_client: FlaskClient, session: Session, settings: Settings) -> None:
    for i in range(23):
        make_pipeline(session, settings, name=f"run-{i:02d}", created=datetime.now(UTC) + timedelta(seconds=i))
    first = text(browser_client.get("/"))
    assert "page 1 of 2" in first and "run-22" in first and "run-02" not in first
    second = text(browser_client.get("/?page=2"))
    assert "run-02" in second and "run-00" in second and "run-22" not in second
    assert browser_client.get("/?page=0").status_code == 422


def test_empty_pipelines_page(browser_client: FlaskClient) -> None:
    assert "No pipelines yet" in text(browser_client.get("/"))


def test_new_pipeline_form_shows_every_setting(browser_client: FlaskClient) -> None:
    html = text(browser_client.get("/pipelines/new"))
    for group in ("coarse.s", "coarse.sa", "coarse.st", "fine.s", "fine.sa", "fine.st", "sta"):
        for field in ("backbone", "input_size", "epochs", "batch_size", "lr", "decay_epochs", "backbone_weights",
                      "audio_weights"):
            assert f'name="{group}.{field}"' in html, (group, field)
    assert 'id="presets-data"' in html and '"paper"' in html
    assert 'name="csrf_token"' in html


def test_submitting_the_form_creates_a_pipeline(browser_client: FlaskClient, sent: Sent) -> None:
    values = form_values(browser_client)
    values["coarse.st.epochs"] = "4"
    r = browser_client.post("/pipelines/new", data=values)
    assert r.status_code == 302
    page = browser_client.get(r.headers["Location"])
    html = text(page)
    assert "my run" in html and "Pipeline 1 submitted." in html
    assert browser_client.get("/api/v1/pipelines/1").json["config"]["coarse"]["st"]["epochs"] == 4
    assert len(sent.messages) == 1


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"name": "  "}, "name", "enter a name"),
        ({"dataset_root": "../.."}, "dataset_root", "the dataset must be a folder inside the data root"),
        ({"dataset_root": "/etc"}, "dataset_root", "the dataset must be a folder inside the data root"),
        ({"dataset_root": "missing"}, "dataset_root", "no such folder inside the data root"),
        ({"preset": "huge"}, "preset", "choose one of tiny, demo, paper"),
        ({"coarse.s.epochs": "0"}, "coarse.s.epochs", "must be at least 1"),
        ({"fine.sa.batch_size": "lots"}, "fine.sa.batch_size", "must be a whole number"),
        ({"sta.lr": "-0.1"}, "sta.lr", "must be more than 0"),
        ({"sta.input_size": "2048"}, "sta.input_size", "must be at most 1024"),
        ({"coarse.st.decay_epochs": "3,a"}, "coarse.st.decay_epochs", "write whole epoch numbers"),
        ({"fine.s.backbone": "alexnet"}, "fine.s.backbone", "must be 'resnext101_32x8d'"),
        ({"sta.backbone_weights": "nope.pth"}, "sta.backbone_weights", "no such weights file"),
        ({"extract.size": "10"}, "extract.size", "must be at least 32"),
    ],
)
def test_form_errors_are_shown_next_to_their_field(browser_client: FlaskClient, sent: Sent, changes: dict,
                                                   field: str, message: str) -> None:
    values = {**form_values(browser_client), **changes}
    r = browser_client.post("/pipelines/new", data=values)
    assert r.status_code == 422
    html = text(r)
    shown = re.search(rf'<div class="field-error" data-field="{re.escape(field)}">([^<]*)</div>', html)
    assert shown and message in shown.group(1).replace("&#39;", "'"), html[:500]
    assert "The pipeline was not submitted: 1 value to fix." in html
    # the user's input is kept
    for key, value in changes.items():
        if key != "preset" and not key.endswith(".backbone") and value.strip():  # selects keep valid values only
            assert f'value="{value}"' in html or f'<option value="{value}" selected' in html
    assert sent.messages == []


def test_symlink_escape_in_the_form(browser_client: FlaskClient, settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (settings.data_dir / "link").symlink_to(tmp_path / "elsewhere")
    r = browser_client.post("/pipelines/new", data={**form_values(browser_client), "dataset_root": "link"})
    assert r.status_code == 422
    assert "the dataset must be a folder inside the data root" in text(r)


def test_pipeline_page(browser_client: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, name="graph", statuses={"extract": "succeeded", "train_s_coarse": "failed",
                                                                 "train_sa_coarse": "running"})
    failed = stage_of(p, "train_s_coarse")
    failed.error_summary = "RuntimeError: boom"
    stage_of(p, "train_sa_coarse").worker_host = "gpu0@box"
    reused = stage_of(p, "train_st_coarse")
    reused.status, reused.reused_from_id = "reused", failed.id
    session.commit()
    html = text(browser_client.get(f"/pipelines/{p.id}"))
    assert html.count('class="node ') == 13
    assert html.count("graph-col") >= 9  # one column per depth of the dependency graph
    row = lambda kind: re.search(rf'<tr data-stage-id="\d+" data-kind="{kind}">(.*?)</tr>', html, re.S).group(1)  # noqa: E731
    assert "failed" in row("train_s_coarse") and "RuntimeError: boom" in row("train_s_coarse")
    assert f'/stages/{failed.id}/rerun' in row("train_s_coarse")
    assert "/rerun" not in row("extract")
    assert "gpu0@box" in row("train_sa_coarse")
    assert 'data-status="reused"' in row("train_st_coarse") and "skipped" not in html
    assert f'href="/stages/{failed.id}"' in row("train_st_coarse")  # a link to the stage it reuses
    assert 'id="cancel-pipeline"' in html and "data-confirm=" in html


def test_cancel_from_the_page(browser_client: FlaskClient, session: Session, settings: Settings, sent: Sent) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "queued"})
    r = browser_client.post(f"/pipelines/{p.id}/cancel", data={"csrf_token": csrf_of(browser_client)})
    assert r.status_code == 302
    html = text(browser_client.get(r.headers["Location"]))
    assert f"Pipeline {p.id} is being cancelled." in html
    session.expire_all()
    assert {s.status for s in session.query(Stage).filter_by(pipeline_id=p.id)} == {"cancelled"}
    again = browser_client.post(f"/pipelines/{p.id}/cancel", data={"csrf_token": csrf_of(browser_client)})
    assert "already finished" in text(browser_client.get(again.headers["Location"]))


def test_rerun_confirmation_lists_what_runs_again(browser_client: FlaskClient, session: Session,
                                                   settings: Settings, sent: Sent) -> None:
    statuses = {k: "succeeded" for k in ("extract", "train_s_coarse", "train_sa_coarse", "train_st_coarse",
                                         "cams_coarse", "crops", "train_s_fine", "train_sa_fine", "train_st_fine",
                                         "cams_fine")}
    p = make_pipeline(session, settings, statuses={**statuses, "pseudo_gt": "failed"})
    failed = stage_of(p, "pseudo_gt")
    html = text(browser_client.get(f"/stages/{failed.id}/rerun"))
    assert re.findall(r'<li data-kind="(\w+)">', html) == ["pseudo_gt", "train_sta", "evaluate"]
    assert "Re-run 3 stages" in html
    r = browser_client.post(f"/stages/{failed.id}/rerun", data={"csrf_token": csrf_of(browser_client)})
    assert r.status_code == 302 and r.headers["Location"] == f"/pipelines/{p.id}"
    assert "Re-running 3 stage(s): pseudo_gt, train_sta, evaluate." in text(browser_client.get(r.headers["Location"]))
    assert sent.messages[-1][:2] == ("stage", failed.id)
    # now queued: the confirmation says it cannot be re-run, and a POST is refused with a message
    assert "Only failed or cancelled stages can be re-run" in text(browser_client.get(f"/stages/{failed.id}/rerun"))
    r = browser_client.post(f"/stages/{failed.id}/rerun", data={"csrf_token": csrf_of(browser_client)})
    assert "only failed or cancelled stages can be re-run" in text(browser_client.get(r.headers["Location"]))


def test_stage_page(browser_client: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"cams_coarse": "failed"}, epochs={"cams_coarse": 3})
    stage = stage_of(p, "cams_coarse")
    stage.error_summary, stage.traceback = "ValueError: bad cam", "Traceback (most recent call last):\n..."
    session.commit()
    for i in range(3):
        add_artefact(session, settings, stage, f"{p.id}/cams_coarse/previews/v{i}.png", b"\x89PNG" + bytes(10))
    add_artefact(session, settings, stage, f"{p.id}/cams_coarse/v0.h5", b"x" * 2048, kind="cams")
    html = text(browser_client.get(f"/stages/{stage.id}"))
    assert f'data-metrics-url="/api/v1/stages/{stage.id}/metrics"' in html
    assert f'data-log-url="/api/v1/stages/{stage.id}/log"' in html
    assert "vendor/uplot/uPlot.iife.min.js" in html and "stage.js" in html
    assert html.count("<img ") == 3 and "(3 of 3)" in html
    assert "2.0 KiB" in html and "v0.h5" in html
    assert "ValueError: bad cam" in html and "Worker traceback" in html
    assert f'/stages/{stage.id}/rerun' in html


def test_stage_page_limits_previews(browser_client: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings)
    stage = stage_of(p, "crops")
    for i in range(50):
        add_artefact(session, settings, stage, f"{p.id}/crops/previews/{i:02d}.png", b"png")
    assert text(browser_client.get(f"/stages/{stage.id}")).count("<img ") == 48
    assert text(browser_client.get(f"/stages/{stage.id}?previews=all")).count("<img ") == 50


def test_stage_page_lists_failed_videos(browser_client: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "succeeded"})
    add_item(session, stage_of(p, "extract"), "broken01", "failed", "no video stream")
    html = text(browser_client.get(f"/stages/{stage_of(p, 'extract').id}"))
    assert "broken01" in html and "no video stream" in html


def test_results_page_before_the_evaluation(browser_client: FlaskClient, session: Session,
                                            settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"evaluate": "running"})
    assert "No evaluation yet" in text(browser_client.get(f"/pipelines/{p.id}/results"))


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_results_page(browser_client: FlaskClient, session: Session, settings: Settings, real_evaluation: Any) -> None:
    p = make_pipeline(session, settings, statuses={"evaluate": "succeeded"})
    install_evaluation(session, settings, p, real_evaluation)
    html = text(browser_client.get(f"/pipelines/{p.id}/results"))
    sta = real_evaluation.scored.sta
    assert '<table class="grid results-table" id="dataset-table">' in html
    assert '<tr data-method="sta">' in html and '<tr data-method="centre">' in html
    assert f"{sta.dataset['cc']:.3f}" in html and 'id="ablation-table"' in html and 'id="video-table"' in html
    for v in sta.videos:
        assert f'data-video="{v.video}"' in html
    assert html.count('class="strip-card"') == len(sta.videos) and "<video controls" in html


def test_results_page_with_a_damaged_metrics_file(browser_client: FlaskClient, session: Session,
                                                  settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"evaluate": "succeeded"})
    add_artefact(session, settings, stage_of(p, "evaluate"), f"{p.id}/evaluate/metrics.json", b"{half", kind="metrics")
    r = browser_client.get(f"/pipelines/{p.id}/results")
    assert r.status_code == 200 and "metrics.json could not be read" in text(r)


def test_artefact_file_supports_ranges(browser_client: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings)
    data = bytes(range(256)) * 4
    a = add_artefact(session, settings, stage_of(p, "evaluate"), f"{p.id}/evaluate/v.mp4", data, kind="video")
    full = browser_client.get(f"/artefacts/{a.id}/file")
    assert full.status_code == 200 and full.data == data and full.mimetype == "video/mp4"
    assert full.headers["Accept-Ranges"] == "bytes"
    part = browser_client.get(f"/artefacts/{a.id}/file", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert browser_client.get(f"/artefacts/{a.id}/file", headers={"Range": "bytes=5000-"}).status_code == 416


def test_artefact_files_outside_the_artefact_root_are_never_served(browser_client: FlaskClient, session: Session,
                                                                  settings: Settings, tmp_path: Path) -> None:
    p = make_pipeline(session, settings)
    stage = stage_of(p, "crops")
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2")
    link = settings.artefact_dir / "link.txt"
    link.symlink_to(secret)
    rows = [Artefact(stage_id=stage.id, kind="x", path=path, size=1, sha256="0")
            for path in (str(secret), str(settings.artefact_dir / ".." / ".." / "secret.txt"), str(link),
                         str(settings.artefact_dir / "missing.png"))]
    session.add_all(rows)
    session.commit()
    for row in rows:
        r = browser_client.get(f"/artefacts/{row.id}/file")
        assert r.status_code == 404 and b"hunter2" not in r.data
    assert browser_client.get("/artefacts/99999/file").status_code == 404
    assert browser_client.get("/artefacts/../../etc/passwd").status_code == 404


def test_unknown_ids_on_pages_are_404(browser_client: FlaskClient) -> None:
    for url in ("/pipelines/999", "/stages/999", "/stages/999/rerun", "/pipelines/999/results", "/pipelines/x"):
        r = browser_client.get(url)
        assert r.status_code == 404, url
        assert "404 · Not Found" in text(r)


def test_error_pages_leak_no_paths_or_tracebacks(browser_client: FlaskClient, app: Flask, settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard import queries

    def boom(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"secret failure in {settings.home}/x.py")

    monkeypatch.setattr(queries, "list_pipelines", boom)
    monkeypatch.setattr(queries, "get_stage", boom)
    page = browser_client.get("/")
    api = browser_client.get("/api/v1/stages/1")
    for r in (page, api):
        body = text(r)
        assert r.status_code == 500
        assert "Traceback" not in body and "secret failure" not in body and str(settings.home) not in body
        assert "/work/" not in body and ".py" not in body
    assert "Something went wrong on the server" in text(page)
    assert api.json == {"error": "Internal Server Error",
                        "message": "Something went wrong on the server. The error was logged."}


def test_4xx_pages_leak_no_paths(browser_client: FlaskClient, settings: Settings) -> None:
    for r in (browser_client.get("/nope"), browser_client.post("/", data={"csrf_token": csrf_of(browser_client)}),
              browser_client.get("/api/v1/pipelines?page=-1"),
              browser_client.post("/api/v1/pipelines", data=b"{", content_type="application/json",
                                  headers={"X-CSRF-Token": csrf_of(browser_client)})):
        assert 400 <= r.status_code < 500
        assert str(settings.home) not in text(r) and "Traceback" not in text(r)


def test_request_body_size_is_limited(api: FlaskClient) -> None:
    r = api.post("/api/v1/pipelines", data=b"{" + b" " * (2 * 1024 * 1024) + b"}", content_type="application/json")
    assert r.status_code == 413
    assert r.json["error"] == "Request Entity Too Large"
