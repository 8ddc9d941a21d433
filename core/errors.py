"""JSON errors: every failure a client can cause answers a 4xx with a reason.

`abort_json(400, "why")` stops a handler; the handlers below turn Werkzeug's
HTTP errors, Redis outages and unexpected exceptions into JSON bodies without
stack traces.

A browser navigating to a page (its Accept prefers text/html to JSON) gets
the same status, headers and reason as a small HTML page instead
(templates/error.html); API clients (`application/json`, `*/*`, no Accept)
keep the JSON body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import redis
from flask import Response, current_app, jsonify, render_template, request
from redis.exceptions import AskError, ClusterDownError, SlotNotCoveredError, TryAgainError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from core.stream_log import NotReplicated

# Redis cannot serve the request now, and will soon: a 503 (a WebSocket closes
# with 1013, a long-poll is let go), never a 500. Beside a lost connection and
# a timeout, a cluster's own: a master down and not yet replaced, a slot moving
# (TRYAGAIN; MOVED and ASK past redis-py's retries), a slot nobody holds yet.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    AskError,
    SlotNotCoveredError,
)

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)


def wants_html() -> bool:
    """True when the request prefers text/html to JSON: a browser's navigation
    (`text/html,...,*/*;q=0.8`). `*/*` and no Accept at all (curl, fetch(),
    EventSource) prefer JSON, listed first. A WebSocket handshake is never
    answered with HTML: its refusal's reason is read back from the JSON body
    (core/transports/websocket.py `refusal`)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def json_response(status: int, message: str, **extra: Any) -> Response:
    """The error response: JSON `{"error": message, **extra}`, or an HTML page
    for a browser (wants_html), with the same status either way."""
    response = _html_error(status, message) if wants_html() else None
    if response is None:
        response = jsonify({"error": message, **extra})
        response.status_code = status
    response.vary.add("Accept")  # one URL, two bodies: caches must tell them apart
    return response


def _html_error(status: int, message: str) -> Response | None:
    """The HTML page, or None (then JSON) if rendering fails: an error page
    must not fail in turn. Jinja escapes `message`, which may hold user input."""
    try:
        page = render_template(
            "error.html",
            status=status,
            message=message,
            title=HTTP_STATUS_CODES.get(status, "Error"),
        )
    except Exception:
        log.exception("cannot render the HTML error page")
        return None
    return current_app.response_class(page, status=status, mimetype="text/html")


class Refusal(HTTPException):
    """abort_json's exception: a whole response, with its status as the code.
    (Werkzeug's abort(response) leaves the code None, and Flask then answers
    with the exception itself, past the handlers below.)"""

    def __init__(self, response: Response) -> None:
        super().__init__(response=response)
        self.code = response.status_code


def abort_json(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> NoReturn:
    response = json_response(status, message, **extra)
    if headers:
        response.headers.update(headers)
    raise Refusal(response)


def _let_go_of_frames(exc: BaseException) -> None:
    """Drop an HTTP error's traceback (and those of the errors it came from).
    It holds the frames of the request that raised it, whose locals (Flask's
    request, its routing exception) hold the error again: a reference cycle of
    about 100 objects per refused request, which only the cycle collector
    frees. A flood of refused requests (429s, 404s) then had the collector
    stop a worker's event loop for 8 to 47 ms at a time. Client errors are
    never logged with their traceback, so nothing is lost."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc):
        _let_go_of_frames(exc)
        if exc.response is not None:  # already a full response (abort_json)
            return exc.response
        response = json_response(exc.code, exc.description)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    def redis_down(exc):
        log.warning("Redis unavailable: %s", exc)
        return json_response(503, "storage unavailable, retry shortly")

    for kind in REDIS_UNAVAILABLE:
        app.register_error_handler(kind, redis_down)

    @app.errorhandler(NotReplicated)
    def not_replicated(exc):
        # Written to the master, not confirmed by PUBLISH_MIN_REPLICAS in time.
        return json_response(
            503,
            f"not confirmed by enough replicas: {exc}; the message may "
            "still be delivered, and publishing it again sends it twice",
            id=exc.id,
        )

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unhandled error")
        return json_response(500, "internal error")
