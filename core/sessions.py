"""Server-side sessions: the cookie carries only a signed session id; the
data lives in Redis with an idle TTL (refreshed on every request).

`session.regenerate()` (at login: no session fixation) gives the session a
new id and drops the old one; `session.destroy()` (logout, or a session that
`core.security` found outdated) deletes it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import request
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import BadSignature, Signer
from werkzeug.datastructures import CallbackDict

from core.keys import Keys

if TYPE_CHECKING:
    import redis
    from flask import Flask, Request, Response


def _mark_modified(session: RedisSession) -> None:
    session.modified = True


class RedisSession(CallbackDict, SessionMixin):
    def __init__(self, initial: Mapping[str, Any] | None = None, sid: str | None = None) -> None:
        # A module-level callback, not a closure over `self`: that would make
        # every request's session a reference cycle, left to the cycle collector.
        super().__init__(initial, _mark_modified)
        self.sid = sid
        self.modified = False
        self._regenerate = False
        self._destroy = False

    def regenerate(self) -> None:
        self._regenerate = True
        self._destroy = False  # an outdated session ended earlier in this request: log in anew
        self.modified = True

    def destroy(self) -> None:
        self.clear()
        self._destroy = True


class RedisSessionInterface(SessionInterface):
    def __init__(self, redis_client: redis.Redis, prefix: str, idle_ttl: float) -> None:
        self.redis_client = redis_client
        self.keys = Keys(prefix)
        self.idle_ttl = int(idle_ttl)

    def _signer(self, app: Flask) -> Signer:
        if app.secret_key is None:  # (load_settings always sets one)
            raise RuntimeError("server-side sessions need a SECRET_KEY")
        return Signer(app.secret_key, salt="session-id")

    def open_session(self, app: Flask, request: Request) -> RedisSession:
        if "HTTP_COOKIE" not in request.environ:
            # No cookie at all (the streaming clients, scripts): parsing none costs
            # more than the rest of this, on every one of 10,000 connects.
            return RedisSession()
        raw = request.cookies.get(self.get_cookie_name(app))
        if raw:
            try:
                sid = self._signer(app).unsign(raw).decode()
            except BadSignature:
                return RedisSession()
            data = self.redis_client.get(self.keys.session(sid))
            if data is not None:
                return RedisSession(json.loads(data), sid=sid)
        return RedisSession()

    # `session` is always the RedisSession open_session made: narrower than the base's
    def save_session(
        self,
        app: Flask,
        session: RedisSession,  # type: ignore[override]
        response: Response,
    ) -> None:
        name = self.get_cookie_name(app)
        domain, path = self.get_cookie_domain(app), self.get_cookie_path(app)
        if session._destroy or (not session and session.sid):
            if session.sid:
                self.redis_client.delete(self.keys.session(session.sid))
            response.delete_cookie(name, domain=domain, path=path)
            return
        if not session:
            return  # nothing to keep: no cookie for anonymous visitors
        if session._regenerate and session.sid:
            self.redis_client.delete(self.keys.session(session.sid))
            session.sid = None
        if session.sid is None:
            session.sid = secrets.token_urlsafe(32)
        if session.modified:
            self.redis_client.set(
                self.keys.session(session.sid), json.dumps(dict(session)), ex=self.idle_ttl
            )
        else:
            self.redis_client.expire(self.keys.session(session.sid), self.idle_ttl)
        response.set_cookie(
            name,
            self._signer(app).sign(session.sid).decode(),
            domain=domain,
            path=path,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure or self.get_cookie_secure(app),
        )
        response.vary.add("Cookie")
