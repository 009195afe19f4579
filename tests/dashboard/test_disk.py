"""Disk on the dashboard: usage in the pipeline API and page, the estimate, gc (API and page)."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from sta_models.ave import load_dataset
from sta_models.config import preset
from sta_models.disk_estimate import DatasetSize, estimate
from stapipe_settings import Settings

from .conftest import add_artefact, csrf_of, make_pipeline, stage_of


def write_dataset(settings: Settings) -> Path:
    """12 annotated (dummy) videos in the data root's ``ave-synth``."""
    root = settings.data_dir / "ave-synth"
    (root / "AVE").mkdir(parents=True, exist_ok=True)
    lines = ["Category&VideoID&Quality&StartTime&EndTime"]
    for i in range(12):
        lines.append(f"Church bell&v{i:02d}&good&{i % 4}&{6 + i % 5}")
        (root / "AVE" / f"v{i:02d}.mp4").write_bytes(b"x")
    (root / "Annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_pipeline_api_and_page_show_bytes_per_stage(browser_client: FlaskClient, api: FlaskClient,
                                                    session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_s_coarse": "running"})
    add_artefact(session, settings, stage_of(p, "extract"), f"{p.id}/extract/a.h5", b"0" * 3000, "features")
    add_artefact(session, settings, stage_of(p, "extract"), f"{p.id}/extract/b.h5", b"0" * 1000, "features")
    add_artefact(session, settings, stage_of(p, "train_s_coarse"), f"{p.id}/train_s_coarse/last.pt", b"1" * 500,
                 "checkpoint")
    body = api.get(f"/api/v1/pipelines/{p.id}").json
    assert body["disk"]["bytes"] == 4500 and body["disk"]["reused_bytes"] == 0
    by = {s["kind"]: s for s in body["disk"]["stages"]}
    assert by["extract"] == {"kind": "extract", "bytes": 4000, "files": 2, "reused_from_id": None}
    assert by["train_s_coarse"]["bytes"] == 500 and by["evaluate"]["files"] == 0
    html = browser_client.get(f"/pipelines/{p.id}").get_data(as_text=True)
    assert '<dd id="disk-total">4.4 KiB' in html and "3.9 KiB" in html  # total and the extract row


def test_estimate_is_the_library_estimate_of_the_dataset(api: FlaskClient, settings: Settings) -> None:
    root = write_dataset(settings)
    r = api.get("/api/v1/estimate", query_string={"dataset_root": "ave-synth", "preset": "tiny",
                                                  "overrides": '{"extract.size": 64}'})
    assert r.status_code == 200, r.json
    cfg = preset("tiny")
    cfg.extract.size = 64
    ds = load_dataset(root)
    want = estimate(cfg, DatasetSize.of_rows(ds.rows, ds.test))
    assert r.json["stages"] == want and r.json["bytes"] == sum(want.values())
    assert r.json["dataset"]["videos"] == 12 and r.json["dataset"]["rows"] == 12
    assert r.json["bytes_keeping_all_checkpoints"] > r.json["bytes"]
    bad = api.get("/api/v1/estimate", query_string={"dataset_root": "../x", "preset": "huge", "overrides": "{"})
    assert bad.status_code == 422 and bad.json["fields"] == {"overrides": "not JSON"}
    bad = api.get("/api/v1/estimate", query_string={"dataset_root": "nowhere", "preset": "huge"})
    assert bad.status_code == 422 and set(bad.json["fields"]) == {"dataset_root", "preset"}
    (root / "Annotations.txt").unlink()  # a folder without annotations: a field error, not a 500
    bad = api.get("/api/v1/estimate", query_string={"dataset_root": "ave-synth"})
    assert bad.status_code == 422 and bad.json["fields"]["dataset_root"].startswith("no annotations")
    assert str(settings.home) not in bad.get_data(as_text=True)


def test_gc_dry_run_and_delete_through_the_api_and_the_page(browser_client: FlaskClient, api: FlaskClient,
                                                            session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings)
    old = settings.artefact_dir / str(p.id) / "old_kind"
    old.mkdir(parents=True)
    (old / "x.bin").write_bytes(b"0" * 2048)
    running = settings.artefact_dir / str(p.id) / "extract"  # a stage folder of a running pipeline
    running.mkdir(parents=True)
    plan = api.get("/api/v1/disk/gc").json
    assert plan == {"bytes": 2048, "items": [{"path": f"{p.id}/old_kind", "bytes": 2048, "reason": "orphan",
                                              "stage_id": None, "pipeline_id": None, "kind": None}]}
    assert api.get("/api/v1/disk/gc?intermediates=1").json == plan  # the pipeline is still running
    html = browser_client.get("/disk").get_data(as_text=True)
    assert f"{p.id}/old_kind" in html and "Delete, free 2.0 KiB" in html
    r = browser_client.post("/disk/gc", data={"csrf_token": csrf_of(browser_client), "intermediates": "0"})
    assert r.status_code == 302 and not old.exists() and running.is_dir()
    assert "Deleted 1 folder(s), freed 2.0 KiB." in browser_client.get("/disk").get_data(as_text=True)
    done = api.post("/api/v1/disk/gc", json={"intermediates": True}).json
    assert done == {"freed": 0, "bytes": 0, "items": []}
    assert api.post("/api/v1/disk/gc", json={"intermediates": "yes"}).status_code == 422
