"""Hostile and absurd input (issue #14, items 5 and 6): every one a 4xx with a clear message."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from db.models import Pipeline
from stapipe_settings import Settings

from .conftest import Sent


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _submit(api: FlaskClient, **overrides: Any) -> Any:
    return api.post("/api/v1/pipelines", json={"name": "x", "dataset_root": "ave-synth", "preset": "tiny",
                                               "overrides": overrides})


@pytest.mark.parametrize("path", [
    "/api/v1/pipelines/99999999999999999999999", "/api/v1/pipelines/2147483648", "/api/v1/pipelines/0",
    "/api/v1/stages/9223372036854775808", "/api/v1/stages/18446744073709551616/metrics",
    "/api/v1/pipelines/2147483647/results", "/pipelines/99999999999999999999", "/stages/4294967296",
    "/artefacts/99999999999999999999/file",
])
def test_ids_beyond_the_database_range_are_404(api: FlaskClient, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 404, (path, r.status_code)


@pytest.mark.parametrize("query", ["since=99999999999999999999", "since=2147483648", "since=-1", "limit=0"])
def test_since_is_range_checked(api: FlaskClient, session, settings: Settings, query: str) -> None:  # noqa: ANN001
    from .conftest import make_pipeline, stage_of

    p = make_pipeline(session, settings)
    r = api.get(f"/api/v1/stages/{stage_of(p, 'train_s_coarse').id}/metrics?{query}")
    assert r.status_code == 422 and set(r.json["fields"]) <= {"since", "limit"}


@pytest.mark.parametrize("key, value, message", [
    ("sta.lr", float("nan"), "finite"), ("sta.lr", float("inf"), "finite"), ("sta.lr", "Infinity", "finite"),
    ("evaluate.blur_sigma", float("-inf"), "finite"), ("extract.min_success_fraction", "NaN", "finite"),
    ("sta.seed", 2**32, "4294967295"), ("split_seed", 2**40, "4294967295"), ("evaluate.seed", -1, "0"),
    ("evaluate.n_splits", 10**12, "10000"), ("sta.epochs", True, "not true/false"),
    ("sta.epochs", 10**6, "1000"), ("sta.decay_epochs", [100000], "between 1 and 1000"),
    ("sta.device", "cuda:99999", "N < 1024"), ("sta.device", "cuda:²", "cuda:N"),
    ("pseudo_gt.alpha_step", 1e-300, "0.001"), ("sta.audio_weights", "a\x00b", "NUL"),
    ("sta.backbone_weights", "w" * 5000, "1000 characters"),
])
def test_config_values_that_would_fail_later_are_422(api: FlaskClient, sent: Sent, key: str, value: Any,
                                                       message: str) -> None:
    r = _submit(api, **{key: value})
    assert r.status_code == 422, r.json
    assert message in r.json["fields"][key], r.json
    assert sent.messages == []


def test_raw_json_nan_and_infinity_literals_are_422(api: FlaskClient, sent: Sent) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = '{"name": "x", "dataset_root": "ave-synth", "preset": "tiny", "overrides": {"sta.lr": ' + literal + "}}"
        r = api.post("/api/v1/pipelines", data=body, content_type="application/json")
        assert r.status_code == 422 and "finite" in r.json["fields"]["sta.lr"]
    assert sent.messages == []


@pytest.mark.parametrize("name, message", [
    ("a\x00b", "control characters"), ("line\r\nbreak", "control characters"), ("n" * 201, "at most 200"),
])
def test_bad_names_are_422(api: FlaskClient, name: str, message: str) -> None:
    r = api.post("/api/v1/pipelines", json={"name": name, "dataset_root": "ave-synth", "preset": "tiny"})
    assert r.status_code == 422 and message in r.json["fields"]["name"]


def test_dataset_paths_nul_and_over_long(api: FlaskClient, settings: Settings) -> None:
    r = api.post("/api/v1/pipelines", json={"name": "x", "dataset_root": "ave\x00synth", "preset": "tiny"})
    assert r.status_code == 422 and "NUL" in r.json["fields"]["dataset_root"]
    deep = settings.data_dir
    while len(str(deep)) <= 1000:  # a real folder whose full path exceeds the column
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    rel = str(deep.relative_to(settings.data_dir))
    r = api.post("/api/v1/pipelines", json={"name": "x", "dataset_root": rel, "preset": "tiny"})
    assert r.status_code == 422 and "longer than 1000" in r.json["fields"]["dataset_root"]
    r = api.post("/api/v1/pipelines", json={"name": "x", "dataset_root": "x" * 100_000, "preset": "tiny"})
    assert r.status_code == 422


@pytest.mark.parametrize("depth", [33, 1000, 50_000])
def test_deeply_nested_json_is_400(api: FlaskClient, depth: int) -> None:
    r = api.post("/api/v1/pipelines", data="[" * depth + "]" * depth, content_type="application/json")
    assert r.status_code == 400 and "nested deeper than 32" in r.json["message"]
    body = '{"name": "x", "overrides": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    assert api.post("/api/v1/pipelines", data=body, content_type="application/json").status_code == 400


def test_brackets_inside_strings_do_not_count(api: FlaskClient, session) -> None:  # noqa: ANN001
    r = api.post("/api/v1/pipelines", json={"name": "[" * 300 + "\\\"{", "dataset_root": "ave-synth",
                                            "preset": "tiny"})
    assert r.status_code == 422 and "name" in r.json["fields"]  # too long, not "nested"


@pytest.mark.parametrize("target", ["/%0d%0aSet-Cookie:%20x=1", "/ok%0aLocation:%20//evil", "/%00", "/\t/evil"])
def test_control_characters_in_next_fall_back_home(client: FlaskClient, target: str) -> None:
    from .conftest import login

    client.get(f"/login?next={target}")
    with client.session_transaction() as sess:
        csrf = sess["csrf"]
    from .conftest import TOKEN

    r = client.post(f"/login?next={target}", data={"password": TOKEN, "csrf_token": csrf})
    assert r.status_code == 302 and r.headers["Location"] == "/", r.headers.get("Location")
    assert "Set-Cookie: x" not in str(r.headers)
    assert login(client).status_code == 302


def test_nothing_was_stored(api: FlaskClient, session) -> None:  # noqa: ANN001
    for payload in ({"name": "a\x00"}, {"name": "x", "overrides": {"sta.lr": "NaN"}}):
        api.post("/api/v1/pipelines", json={"dataset_root": "ave-synth", "preset": "tiny", **payload})
    assert session.query(Pipeline).count() == 0
