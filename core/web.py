"""Small request helpers and accessors for the per-worker shared clients."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response, current_app, request

from core.errors import abort_json

if TYPE_CHECKING:
    import redis

    from core.hub import Hub
    from core.keys import Keys


def get_redis() -> redis.Redis:
    return current_app.extensions["redis"]


def get_hub() -> Hub:
    return current_app.extensions["hub"]


def get_keys() -> Keys:
    """The app's Redis key names (core/keys.py)."""
    return current_app.extensions["hub"].keys


def no_store(response: Response) -> Response:
    """An after_request hook for blueprints whose answers no cache (browser,
    proxy) may keep: tokens, CSRF tokens, user data, administrators' views."""
    response.headers["Cache-Control"] = "no-store"
    return response


def is_unicode(text: str) -> bool:
    """False for a str that cannot be encoded as UTF-8: a lone surrogate, which
    JSON's \\ud800 escapes can produce, and which Redis and UTF-8 output refuse."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def required_fields(*names: str, max_length: int = 1024) -> list[str]:
    """Required string fields from a JSON or form body; 400 when a field is
    absent, not a string, empty, or longer than `max_length` characters."""
    try:
        body = request.get_json(silent=True) if request.is_json else request.form
    except RecursionError:  # JSON nested too deeply for the parser
        body = None
    if not isinstance(body, dict):
        abort_json(400, "expected a JSON object or a form")
    values = []
    for name in names:
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            abort_json(400, f"{name!r} is required (a non-empty string)")
        if len(value) > max_length:
            abort_json(400, f"{name!r} is too long (at most {max_length} characters)")
        if not is_unicode(value):
            abort_json(400, f"{name!r} is not valid Unicode (a lone surrogate escape)")
        values.append(value)
    return values
