"""A bounded schemathesis run against openapi.yaml with every check (``--checks all``): no 5xx
from any input, and every answer as documented (issue #14, items 4 and 6).

Runs the real app (SQLite, a pipeline with stages, epochs and an artefact) in-process through
WSGI. ``positive_data_acceptance`` is left out for the three form/submit operations only: their
schema-valid bodies are still rejected with 400/422 for reasons a schema cannot state (the
dataset folder must exist; a CSRF token must match the session's) — those rejections are covered
in test_hostile_input.py and test_auth.py.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
import schemathesis
import yaml
from flask import Flask
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import CHECKS, load_all_checks
from sqlalchemy.orm import Session

from stapipe_settings import Settings

from .conftest import TOKEN, add_artefact, make_pipeline, stage_of

SPEC = Path(__file__).resolve().parents[2] / "dashboard" / "openapi.yaml"
EXAMPLES_PER_OPERATION = 20
# a schema-valid value the server must refuse by meaning: a dataset folder that does not exist, ids
# of pipelines that do not exist, a wrong password
SEMANTIC_REJECTION = {"POST /api/v1/pipelines", "POST /pipelines/new", "POST /login", "GET /api/v1/estimate",
                      "GET /api/v1/compare", "GET /compare"}


def test_schemathesis_all_checks_find_nothing(app: Flask, session: Session, settings: Settings,
                                              artifacts_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard import authstate

    # The ignored_auth check sends wrong tokens: with the throttle on, every later case would be a
    # 429 (documented, and tested in test_auth_shared.py) instead of exercising the operation.
    monkeypatch.setattr(authstate, "FAILED_LIMIT", 10**9)
    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_s_coarse": "failed"},
                      epochs={"train_s_coarse": 3})
    add_artefact(session, settings, stage_of(p, "extract"), f"{p.id}/extract/a.json", b"{}", kind="report")
    load_all_checks()
    every_check = CHECKS.get_all()
    failures: dict[tuple[str, str], str] = {}
    counts: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[str] = collections.Counter()
    t0 = time.monotonic()
    def fuzz(op) -> None:  # noqa: ANN001
        excluded = [c for c in every_check if c.__name__ == "positive_data_acceptance"] \
            if op.label in SEMANTIC_REJECTION else []

        @hsettings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case) -> None:  # noqa: ANN001
            counts[op.label] += 1
            try:
                response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
                statuses["2xx" if response.status_code < 300 else str(response.status_code)] += 1
                case.validate_response(response, checks=every_check, excluded_checks=excluded,
                                       headers={"Authorization": f"Bearer {TOKEN}"})
            except BaseException as exc:  # collect every distinct failure, then report them together
                for sub in getattr(exc, "exceptions", None) or [exc]:
                    failures.setdefault((op.label, type(sub).__name__), str(exc)[:1500])

        run()

    # Two passes: the document as it is (ids anywhere in range: mostly 404s), then with every id
    # parameter narrowed to the ids that exist, so the 200 answers are fuzzed as much.
    for narrow in (False, True):
        spec = yaml.safe_load(SPEC.read_text())
        if narrow:
            _narrow_ids(spec, 20)
        schema = schemathesis.openapi.from_dict(spec)
        schema.app = app
        for result in schema.get_all_operations():
            fuzz(result.ok())
    seconds = time.monotonic() - t0
    report = f"{sum(counts.values())} cases over {len(counts)} operations in {seconds:.0f} s, " \
             f"{len(failures)} distinct failures; answers {dict(sorted(statuses.items()))}\n" + "\n".join(f"== {k}\n{v}" for k, v in failures.items())
    (artifacts_dir / "schemathesis-report.txt").write_text(report)
    assert not failures, report
    assert statuses["429"] == 0 and statuses["2xx"] >= 150, statuses
    assert sum(counts.values()) >= 600 and len(counts) >= 20, report


def _narrow_ids(spec: dict, top: int) -> None:
    """Every integer path parameter ``*_id`` limited to 1 … ``top`` (in place)."""
    params = [*spec["components"]["parameters"].values()]
    for item in spec["paths"].values():
        for op in item.values():
            if isinstance(op, dict):
                params += [p for p in op.get("parameters", []) if "name" in p]
    for p in params:
        if p.get("in") == "path" and p["name"].endswith("_id"):
            p["schema"] = {"type": "integer", "minimum": 1, "maximum": top}


@pytest.fixture
def backend() -> str:
    return "sqlite"
