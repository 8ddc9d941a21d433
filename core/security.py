"""Access control in one place: who is asking, may they, and is it really them.

- `current_user()`: from a bearer token (header, or `?access_token=` on GET
  for EventSource/WebSocket, which cannot set headers), else the session.
  Either names a user; the user as stored now decides (roles, permissions),
  and the credential must carry the user's current epoch (core/users.py), so
  a password change, an access change or a deletion ends it at once.
- `login_required`, `admin_required`, `require_channel_access(action, channel)`.
- CSRF: a cookie-authenticated state change must come from an allowed Origin
  or carry the session's `X-CSRF-Token`.
- `origin_allowed()`: the Origin allow-list (WebSocket upgrades, CSRF).
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from flask import Response, current_app, g, render_template, request, session
from werkzeug.exceptions import HTTPException

from core import lifecycle, tokens
from core.errors import abort_json

if TYPE_CHECKING:
    from flask import Flask

    from core.sessions import RedisSession
    from core.users import User, UserStore

P = ParamSpec("P")
R = TypeVar("R")

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PRIVATE_PREFIX = "private-"


def constant_time_equal(a: object, b: object) -> bool:
    return hmac.compare_digest(str(a).encode(), str(b).encode())


def bearer_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _presented_token() -> str:
    token = bearer_token()
    if not token and request.method == "GET":
        token = request.args.get("access_token", "")
    return token


def _users() -> UserStore:
    return current_app.extensions["users"]


def current_user() -> User | None:
    """The User making this request, or None. A token that is presented but
    invalid is a 401 (never silently ignored in favour of the session). The
    answer is kept for the rest of the request (g.user), no longer."""
    if "user" in g:
        return g.user
    user, g.auth = None, None
    token = _presented_token()
    if token:
        claims = _verified_claims(token)
        user = _token_user(claims)
        g.auth, g.claims = "token", claims
    elif session.get("user"):
        user = _session_user()
        g.auth = "session" if user else None
    g.user = user
    if user is not None:  # a stream opened now ends when this account changes
        lifecycle.set_owner(request.environ, user.name)
    return user


def _refuse_token(reason: str) -> NoReturn:
    abort_json(401, reason, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _verified_claims(token: str) -> dict[str, Any]:
    try:
        return tokens.verify(token, current_app.config, current_app.extensions["redis"])
    except tokens.TokenError as exc:
        _refuse_token(str(exc))


def _token_user(claims: dict[str, Any]) -> User:
    """The token's user as stored now: roles and permissions come from the
    store, never from the token's claims, and a token issued before the user's
    last password or access change (or before the name was re-created) is dead."""
    user = _users().get(claims["sub"])
    if user is None:
        _refuse_token("token's user no longer exists")
    if not constant_time_equal(claims["epoch"], user.epoch):
        _refuse_token(
            "token was issued before the account's password or access changed: get a new one"
        )
    return user


def _session_user() -> User | None:
    """The session's user, or None (and the session ended) when the user is
    gone or its password or access changed since the login."""
    user = _users().get(session["user"])
    if user is None or not constant_time_equal(session.get("epoch", ""), user.epoch):
        cast("RedisSession", session).destroy()
        return None
    return user


def start_session(user: User) -> str:
    """Log `user` in with a fresh session id (no fixation); returns the CSRF token."""
    session.clear()
    cast("RedisSession", session).regenerate()
    session["user"] = user.name
    session["epoch"] = user.epoch
    session["csrf"] = secrets.token_urlsafe(32)
    g.user, g.auth = user, "session"
    return session["csrf"]


def _unauthorized() -> NoReturn:
    abort_json(401, "login required", headers={"WWW-Authenticate": 'Bearer realm="api"'})


def login_required(view: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        if current_user() is None:
            _unauthorized()
        return view(*args, **kwargs)

    return wrapped


def administrator_asks(app: Flask, environ: dict[str, Any]) -> bool:
    """Whether the request `environ` carries an administrator's credentials,
    judged from its headers (token or session cookie) before the app handles
    it: core/bodies.py asks before it reads a large body."""
    with app.request_context(environ):
        try:
            user = current_user()
        except HTTPException:  # a token presented but invalid
            return False
        return user is not None and user.is_admin


def admin_required(view: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        user = current_user()
        if user is None:
            _unauthorized()
        if not user.is_admin:
            abort_json(403, "administrators only")
        return view(*args, **kwargs)

    return wrapped


def admin_page(static_file: str) -> Response | tuple[str, int]:
    """An administrators' page, or a page saying how to log in as one (401/403)."""
    user = current_user()
    if user is None or not user.is_admin:
        page = render_template("admin_login_needed.html", user=user)
        return page, 401 if user is None else 403
    return current_app.send_static_file(static_file)


