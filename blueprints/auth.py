"""Four ways to log in, and the `/auth/` page to try them.

    GET  /auth/basic        HTTP Basic: 401 + WWW-Authenticate until valid
    POST /auth/challenge    {"username"} -> {"nonce","salt","iterations"}  (SCRAM-SHA-256 style)
    POST /auth/respond      {"nonce","proof"} -> session + {"serverSignature"}
    POST /auth/login        {"username","password"} -> session
    POST /auth/token        {"username","password"} -> {"token"} (JWT)
    POST /auth/tokendata    Bearer -> the token's claims, sessionData decrypted
    POST /auth/logout       revokes the bearer token, or ends the session
    GET  /auth/me           who you are (and your CSRF token)

Every login endpoint counts against LOGIN_RATE_LIMIT (per address) and
LOGIN_ACCOUNT_RATE_LIMIT (per user name: challenge/respond counts once, at
the challenge, since each respond needs a fresh challenge). Every answer is
`Cache-Control: no-store`: they carry tokens, CSRF tokens and user data.
"""

import base64
import hashlib
import hmac
import secrets

from flask import Blueprint, current_app, g, jsonify, request, session

from core import passwords, quotas, tokens
from core.errors import abort_json
from core.security import current_user, start_session
from core.users import USERNAME
from core.web import get_keys, get_redis, no_store, required_fields

bp = Blueprint("auth", __name__, url_prefix="/auth")

CHALLENGE_TTL = 30
MAX_FIELD = 1024  # longest username, password or proof accepted
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="realtime-flask", charset="UTF-8"'}
_DUMMY = {}
# one budget per client address for every login endpoint
login_limit = quotas.per_address("LOGIN_RATE_LIMIT", "login attempts")


def _users():
    return current_app.extensions["users"]


def spend_login_attempt(username):
    """Count one login attempt on account `username` (LOGIN_ACCOUNT_RATE_LIMIT);
    429 once spent. The per-address limit alone lets an attacker with many
    addresses guess one password at full speed; this one follows the account.
    Counted before the password is checked, atomically (one INCR), so parallel
    guesses cannot slip past, and a correct guess over the limit is refused too.
    Names that cannot be accounts are not counted: nothing to protect."""
    if isinstance(username, str) and USERNAME.match(username):
        quotas.spend_on(
            "LOGIN_ACCOUNT_RATE_LIMIT", "login attempts for this account", "account", username
        )


def _check_password(username, password):
    """The User when the password is right, else None. An unknown user costs
    the same hash as a known one, so timing does not reveal who exists."""
    user = _users().get(username)
    if user is None:
        if "hash" not in _DUMMY:
            _DUMMY["hash"] = passwords.hash_password(secrets.token_urlsafe(16))
        passwords.verify_password(_DUMMY["hash"], password)
        return None
    return user if passwords.verify_password(user.secrets["password"], password) else None


def _user_from_password_body():
    """The user named by a username/password body, or 401."""
    username, password = required_fields("username", "password", max_length=MAX_FIELD)
    spend_login_attempt(username)
    user = _check_password(username, password)
    if user is None:
        abort_json(401, "wrong username or password")
    return user


# Tokens, CSRF tokens, claims and user data: no cache (browser, proxy) keeps them.
bp.after_request(no_store)


# strict_slashes=False: /auth answers the page itself. Werkzeug's slash
# redirect would be absolute, built from the request's Host header (which the
# client chooses): `Host: evil.example` got `Location: http://evil.example/auth/`.
@bp.get("/", strict_slashes=False)
def page():
    return current_app.send_static_file("auth.html")


@bp.get("/basic")
@login_limit
def basic():
    auth = request.authorization
    if auth is None or auth.type != "basic" or not auth.username or not auth.password:
        abort_json(401, "HTTP Basic credentials required", headers=BASIC_CHALLENGE)
    if len(auth.password) > MAX_FIELD:
        abort_json(401, "wrong username or password", headers=BASIC_CHALLENGE)
    spend_login_attempt(auth.username)
    user = _check_password(auth.username, auth.password)
    if user is None:
        abort_json(401, "wrong username or password", headers=BASIC_CHALLENGE)
    return {"welcome": f"Welcome, {user.fullname or user.name}!", "user": user.public()}


@bp.post("/challenge")
@login_limit
def challenge():
    (username,) = required_fields("username", max_length=MAX_FIELD)
    spend_login_attempt(username)
    user = _users().get(username)
    if user is not None:
        salt, iterations = user.secrets["scram_salt"], int(user.secrets["scram_iterations"])
    else:
        # A stable fake salt: asking twice about a stranger looks like asking about a user.
        fake = hmac.new(
            current_app.config["SECRET_KEY"].encode(),
            f"fake-scram-salt:{username}".encode(),
            hashlib.sha256,
        ).digest()[:16]
        salt, iterations = base64.b64encode(fake).decode(), passwords.SCRAM_ITERATIONS
    nonce = secrets.token_urlsafe(32)
    get_redis().set(get_keys().challenge(nonce), username, ex=CHALLENGE_TTL)
    return {"nonce": nonce, "salt": salt, "iterations": iterations}


@bp.post("/respond")
@login_limit
def respond():
    nonce, proof = required_fields("nonce", "proof", max_length=MAX_FIELD)
    username = get_redis().getdel(get_keys().challenge(nonce))  # once only
    if username is None:
        abort_json(401, "unknown, expired or already used challenge")
    user = _users().get(username)
    auth_message = f"{username}:{nonce}"
    server_signature = user and passwords.scram_verify(
        user.secrets["scram_stored_key"], user.secrets["scram_server_key"], auth_message, proof
    )
    if not server_signature:
        abort_json(401, "authentication failed")
    csrf = start_session(user)
    return {
        "ok": True,
        "user": user.public(),
        "serverSignature": server_signature,
        "csrfToken": csrf,
    }


@bp.post("/login")
@login_limit
def login():
    user = _user_from_password_body()
    csrf = start_session(user)
    return {"ok": True, "user": user.public(), "csrfToken": csrf}


@bp.post("/token")
@login_limit
def token():
    user = _user_from_password_body()
    encoded, claims = tokens.issue(user, current_app.config)
    return {"token": encoded, "tokenType": "Bearer", "expiresIn": claims["exp"] - claims["iat"]}


@bp.post("/tokendata")
def tokendata():
    if current_user() is None or g.auth != "token":
        abort_json(
            401,
            "send the token as Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    return jsonify(g.claims)


@bp.post("/logout")
def logout():
    user = current_user()
    if g.auth == "token":
        tokens.revoke(g.claims, current_app.config, get_redis())
        return {"ok": True, "revoked": g.claims["jti"]}
    if user is not None:
        session.destroy()
    return {"ok": True}


@bp.get("/me")
def me():
    user = current_user()
    if user is None:
        abort_json(401, "not logged in")
    body = {"user": user.public(), "auth": g.auth}
    if g.auth == "session":
        body["csrfToken"] = session.get("csrf")
    return body
