"""Request bodies: read whole, within a deadline and a size limit, before the app.

gunicorn cuts a request's headers after a while but not its body: a client
sending a body at one byte every few seconds holds a greenlet (and, with
enough of them, the worker's connection pool) for as long as it likes. And a
chunked body has no Content-Length for Werkzeug to check against
MAX_CONTENT_LENGTH, so it used to be cut silently at the limit and accepted.

`BodyReader` wraps the WSGI app: a request with a body (Content-Length or
chunked) has it read here, at least BODY_MIN_BYTES_PER_SECOND after a grace
of BODY_TIMEOUT_SECONDS, and at most MAX_CONTENT_LENGTH bytes, before the app
sees it from memory. Too slow: 408; too large (either framing): 413; cut
short (the client left) or a malformed chunk: 400, so that the app never acts
on part of a body. All close the connection, since the rest is never read. Bodies are
small here (64 KiB by default), so buffering them costs little: it is what
nginx does in front of us (docs/deploy.md).

One route may take a larger body: `allow_larger(app, method, path, max_bytes,
admit)` (the log upload of /admin/jobs/upload). `admit(environ)` decides from
the request's credentials, before a byte of the body is read, whether it may
(an administrator's); any other request there keeps the small limit, so an
anonymous client cannot make the server store a large body. An admitted body is
read by the same rules, with its own limit, into a temporary file past
SPOOL_BYTES instead of memory; the route sets Flask's
`request.max_content_length` to match (MAX_CONTENT_LENGTH stays the small
default everywhere else).
"""

from __future__ import annotations

import io
import json
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gevent import Timeout
from gevent.monkey import is_module_patched
from gunicorn.http.errors import ParseException

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from flask import Flask

CHUNK = 16 * 1024
SPOOL_BYTES = 1024 * 1024  # a larger body (allow_larger) goes to a temporary file past this


class _TooSlow(Exception):
    pass


class _TooLarge(Exception):
    pass


class _CutShort(Exception):
    pass


class BodyReader:
    def __init__(
        self, app: WSGIApplication, max_bytes: int, grace_seconds: float, min_rate: float
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.grace_seconds = grace_seconds
        self.min_rate = min_rate
        # (method, path) -> its own limit (allow_larger)
        self.larger: dict[tuple[str, str], tuple[int, Callable[[WSGIEnvironment], bool]]] = {}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0  # gunicorn refuses a malformed Content-Length before us
        if not chunked and length <= 0:
            return self.app(environ, start_response)
        larger = self.larger.get((environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")))
        max_bytes = larger[0] if larger is not None and larger[1](environ) else None
        spool = max_bytes is not None
        max_bytes = self.max_bytes if max_bytes is None else max_bytes
        try:
            if length > max_bytes:
                raise _TooLarge
            body = self._read(environ["wsgi.input"], None if chunked else length, max_bytes, spool)
        except _TooLarge:
            return _refuse(
                environ,
                start_response,
                "413 Request Entity Too Large",
                f"request body larger than {max_bytes} bytes",
            )
        except _TooSlow:
            return _refuse(
                environ, start_response, "408 Request Timeout", "request body arrived too slowly"
            )
        except _CutShort:  # the app must not act on part of a body
            return _refuse(
                environ, start_response, "400 Bad Request", "request body cut short or malformed"
            )
        if spool:
            size = body.tell()
            body.seek(0)
            environ["wsgi.input"] = body
            environ["CONTENT_LENGTH"] = str(size)
        else:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _read(self, stream, length, max_bytes, spool=False):
        """The whole body (`length` bytes, or up to the chunked body's end): bytes,
        or with `spool` a temporary file holding it (at its end)."""
        parts: list[bytes]
        parts, got, began = [], 0, time.monotonic()
        spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) if spool else None  # noqa: SIM115 (handed to the app as its wsgi.input)
        keep = spooled.write if spooled is not None else parts.append
        while length is None or got < length:
            want = CHUNK if length is None else min(CHUNK, length - got)
            # By now `got + want` bytes may have taken the grace plus their
            # share at the minimum rate, and no longer.
            allowed = began + self.grace_seconds + (got + want) / self.min_rate
            part = _read_by(stream, want, allowed - time.monotonic())
            if not part:
                if length is not None:
                    raise _CutShort  # the client left before its Content-Length
                break  # the chunked body's end
            got += len(part)
            if got > max_bytes:
                raise _TooLarge
            keep(part)
        return spooled if spool else b"".join(parts)


def allow_larger(
    app: Flask, method: str, path: str, max_bytes: int, admit: Callable[[WSGIEnvironment], bool]
) -> None:
    """Let requests `method path` (exactly) of `app` that `admit(environ)` accepts
    (it sees the headers only) carry bodies up to `max_bytes`, read by the app's
    BodyReader with its usual deadline; call at registration."""
    wsgi: object = app.wsgi_app
    while wsgi is not None and not isinstance(wsgi, BodyReader):
        wsgi = getattr(wsgi, "app", None)  # through ProxyFix
    if wsgi is None:
        raise RuntimeError("the app has no BodyReader")
    wsgi.larger[(method, path)] = (max_bytes, admit)


def _read_by(stream: Any, size: int, seconds: float) -> bytes:
    try:
        if not is_module_patched("socket"):
            return stream.read(size)  # not a gevent worker: gunicorn's timeout kills it
        if seconds <= 0:
            raise _TooSlow
        with Timeout(seconds):
            return stream.read(size)
    except Timeout:
        raise _TooSlow from None
    except (OSError, ParseException):  # gone mid-body, or a malformed chunk
        raise _CutShort from None


def _refuse(
    environ: WSGIEnvironment, start_response: StartResponse, status: str, reason: str
) -> list[bytes]:
    """Answer without the app, and close: the rest of the body is unread."""
    server_response: Any = getattr(start_response, "__self__", None)
    if hasattr(server_response, "force_close"):  # gunicorn's response
        server_response.force_close()
    else:
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
    body = json.dumps({"error": reason}).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ],
    )
    return [body]
