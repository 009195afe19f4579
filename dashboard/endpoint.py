"""Where the CLI finds the dashboard and its token, and how it says where it looked.

One source of truth for the URL: ``stapipe up``/``demo`` write the address they serve on to
``$STAPIPE_HOME/dashboard_url``; the client commands use ``--url``, else ``STAPIPE_API_URL`` when
it is set, else that file, else the default. Every error names the source it used, so a changed
port or a wrong token is a one-line fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from stapipe_settings import Settings
from worker.embedded import url_path


@dataclass(frozen=True)
class Endpoint:
    url: str
    url_source: str  # e.g. "--url", "STAPIPE_API_URL", "/home/var/dashboard_url (written by `stapipe up`)"
    token: str | None
    token_source: str


def resolve(settings: Settings, url: str | None = None, token: str | None = None) -> Endpoint:
    from .secrets import dashboard_token, token_path

    if url:
        u, us = url, "--url"
    elif os.environ.get("STAPIPE_API_URL"):
        u, us = settings.api_url, "STAPIPE_API_URL"
    else:
        path = url_path(settings)
        try:
            u, us = path.read_text(encoding="utf-8").strip(), f"{path} (written by `stapipe up`)"
        except OSError:
            u, us = settings.api_url, f"the default (no STAPIPE_API_URL, no {path}: is `stapipe up` running?)"
        if not u:
            u, us = settings.api_url, "the default"
    t: str | None
    if token:
        t, ts = token, "--token"
    elif settings.dashboard_password:
        t, ts = settings.dashboard_password, "STAPIPE_DASHBOARD_PASSWORD"
    else:
        t = dashboard_token(settings, create=False)[0]
        ts = f"{token_path(settings)}" if t else f"nowhere (no --token, no STAPIPE_DASHBOARD_PASSWORD, no {token_path(settings)})"
    return Endpoint(u.rstrip("/"), us, t, ts)


def explain(endpoint: Endpoint, status: int | None) -> str | None:
    """The hint added to an API error: where the URL or the token came from and what to set."""
    if status is None:
        return (f"  dashboard URL {endpoint.url} from {endpoint.url_source}; "
                "start it with `stapipe up`, or set STAPIPE_API_URL / --url")
    if status == 401:
        return (f"  token from {endpoint.token_source}; pass --token or set STAPIPE_DASHBOARD_PASSWORD "
                "to the dashboard's password")
    return None
