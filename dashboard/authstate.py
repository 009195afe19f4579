"""Authentication state that every dashboard process shares, in the database.

Why the database: gunicorn runs several processes (and compose may run several dashboards), so a
throttle in process memory lets an attacker spread guesses over them, and a session that only
lives in a signed cookie cannot be revoked. Both tables are tiny: failures older than an hour and
expired sessions are deleted as new rows are written.
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import timedelta
from functools import lru_cache

from flask import request
from sqlalchemy import delete, func, select

from db.models import AuthFailure, AuthSession, utcnow
from db.session import session_scope

FAILED_LIMIT = 10  # failed logins or bearer tokens per client address …
WINDOW_S = 60  # … in this many seconds; then 429 for the rest of the window
KEEP_FAILURES_S = 3600


@lru_cache(maxsize=32)
def _networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


def _trusted(addr: str, spec: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in _networks(spec))


def client_address(trusted_proxies: str) -> str:
    """The client's address: the peer, or — only when the peer is a trusted proxy — the rightmost
    ``X-Forwarded-For`` entry that is not itself a trusted proxy (the left part is client-written)."""
    peer = request.remote_addr or "?"
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return peer[:64]
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted_proxies):
            return hop[:64]
    return peer[:64]


def throttled(url: str, client: str) -> bool:
    """Whether ``client`` used up its failed attempts in the current window."""
    since = utcnow() - timedelta(seconds=WINDOW_S)
    with session_scope(url) as s:
        n = s.scalar(select(func.count()).select_from(AuthFailure)
                     .where(AuthFailure.client == client, AuthFailure.at > since)) or 0
    return n >= FAILED_LIMIT


def record_failure(url: str, client: str) -> None:
    now = utcnow()
    with session_scope(url) as s:
        s.add(AuthFailure(client=client, at=now))
        s.execute(delete(AuthFailure).where(AuthFailure.at < now - timedelta(seconds=KEEP_FAILURES_S)))


def open_session(url: str, fingerprint: str, client: str, lifetime: timedelta) -> str:
    """A new server-side session id; sessions of an older password/token and expired ones go."""
    sid = secrets.token_urlsafe(32)
    now = utcnow()
    with session_scope(url) as s:
        s.execute(delete(AuthSession).where((AuthSession.expires_at < now) | (AuthSession.fingerprint != fingerprint)))
        s.add(AuthSession(sid=sid, fingerprint=fingerprint, client=client, created_at=now, expires_at=now + lifetime))
    return sid


def session_valid(url: str, sid: str, fingerprint: str) -> bool:
    """The session exists, was opened with the current password/token and has not expired."""
    with session_scope(url) as s:
        row = s.get(AuthSession, sid)
        if row is None:
            return False
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=utcnow().tzinfo)
        return row.fingerprint == fingerprint and expires > utcnow()


def close_session(url: str, sid: str | None) -> None:
    if sid:
        with session_scope(url) as s:
            s.execute(delete(AuthSession).where(AuthSession.sid == sid))
