"""The cookie demo (chapter 5): /cookie sets a random number, /mycookie reads it."""

import re
import secrets

from flask import Blueprint, current_app, request

from core.errors import abort_json

bp = Blueprint("cookies", __name__)

COOKIE = "demo_cookie"
_VALUE = re.compile(r"\d{1,12}\Z")


@bp.get("/cookie")
def set_cookie():
    value = str(secrets.randbelow(10**11))
    response = current_app.response_class(
        f"Cookie set: {COOKIE}={value}. Now visit /mycookie\n", mimetype="text/plain"
    )
    response.set_cookie(
        COOKIE,
        value,
        max_age=30 * 24 * 3600,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure or current_app.config["APP_ENV"] == "production",
    )
    return response


@bp.get("/mycookie")
def read_cookie():
    value = request.cookies.get(COOKIE)
    if value is None:
        abort_json(404, f"no {COOKIE} cookie: visit /cookie first")
    if not _VALUE.match(value):
        abort_json(400, f"{COOKIE} is not a number this server set")
    return current_app.response_class(value + "\n", mimetype="text/plain")