def channel_access_error(action: str, channel: str) -> tuple[int, str] | None:
    """None when allowed, else (status, reason). Subscribing to a public
    channel needs nobody; private channels and publishing need permission."""
    if action == "subscribe" and not channel.startswith(PRIVATE_PREFIX):
        return None
    user = current_user()
    if user is None:
        return 401, f"{action} on {channel!r} needs a login or a bearer token"
    if not user.may(action, channel):
        return 403, f"{user.name} may not {action} on {channel!r}"
    return None


def require_channel_access(action: str, channel: str) -> None:
    error = channel_access_error(action, channel)
    if error:
        status, reason = error
        headers = {"WWW-Authenticate": 'Bearer realm="api"'} if status == 401 else None
        abort_json(status, reason, headers=headers)


def origin_allowed(origin: str | None) -> bool:
    """Same-origin requests, configured ALLOWED_ORIGINS, and non-browser clients
    (which send no Origin) are allowed; any other web page is not."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in current_app.config["ALLOWED_ORIGINS"]:
        return True
    # Host only, not scheme: behind a TLS-terminating proxy the app sees http.
    return urlsplit(origin).netloc == request.host


def csrf_protect() -> None:
    """before_request: refuse cross-site state changes that ride on cookies.

    Browsers send Origin on every cross-site POST; a foreign one is refused
    outright. Without Origin (old browsers, scripts), a request that carries
    the session cookie must repeat the session's CSRF token in X-CSRF-Token.
    Bearer-token requests carry no ambient credential and pass.
    """
    if request.method in SAFE_METHODS or bearer_token():
        return
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin == "null" or not origin_allowed(origin):
            abort_json(403, "cross-site request refused (Origin not allowed)")
        return
    if current_app.config["SESSION_COOKIE_NAME"] not in request.cookies:
        return
    expected = session.get("csrf")
    supplied = request.headers.get("X-CSRF-Token", "")
    if not expected or not supplied or not constant_time_equal(supplied, expected):
        abort_json(403, "missing or wrong X-CSRF-Token (or send an Origin header)")


# Every HTML page: scripts, styles, images and connections (fetch, EventSource,
# WebSocket) only from this origin, no plugins, never framed. The pages have no
# inline script; three have an inline <style>.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


# Sent on every answer unless the view set its own.
DEFAULT_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


def security_headers(response: Response) -> Response:
    headers = response.headers
    # One pass over the names the view set: each missed Headers.get/setdefault
    # raises and catches a KeyError inside Werkzeug, and this runs on every
    # request (five exceptions each: 12% of a plain request's time, profiled).
    present = {name.lower() for name, _ in headers}
    for name, value in DEFAULT_HEADERS:
        if name.lower() not in present:
            headers.add(name, value)
    if "content-security-policy" not in present and response.mimetype == "text/html":
        headers.add("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    location = headers.get("Location") if "location" in present else None
    if location and urlsplit(location).netloc:
        # Werkzeug builds its redirects (a missing trailing slash) from the
        # request's Host header, which any client may set: every redirect of
        # ours stays on this site, so send only its path.
        _, _, path, query, fragment = urlsplit(location)
        headers["Location"] = urlunsplit(("", "", path or "/", query, fragment))
    return response


def init_app(app: Flask) -> None:
    app.before_request(csrf_protect)
    app.after_request(security_headers)
