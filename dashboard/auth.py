"""Login, the authentication guard and CSRF protection.

- Browsers log in with the dashboard password/token through a form; the session cookie
  (HttpOnly, SameSite=Lax, Secure when configured) then carries a fingerprint of the token, so
  changing the password logs every browser out.
- API clients send ``Authorization: Bearer <token>``; such requests need no CSRF token because a
  browser never attaches that header on its own.
- Failed logins and failed bearer tokens count against the client address (``X-Forwarded-For``
  only from ``STAPIPE_TRUSTED_PROXIES``) in the database, shared by every dashboard process; the
  cookie also names a server-side session that logout deletes (:mod:`dashboard.authstate`).
- Every state-changing request authenticated by the cookie must carry the session's CSRF token
  (form field ``csrf_token`` or header ``X-CSRF-Token``), including the login form itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, TooManyRequests, Unauthorized

from . import authstate

bp = Blueprint("auth", __name__)

PUBLIC_ENDPOINTS = {"health.healthz", "auth.login", "static"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
FAILED_LOGIN_LIMIT = authstate.FAILED_LIMIT  # failed logins + bearer tokens per client address per minute


class CSRFError(HTTPException):
    code = 400
    description = "The form's security token is missing or wrong. Reload the page and try again."


def _token() -> str:
    return current_app.extensions["stapipe"]["token"]


def _db_url() -> str:
    return current_app.extensions["stapipe"]["settings"].db_url


def _client() -> str:
    return authstate.client_address(current_app.extensions["stapipe"]["settings"].trusted_proxies)


def _too_many() -> TooManyRequests:
    exc = TooManyRequests(f"too many failed logins or tokens from this address; wait {authstate.WINDOW_S} s")
    exc.retry_after = authstate.WINDOW_S
    return exc


def _fingerprint(token: str) -> str:
    return hashlib.sha256(f"stapipe-session:{token}".encode()).hexdigest()[:32]


def _check_token(candidate: str) -> bool:
    return hmac.compare_digest(candidate.encode(), _token().encode())


def csrf_token() -> str:
    """The session's CSRF token (created on first use; exposed to templates)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _csrf_ok() -> bool:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf")
    return isinstance(expected, str) and bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _authenticate() -> ResponseReturnValue | None:
    """Runs before every request: sets ``g.auth`` to "bearer", "session" or None."""
    g.auth = None
    public = request.endpoint in PUBLIC_ENDPOINTS
    bearer = _bearer()
    if bearer is not None and not public:  # a stale token must not break /healthz probes
        client = _client()
        if authstate.throttled(_db_url(), client):
            raise _too_many()
        if not _check_token(bearer):
            authstate.record_failure(_db_url(), client)
            raise Unauthorized("invalid API token")
        g.auth = "bearer"
    elif bearer is not None and _check_token(bearer):
        g.auth = "bearer"
    elif session.get("auth") == _fingerprint(_token()) and authstate.session_valid(
            _db_url(), str(session.get("sid", "")), _fingerprint(_token())):
        g.auth = "session"
    if public:
        return None  # the login view checks CSRF itself, to re-render the form with a message
    if g.auth is None:
        if request.path.startswith("/api/"):
            raise Unauthorized("log in: send 'Authorization: Bearer <token>'")
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if request.method in UNSAFE_METHODS and g.auth == "session" and not _csrf_ok():
        raise CSRFError()
    return None


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths, so the login form is no open redirect."""
    if not target:
        return url_for("pages.pipelines")
    if any(ord(c) < 32 or ord(c) == 127 for c in target):  # CR/LF would split the Location header
        return url_for("pages.pipelines")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("pages.pipelines")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if g.auth:
            return redirect(next_url)
        return render_template("login.html", next_url=next_url, error=None)
    if not _csrf_ok():
        return render_template(
            "login.html", next_url=next_url, error="Your session expired. Please try again."
        ), 400
    client = _client()
    if authstate.throttled(_db_url(), client):
        raise _too_many()
    if not _check_token(request.form.get("password", "")):
        authstate.record_failure(_db_url(), client)
        return render_template("login.html", next_url=next_url, error="Wrong password or token."), 401
    authstate.close_session(_db_url(), session.get("sid"))
    session.clear()  # no session fixation: a fresh session (and CSRF token) after login
    session.permanent = True
    session["auth"] = _fingerprint(_token())
    session["sid"] = authstate.open_session(_db_url(), session["auth"], client,
                                            current_app.permanent_session_lifetime)
    csrf_token()
    return redirect(next_url)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    authstate.close_session(_db_url(), session.get("sid"))  # a copied cookie is dead from now on
    session.clear()
    return redirect(url_for("auth.login"))


def _security_headers(response: Response) -> Response:
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
        "script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_app(app: Flask) -> None:
    app.before_request(_authenticate)
    app.after_request(_security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
