"""A small HTTP client for the dashboard's JSON API (used by ``stapipe submit/status/rerun/cancel``)."""

from __future__ import annotations

import json
from typing import Any

import requests


class ApiError(RuntimeError):
    """An error answer from the API (or no answer), with its per-field messages if any."""

    def __init__(self, status: int | None, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.fields = fields or {}

    def __str__(self) -> str:
        head = f"HTTP {self.status}: {self.args[0]}" if self.status else str(self.args[0])
        return "\n".join([head, *(f"  {k or 'config'}: {v}" for k, v in self.fields.items())])


class ApiClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0):
        self.base = base_url.rstrip("/") + "/api/v1"
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ApiError(None, f"cannot reach the dashboard at {self.base}: {exc.__class__.__name__}") from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            msg = body.get("message") if isinstance(body, dict) else r.reason
            raise ApiError(r.status_code, msg or r.reason, body.get("fields") if isinstance(body, dict) else None)
        return body

    def pipelines(self, page: int = 1, per_page: int = 20) -> dict[str, Any]:
        return self._call("GET", "/pipelines", params={"page": page, "per_page": per_page})

    def submit(self, name: str, dataset_root: str, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/pipelines", json={"name": name, "dataset_root": dataset_root,
                                                      "preset": preset, "overrides": overrides})

    def estimate(self, dataset_root: str, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
        return self._call("GET", "/estimate", params={"dataset_root": dataset_root, "preset": preset,
                                                      "overrides": json.dumps(overrides)})

    def pipeline(self, pipeline_id: int) -> dict[str, Any]:
        return self._call("GET", f"/pipelines/{pipeline_id}")

    def cancel(self, pipeline_id: int) -> dict[str, Any]:
        return self._call("POST", f"/pipelines/{pipeline_id}/cancel")

    def stage(self, stage_id: int) -> dict[str, Any]:
        return self._call("GET", f"/stages/{stage_id}")

    def rerun_plan(self, stage_id: int) -> dict[str, Any]:
        return self._call("GET", f"/stages/{stage_id}/rerun-plan")

    def rerun(self, stage_id: int) -> dict[str, Any]:
        return self._call("POST", f"/stages/{stage_id}/rerun")
