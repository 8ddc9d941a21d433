"""Small request helpers and accessors for the per-worker shared clients."""

from flask import current_app, request

from core.errors import abort_json


def get_redis():
    return current_app.extensions["redis"]


def get_hub():
    return current_app.extensions["hub"]


def required_fields(*names, max_length=1024):
    """Required string fields from a JSON or form body; 400 when a field is
    absent, not a string, empty, or longer than `max_length` characters."""
    body = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(body, dict):
        abort_json(400, "expected a JSON object or a form")
    values = []
    for name in names:
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            abort_json(400, f"{name!r} is required (a non-empty string)")
        if len(value) > max_length:
            abort_json(400, f"{name!r} is too long (at most {max_length} characters)")
        values.append(value)
    return values
