"""Credentials and request-origin checks, shared by every blueprint.

Until users and tokens exist (the auth issue), publishing over HTTP needs the
operator's PUBLISH_TOKEN as a bearer token.
"""

import hmac
from urllib.parse import urlsplit

from flask import current_app, request

from core.errors import abort_json


def bearer_token():
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def require_publisher():
    """401 unless the request carries `Authorization: Bearer <PUBLISH_TOKEN>`."""
    token = bearer_token()
    expected = current_app.config["PUBLISH_TOKEN"]
    # compare_digest: the time taken does not reveal how much of the token matched
    if not token or not hmac.compare_digest(token.encode(), expected.encode()):
        abort_json(401, "publishing needs a valid bearer token",
                   headers={"WWW-Authenticate": 'Bearer realm="publish"'})


def origin_allowed(origin):
    """Same-origin requests, configured ALLOWED_ORIGINS, and non-browser clients
    (which send no Origin) are allowed; any other web page is not."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in current_app.config["ALLOWED_ORIGINS"]:
        return True
    # Host only, not scheme: behind a TLS-terminating proxy the app sees http.
    return urlsplit(origin).netloc == request.host
