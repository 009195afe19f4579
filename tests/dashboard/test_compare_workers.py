"""Workers page/API, compare page/API, clone-and-edit, reused stages, progress phrases, headline.

Rows come from the real writers where one runs in-process: ``worker.registry.register`` (what
every worker calls), ``submit_pipeline`` for the pipeline that reuses (the real reuse path)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from stapipe_settings import Settings

from .conftest import add_artefact, add_epochs, csrf_of, make_pipeline, stage_of


def test_workers_api_and_page(browser_client: FlaskClient, api: FlaskClient, session: Session,
                              settings: Settings) -> None:
    from worker.registry import register

    register(session, name="gpu0@box", host="box", queues=["gpu"], device="cuda: NVIDIA H200", pid=7, concurrency=1)
    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_s_coarse": "running"})
    stage_of(p, "train_s_coarse").worker_host = "gpu0@box"
    session.commit()
    body = api.get("/api/v1/workers").get_json()
    (w,) = body["items"]
    assert (w["name"], w["queues"], w["device"], w["online"]) == ("gpu0@box", ["gpu"], "cuda: NVIDIA H200", True)
    assert [s["kind"] for s in w["current_stages"]] == ["train_s_coarse"] and body["queues_served"] == ["gpu"]
    html = browser_client.get("/workers").get_data(as_text=True)
    assert 'data-worker="gpu0@box"' in html and "train_s_coarse" in html
    assert 'data-unserved="cpu"' in html and 'data-unserved="gpu"' not in html


def test_pipeline_page_says_when_no_worker_consumes_a_queued_stage(browser_client: FlaskClient, api: FlaskClient,
                                                                   session: Session, settings: Settings) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "queued"})
    html = browser_client.get(f"/pipelines/{p.id}").get_data(as_text=True)
    assert 'id="unserved-cpu"' in html and "stapipe worker --queues cpu" in html
    assert list(api.get(f"/api/v1/pipelines/{p.id}").get_json()["unserved_queues"]) == ["cpu"]
    from worker.registry import register

    register(session, name="cpu@box", host="box", queues=["cpu"], device="cpu", pid=1, concurrency=2)
    assert 'id="unserved-cpu"' not in browser_client.get(f"/pipelines/{p.id}").get_data(as_text=True)


def test_progress_reads_epoch_of_epochs_and_batch_of_batches(browser_client: FlaskClient, api: FlaskClient,
                                                            session: Session, settings: Settings) -> None:
    from worker.progress import progress_text, rounded

    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_sa_coarse": "running"})
    p.config = {"preset": "tiny", "coarse": {"sa": {"epochs": 6}}}
    s = stage_of(p, "train_sa_coarse")
    s.progress_done, s.progress_total, s.progress_what = 40, 88, "epoch 3"
    session.commit()
    assert api.get(f"/api/v1/stages/{s.id}").get_json()["progress"]["text"] == "epoch 3/6 · batch 40/88"
    assert api.get(f"/api/v1/stages/{s.id}/metrics").get_json()["progress"]["text"] == "epoch 3/6 · batch 40/88"
    assert "epoch 3/6 · batch 40/88" in browser_client.get(f"/stages/{s.id}").get_data(as_text=True)
    assert "epoch 3/6 · batch 40/88" in browser_client.get(f"/pipelines/{p.id}").get_data(as_text=True)
    assert progress_text("extract", {}, 3, 9, "videos", 1) == "3/9 videos (1 failed)"
    # the trainer's BatchNorm pass after an epoch's batches (sta_models.trainer._precise_batchnorm)
    assert (progress_text("train_sa_coarse", p.config, 2, 5, "epoch 3 · BatchNorm statistics")
            == "epoch 3/6 · BatchNorm statistics · batch 2/5")
    assert (rounded(0.41666666666), rounded(None), rounded(12), rounded(1e-7)) == ("0.417", "–", "12", "1.00e-07")


def test_epoch_log_line_is_rounded_and_leaves_out_missing_values() -> None:
    from sta_models.callbacks import EpochMetrics, epoch_line

    m = EpochMetrics(epoch=2, train_loss=0.41666666666, val_loss=None, val_accuracy=None, lr=0.01, seconds=1.0,
                     samples_per_s=3.0, extra={"cc": 0.123456})
    assert epoch_line(2, 6, m, 1.25) == "epoch 2/6: train loss 0.4167, cc 0.123 (1.2 s)"


def _evaluated(session: Session, settings: Settings, name: str, cc: float, lr: float):  # type: ignore[no-untyped-def]
    p = make_pipeline(session, settings, name=name, statuses={k: "succeeded" for k in (
        "extract", "train_sta", "evaluate")}, epochs={"train_sta": 3})
    p.status = "succeeded"
    p.config = {"preset": "tiny", "sta": {"lr": lr, "epochs": 3}, "split_seed": 0}
    stage_of(p, "evaluate").summary = {"metrics": {"sta": {"cc": cc, "nss": 2.0, "kld": 1.0 - cc},
                                                   "centre": {"cc": 0.3}}}
    session.commit()
    return p


def test_compare_api_and_page(browser_client: FlaskClient, api: FlaskClient, session: Session,
                              settings: Settings) -> None:
    a = _evaluated(session, settings, "a", 0.7, 0.01)
    b = _evaluated(session, settings, "b", 0.8, 0.001)
    body = api.get(f"/api/v1/compare?pipelines={a.id},{b.id}").get_json()
    assert [p["headline"]["cc"] for p in body["pipelines"]] == [0.7, 0.8]
    cc = next(r for r in body["results"] if r["metric"] == "cc")
    kld = next(r for r in body["results"] if r["metric"] == "kld")
    assert cc["best"] == 1 and kld["best"] == 1 and kld["lower_is_better"]
    assert body["config_diff"] == [{"key": "sta.lr", "values": [0.01, 0.001]}]
    assert len(body["curves"]["train_sta"][str(a.id)]) == 3
    html = browser_client.get(f"/compare?pipelines={a.id}&pipelines={b.id}").get_data(as_text=True)
    assert 'data-key="sta.lr"' in html and 'data-key="preset"' not in html
    listing = browser_client.get("/").get_data(as_text=True)
    assert re.search(rf'data-pipeline-id="{b.id}".*?data-col="cc">0.800<', listing, re.S)
    for bad in ("pipelines=1", "pipelines=x,1", ""):
        r = api.get(f"/api/v1/compare?{bad}")
        assert r.status_code == 422 and "pipelines" in r.get_json()["fields"]
    assert api.get(f"/api/v1/compare?pipelines={a.id},999").status_code == 404
    assert browser_client.get("/compare?pipelines=1").status_code == 422


def test_clone_prefills_the_form_and_keeps_hidden_settings(browser_client: FlaskClient, session: Session,
                                                         settings: Settings, sent) -> None:  # type: ignore[no-untyped-def]
    from sta_models.config import preset

    cfg = preset("tiny").model_dump(mode="json")
    cfg["sta"]["epochs"] = 2
    cfg["pseudo_gt"] = {**cfg["pseudo_gt"]}
    key, value = next((k, v) for k, v in cfg["pseudo_gt"].items() if isinstance(v, float))
    cfg["pseudo_gt"][key] = value / 2
    p = make_pipeline(session, settings, name="orig")
    p.config = cfg
    session.commit()
    html = browser_client.get(f"/pipelines/new?from={p.id}").get_data(as_text=True)
    assert 'value="orig (copy)"' in html and 'name="sta.epochs" value="2"' in html
    assert 'value="ave-synth"' in html and 'id="clone-note"' in html
    form = {k: v for k, v in re.findall(r'name="([\w.]+)" value="([^"]*)"', html)}
    form.update(csrf_token=csrf_of(browser_client), preset="tiny")
    form["sta.epochs"] = "3"
    r = browser_client.post("/pipelines/new", data=form)
    assert r.status_code == 302, r.get_data(as_text=True)[:2000]
    from db.models import Pipeline

    new = session.get(Pipeline, int(r.headers["Location"].rsplit("/", 1)[1]))
    assert new.config["sta"]["epochs"] == 3 and new.config["pseudo_gt"][key] == value / 2
    assert browser_client.get("/pipelines/new?from=999").status_code == 404


def test_reused_stage_shows_the_source_stage(browser_client: FlaskClient, api: FlaskClient, session: Session,
                                             settings: Settings) -> None:
    src = make_pipeline(session, settings, name="src", statuses={"extract": "succeeded",
                                                                 "train_s_coarse": "succeeded"})
    s_src = stage_of(src, "train_s_coarse")
    add_epochs(session, s_src, 1, 4)
    add_artefact(session, settings, s_src, f"{src.id}/train_s_coarse/best.pt", b"x", kind="checkpoint")
    log = settings.log_dir / f"{src.id}" / "train_s_coarse.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("epoch 1/4: train loss 1.0000\n")
    dst = make_pipeline(session, settings, name="dst")
    s_dst = stage_of(dst, "train_s_coarse")
    s_dst.status, s_dst.reused_from_id = "reused", s_src.id
    session.commit()
    assert len(api.get(f"/api/v1/stages/{s_dst.id}/metrics").get_json()["epochs"]) == 4
    assert "train loss" in api.get(f"/api/v1/stages/{s_dst.id}/log").get_json()["text"]
    assert api.get(f"/api/v1/stages/{s_dst.id}/artefacts").get_json()["items"][0]["name"] == "best.pt"
    html = browser_client.get(f"/stages/{s_dst.id}").get_data(as_text=True)
    assert 'id="reused-note"' in html and f'href="/stages/{s_src.id}"' in html and "best.pt" in html
    assert "skipped" not in html


def test_a_tied_best_is_not_marked() -> None:
    from dashboard.compare import best_index

    assert best_index([0.5, 0.5], "cc") is None and best_index([1.2, 1.2, 1.5], "kld") is None
    assert best_index([0.5, 0.7, 0.7], "cc") is None and best_index([0.5, 0.7, None], "cc") == 1
    assert best_index([1.2, 1.1], "kld") == 1 and best_index([0.5, None], "cc") is None


def test_headline_reads_the_stage_summary() -> None:
    """The list's path: the evaluate stage's stored summary, no file read (files: test_evaluation_result)."""
    from dashboard.results import headline
    from db.models import Stage

    assert headline(Stage(status="succeeded", summary={"metrics": {"sta": {"cc": 0.5, "nss": None}}})) == {"cc": 0.5}
    assert headline(Stage(status="running", summary={"metrics": {"sta": {"cc": 0.5}}})) is None
    assert headline(None) is None
