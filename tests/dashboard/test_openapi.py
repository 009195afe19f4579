"""Every route of the app is in openapi.yaml, and everything in openapi.yaml is a route."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from flask import Flask

SPEC = Path(__file__).resolve().parents[2] / "dashboard" / "openapi.yaml"


def app_operations(app: Flask) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        ops |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return ops


def spec_operations() -> set[tuple[str, str]]:
    spec = yaml.safe_load(SPEC.read_text())
    return {(path, method) for path, item in spec["paths"].items() for method in item
            if method in ("get", "post", "put", "patch", "delete")}


def test_every_route_is_documented_and_vice_versa(app: Flask) -> None:
    in_app, in_spec = app_operations(app), spec_operations()
    assert in_app - in_spec == set(), "routes missing from openapi.yaml"
    assert in_spec - in_app == set(), "documented operations the app does not have"


def test_spec_is_openapi_3_with_resolvable_refs() -> None:
    text = SPEC.read_text()
    spec = yaml.safe_load(text)
    assert spec["openapi"].startswith("3.")
    for ref in set(re.findall(r'\$ref: "#/([^"]+)"', text)):
        node = spec
        for part in ref.split("/"):
            node = node[part]
    path_params = {p: set(re.findall(r"{(\w+)}", p)) for p in spec["paths"]}
    for path, names in path_params.items():
        item = spec["paths"][path]
        declared = {prm.get("name") or prm["$ref"].rsplit("/", 1)[1] for prm in item.get("parameters", [])}
        for op in item.values():
            if isinstance(op, dict):
                declared |= {prm.get("name") or prm["$ref"].rsplit("/", 1)[1] for prm in op.get("parameters", [])}
        normalised = {"pipeline_id" if d == "PipelineId" else "stage_id" if d == "StageId" else d for d in declared}
        assert names <= normalised, path
