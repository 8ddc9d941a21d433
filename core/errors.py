"""JSON errors: every failure a client can cause answers a 4xx with a reason.

`abort_json(400, "why")` stops a handler; the handlers below turn Werkzeug's
HTTP errors, Redis outages and unexpected exceptions into JSON bodies without
stack traces.
"""

import logging

import redis
from flask import abort, jsonify
from werkzeug.exceptions import HTTPException

from core.stream_log import NotReplicated

log = logging.getLogger(__name__)


def json_response(status, message, **extra):
    response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


def abort_json(status, message, headers=None, **extra):
    response = json_response(status, message, **extra)
    if headers:
        response.headers.update(headers)
    abort(response)


def register_error_handlers(app):
    @app.errorhandler(HTTPException)
    def http_error(exc):
        if exc.response is not None:  # already a full response (abort_json)
            return exc.response
        response = json_response(exc.code, exc.description)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def redis_down(exc):
        log.warning("Redis unavailable: %s", exc)
        return json_response(503, "storage unavailable, retry shortly")

    @app.errorhandler(NotReplicated)
    def not_replicated(exc):
        # Written to the master, not confirmed by PUBLISH_MIN_REPLICAS in time.
        return json_response(503, f"not confirmed by enough replicas: {exc}; the message may "
                             "still be delivered, and publishing it again sends it twice",
                             id=exc.id)

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unhandled error")
        return json_response(500, "internal error")
