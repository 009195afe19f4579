"""The dashboard's login token and Flask secret key, generated once and shared through files.

When ``STAPIPE_DASHBOARD_PASSWORD`` / ``STAPIPE_SECRET_KEY`` are unset (the embedded default), a
random value is generated and persisted under ``settings.home`` so that every gunicorn worker, the
workers' CLI and restarts agree on the same token; a per-process value would log users out at
random and make ``stapipe submit`` unable to authenticate.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from stapipe_settings import Settings

TOKEN_FILE = "dashboard_token"
SECRET_KEY_FILE = "dashboard_secret_key"


def _read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """Return (value, created). Creation is race-free: write a private temp file, then ``link`` it.

    ``os.link`` fails if the target exists, so concurrent gunicorn workers all end up reading the
    one value that won.
    """
    try:
        return path.read_text(encoding="utf-8").strip(), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(make() + "\n")
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text(encoding="utf-8").strip(), created


def token_path(settings: Settings) -> Path:
    return settings.resolved_home() / TOKEN_FILE


def dashboard_token(settings: Settings, *, create: bool = True) -> tuple[str | None, bool]:
    """(token, generated_now). The configured password wins; else the persisted generated one."""
    if settings.dashboard_password:
        return settings.dashboard_password, False
    path = token_path(settings)
    if not create:
        try:
            return path.read_text(encoding="utf-8").strip() or None, False
        except FileNotFoundError:
            return None, False
    return _read_or_create(path, lambda: secrets.token_urlsafe(24))


def secret_key(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key
    return _read_or_create(settings.resolved_home() / SECRET_KEY_FILE, lambda: secrets.token_hex(32))[0]
