"""The JSON API, on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from db.models import EpochMetric, Stage
from stapipe_settings import Settings

from .conftest import Sent, add_artefact, add_item, install_evaluation, make_pipeline, stage_of


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def submit(api: FlaskClient, **body) -> object:
    payload = {"name": "run", "dataset_root": "ave-synth", "preset": "tiny", **body}
    return api.post("/api/v1/pipelines", json=payload)


def test_create_then_get_pipeline(api: FlaskClient, settings: Settings, sent: Sent) -> None:
    r = submit(api, overrides={"coarse.*.epochs": 1, "sta": {"lr": 0.005}})
    assert r.status_code == 201, r.json
    body = r.json
    assert r.headers["Location"] == f"/api/v1/pipelines/{body['id']}"
    assert body["name"] == "run" and body["dataset_root"] == "ave-synth" and body["preset"] == "tiny"
    assert body["submitted_by"] == "api"
    assert body["config"]["coarse"]["sa"]["epochs"] == 1 and body["config"]["sta"]["lr"] == 0.005
    assert [s["kind"] for s in body["stages"]][:2] == ["extract", "train_s_coarse"]
    assert body["stages"][0]["status"] == "queued"
    assert {s["status"] for s in body["stages"][1:]} == {"pending"}
    assert sent.messages == [("stage", body["stages"][0]["id"], "cpu", sent.messages[0][3])]
    assert body["progress"]["stages_total"] == 13
    again = api.get(f"/api/v1/pipelines/{body['id']}")
    assert again.status_code == 200 and again.json["stages"] == body["stages"]
    assert str(settings.home) not in again.get_data(as_text=True)  # no server paths


def test_list_is_newest_first_and_paginated(api: FlaskClient, session: Session, settings: Settings) -> None:
    ids = [make_pipeline(session, settings, name=f"p{i}").id for i in range(5)]
    page1 = api.get("/api/v1/pipelines?per_page=2").json
    assert [p["id"] for p in page1["items"]] == ids[::-1][:2]
    assert (page1["total"], page1["pages"], page1["page"]) == (5, 3, 1)
    page3 = api.get("/api/v1/pipelines?per_page=2&page=3").json
    assert [p["id"] for p in page3["items"]] == [ids[0]]
    assert api.get("/api/v1/pipelines?page=9").json["items"] == []


def test_list_reports_progress(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_s_coarse": "failed"})
    ex = stage_of(p, "extract")
    ex.progress_done, ex.progress_failed, ex.progress_total = 10, 2, 12
    session.commit()
    item = api.get("/api/v1/pipelines").json["items"][0]
    assert item["progress"] == {"stages_done": 1, "stages_total": 13, "stages_failed": 1, "stages_reused": 0,
                                "videos_done": 10, "videos_failed": 2, "videos_total": 12}


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [("page=0", "page", "must be between 1 and 1000000"), ("per_page=500", "per_page", "must be between 1 and 100"),
     ("page=x", "page", "must be a whole number")],
)
def test_list_rejects_bad_numbers(api: FlaskClient, query: str, field: str, message: str) -> None:
    r = api.get(f"/api/v1/pipelines?{query}")
    assert r.status_code == 422
    assert r.json["fields"] == {field: message}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": ""}, {"name": "enter a name"}),
        ({"name": "x" * 201}, {"name": "at most 200 characters"}),
        ({"dataset_root": "../"}, {"dataset_root": "the dataset must be a folder inside the data root"}),
        ({"dataset_root": "/etc"}, {"dataset_root": "the dataset must be a folder inside the data root"}),
        ({"dataset_root": "nope"}, {"dataset_root": "no such folder inside the data root"}),
        ({"dataset_root": 5}, {"dataset_root": "enter a dataset folder"}),
        ({"preset": "huge"}, {"preset": "choose one of tiny, demo, paper"}),
        ({"overrides": {"coarse.s.epochs": 0}}, {"coarse.s.epochs": "must be at least 1"}),
        ({"overrides": {"sta.lr": -1, "fine.s.batch_size": 99999}},
         {"sta.lr": "must be more than 0", "fine.s.batch_size": "must be at most 4096"}),
        ({"overrides": [1]}, {"overrides": "must be an object of setting names to values"}),
        ({"overrides": {"bogus": 1}}, {"bogus": "unknown setting"}),
        ({"extra_field": 1}, {"extra_field": "unknown field"}),
    ],
)
def test_create_rejects_invalid_values_with_field_errors(api: FlaskClient, body: dict, fields: dict, sent: Sent) -> None:
    r = submit(api, **body)
    assert r.status_code == 422
    assert r.json["fields"] == fields
    assert r.json["error"] == "Unprocessable Entity"
    assert sent.messages == []
    assert api.get("/api/v1/pipelines").json["total"] == 0


def test_create_rejects_a_symlink_out_of_the_data_root(api: FlaskClient, settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (settings.data_dir / "sneaky").symlink_to(outside)
    r = submit(api, dataset_root="sneaky")
    assert r.status_code == 422
    assert r.json["fields"] == {"dataset_root": "the dataset must be a folder inside the data root"}


@pytest.mark.parametrize("raw", [b"{", b"not json", b"[1, 2]", b"", b'"x"', b"\xff\xfe"])
def test_create_rejects_malformed_json(api: FlaskClient, raw: bytes) -> None:
    r = api.post("/api/v1/pipelines", data=raw, content_type="application/json")
    assert r.status_code == 400
    assert r.json["error"] == "Bad Request"
    assert "JSON" in r.json["message"]


def test_unknown_ids_are_404(api: FlaskClient) -> None:
    for method, url in [("GET", "/api/v1/pipelines/999"), ("POST", "/api/v1/pipelines/999/cancel"),
                        ("GET", "/api/v1/pipelines/999/results"), ("GET", "/api/v1/stages/999"),
                        ("POST", "/api/v1/stages/999/cancel"), ("GET", "/api/v1/stages/999/rerun-plan"),
                        ("POST", "/api/v1/stages/999/rerun"), ("GET", "/api/v1/stages/999/metrics"),
                        ("GET", "/api/v1/stages/999/log"), ("GET", "/api/v1/stages/999/artefacts"),
                        ("GET", "/api/v1/pipelines/abc"), ("GET", "/api/v1/stages/-1")]:
        r = api.open(url, method=method)
        assert r.status_code == 404, url
        assert r.json["error"] == "Not Found"
    assert api.get("/api/v1/pipelines/999").json["message"] == "no pipeline 999"


def test_wrong_method_is_405_json(api: FlaskClient) -> None:
    r = api.delete("/api/v1/pipelines")
    assert r.status_code == 405
    assert r.json["error"] == "Method Not Allowed"


def test_cancel_pipeline(api: FlaskClient, sent: Sent) -> None:
    p = submit(api).json
    r = api.post(f"/api/v1/pipelines/{p['id']}/cancel")
    assert r.status_code == 200
    assert r.json["status"] == "cancelled"
    assert {s["status"] for s in r.json["stages"]} == {"cancelled"}
    again = api.post(f"/api/v1/pipelines/{p['id']}/cancel")
    assert again.status_code == 409
    assert "already finished" in again.json["message"]


def test_cancel_stage(api: FlaskClient) -> None:
    p = submit(api).json
    extract = p["stages"][0]["id"]
    r = api.post(f"/api/v1/stages/{extract}/cancel")
    assert r.status_code == 200 and r.json["status"] == "cancelled"
    assert api.post(f"/api/v1/stages/{extract}/cancel").status_code == 409


def test_rerun_plan_and_rerun(api: FlaskClient, session: Session, settings: Settings, sent: Sent) -> None:
    done = {k: "succeeded" for k in ("extract", "train_s_coarse", "train_sa_coarse")}
    p = make_pipeline(session, settings, statuses={**done, "train_st_coarse": "failed"})
    failed = stage_of(p, "train_st_coarse")
    plan = api.get(f"/api/v1/stages/{failed.id}/rerun-plan").json
    assert plan["rerunnable"] is True
    assert [s["kind"] for s in plan["stages"]] == [
        "train_st_coarse", "cams_coarse", "crops", "train_s_fine", "train_sa_fine", "train_st_fine", "cams_fine",
        "pseudo_gt", "train_sta", "evaluate"]
    r = api.post(f"/api/v1/stages/{failed.id}/rerun")
    assert r.status_code == 200
    assert [s["kind"] for s in r.json["stages"]] == [s["kind"] for s in plan["stages"]]
    stages = {s["kind"]: s for s in api.get(f"/api/v1/pipelines/{p.id}").json["stages"]}
    assert stages["train_st_coarse"]["status"] == "queued"
    assert stages["train_s_coarse"]["status"] == "succeeded"  # upstream untouched
    assert sent.messages[-1][:3] == ("stage", failed.id, "gpu")
    again = api.post(f"/api/v1/stages/{failed.id}/rerun")
    assert again.status_code == 409
    assert "only failed or cancelled" in again.json["message"]


def test_rerun_of_a_succeeded_stage_is_refused(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "succeeded"})
    sid = stage_of(p, "extract").id
    assert api.get(f"/api/v1/stages/{sid}/rerun-plan").json["rerunnable"] is False
    assert api.post(f"/api/v1/stages/{sid}/rerun").status_code == 409


def test_get_stage_lists_failed_videos(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "running"})
    ex = stage_of(p, "extract")
    add_item(session, ex, "v1", "succeeded")
    add_item(session, ex, "v2", "failed", "no audio stream")
    body = api.get(f"/api/v1/stages/{ex.id}").json
    assert body["kind"] == "extract" and body["status"] == "running"
    assert body["failed_items"] == [{"video_id": "v2", "reason": "no audio stream"}]


def test_metrics_since(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"train_s_coarse": "running"}, epochs={"train_s_coarse": 5})
    sid = stage_of(p, "train_s_coarse").id
    full = api.get(f"/api/v1/stages/{sid}/metrics").json
    assert [e["epoch"] for e in full["epochs"]] == [1, 2, 3, 4, 5]
    assert full["epochs"][1] == {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.2, "lr": 0.01,
                                 "seconds": 1.5, "samples_per_s": None, "extra": {"cc": 0.2}}
    assert (full["status"], full["last_epoch"], full["more"]) == ("running", 5, False)
    stage = session.get(Stage, sid)
    stage.started_at = datetime.now(UTC) - timedelta(seconds=90)
    session.commit()
    timing = api.get(f"/api/v1/stages/{sid}/metrics?since=5").json
    assert timing["started_at"].endswith("Z") and 89 <= timing["duration_s"] < 300  # live while running
    part = api.get(f"/api/v1/stages/{sid}/metrics?since=3").json
    assert [e["epoch"] for e in part["epochs"]] == [4, 5]
    none = api.get(f"/api/v1/stages/{sid}/metrics?since=5").json
    assert none["epochs"] == [] and none["last_epoch"] == 5
    paged = api.get(f"/api/v1/stages/{sid}/metrics?since=0&limit=2").json
    assert [e["epoch"] for e in paged["epochs"]] == [1, 2] and paged["more"] is True and paged["last_epoch"] == 2
    for q, field in [("since=-1", "since"), ("since=a", "since"), ("limit=0", "limit"), ("limit=999999", "limit")]:
        r = api.get(f"/api/v1/stages/{sid}/metrics?{q}")
        assert r.status_code == 422 and field in r.json["fields"], q


def test_metrics_since_is_fast_with_10000_epochs(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"train_sta": "running"})
    sid = stage_of(p, "train_sta").id
    session.execute(EpochMetric.__table__.insert(), [
        {"stage_id": sid, "epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 / e, "extra": {}, "created_at": p.created_at}
        for e in range(1, 10001)])
    session.commit()
    api.get(f"/api/v1/stages/{sid}/metrics?since=9990")  # warm up
    start = time.perf_counter()
    for _ in range(20):
        r = api.get(f"/api/v1/stages/{sid}/metrics?since=9990")
    per_call = (time.perf_counter() - start) / 20
    assert [e["epoch"] for e in r.json["epochs"]] == list(range(9991, 10001))
    assert per_call < 0.05, per_call
    full = api.get(f"/api/v1/stages/{sid}/metrics?since=0&limit=5000").json
    assert len(full["epochs"]) == 5000 and full["more"] is True


def test_log_tail_and_incremental_reads(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"train_s_coarse": "running"})
    stage = stage_of(p, "train_s_coarse")
    missing = api.get(f"/api/v1/stages/{stage.id}/log").json
    assert missing["exists"] is False and missing["text"] == ""
    log = Path(stage.log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"epoch {i}\n" for i in range(1, 101)))
    tail = api.get(f"/api/v1/stages/{stage.id}/log?lines=2").json
    assert tail["text"] == "epoch 99\nepoch 100\n" and tail["exists"] is True
    with log.open("a") as fh:
        fh.write("epoch 101\n")
    more = api.get(f"/api/v1/stages/{stage.id}/log?offset={tail['next_offset']}").json
    assert more["text"] == "epoch 101\n" and more["next_offset"] == log.stat().st_size
    for q in ("lines=-1", "lines=100000", "offset=-5", "offset=x"):
        assert api.get(f"/api/v1/stages/{stage.id}/log?{q}").status_code == 422, q


def test_log_outside_the_log_root_is_not_served(api: FlaskClient, session: Session, settings: Settings,
                                                tmp_path: Path) -> None:
    p = make_pipeline(session, settings)
    stage = stage_of(p, "extract")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    session.get(Stage, stage.id).log_path = str(secret)
    session.commit()
    body = api.get(f"/api/v1/stages/{stage.id}/log").json
    assert body["exists"] is False and "secret" not in body["text"]


def test_artefacts_list(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"cams_coarse": "succeeded"})
    stage = stage_of(p, "cams_coarse")
    a = add_artefact(session, settings, stage, f"{p.id}/cams_coarse/previews/a.png", b"PNG" * 10)
    add_artefact(session, settings, stage, f"{p.id}/cams_coarse/v1.h5", b"H" * 100, kind="cams")
    body = api.get(f"/api/v1/stages/{stage.id}/artefacts").json
    assert body["total_size"] == 130
    assert [(x["name"], x["size"], x["kind"]) for x in body["items"]] == [("a.png", 30, "preview"), ("v1.h5", 100, "cams")]
    assert body["items"][0]["path"] == f"{p.id}/cams_coarse/previews/a.png"
    assert body["items"][0]["url"] == f"/artefacts/{a.id}/file"


def test_results_without_an_evaluation(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"evaluate": "succeeded"})
    empty = api.get(f"/api/v1/pipelines/{p.id}/results").json
    assert empty["tables"] == [] and empty["metrics"] is None and empty["status"] == "succeeded"
    assert empty["evaluation"] is None


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_results_of_a_real_evaluation(api: FlaskClient, session: Session, settings: Settings,
                                      real_evaluation: Any) -> None:
    p = make_pipeline(session, settings, statuses={"evaluate": "succeeded"})
    install_evaluation(session, settings, p, real_evaluation)
    body = api.get(f"/api/v1/pipelines/{p.id}/results").json
    ev = body["evaluation"]
    sta, centre = real_evaluation.scored.sta, real_evaluation.scored.centre
    assert ev["schema_version"] == 1 and ev["metrics"] == ["cc", "nss", "sim", "kld", "auc_j", "auc_b", "sauc"]
    assert [(d["method"], d["label"]) for d in ev["dataset"]] == [("sta", "STA"), ("centre", "centre bias")]
    assert ev["dataset"][0]["values"]["cc"] == pytest.approx(sta.dataset["cc"], abs=1e-6)
    assert ev["dataset"][1]["values"]["nss"] == pytest.approx(centre.dataset["nss"], abs=1e-6)
    videos = [v for v in ev["videos"] if v["method"] == "sta"]
    assert {v["video"] for v in videos} == {v.video for v in sta.videos}
    for v in videos:
        assert set(v) >= {"video", "method", "values", "frames_scored", "frames_missing", "frames_nan"}
        assert api.get(v["strip_url"]).mimetype == "image/jpeg"
    assert any(v["overlay_url"] for v in videos)
    assert [r["method"] for r in ev["ablation"]["rows"]][:4] == ["cam_s_coarse", "cam_sa_coarse", "cam_st_coarse",
                                                                 "fusion_coarse"]
    assert body["tables"][0]["title"] == "dataset" and body["problem"] is None
    assert body["metrics"]["name"] == "metrics.json"


def test_results_of_an_unknown_schema_version(api: FlaskClient, session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"evaluate": "succeeded"})
    add_artefact(session, settings, stage_of(p, "evaluate"), f"{p.id}/evaluate/metrics.json",
                 b'{"schema_version": 99, "dataset": []}', kind="metrics")
    body = api.get(f"/api/v1/pipelines/{p.id}/results").json
    assert body["evaluation"] is None and "schema version 99" in body["problem"]


def test_openapi_is_served(api: FlaskClient) -> None:
    r = api.get("/api/v1/openapi.yaml")
    assert r.status_code == 200 and r.mimetype == "application/yaml"
    assert r.get_data(as_text=True).startswith("openapi: 3")
