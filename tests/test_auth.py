"""Four ways to log in, and the attacks each must resist."""

import base64
import hashlib
import hmac
import subprocess
import sys
import time
import uuid

import jwt
import pytest
import requests

from core import passwords, tokens
from core.config import load_settings
from core.users import UserStore
from realtime_client import parse_sse
from tests.servers import ROOT

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def alice(redis_server, base_env):
    """A plain user who may publish on chat.* and read private-alice.*."""
    import redis

    store = UserStore(redis.Redis.from_url(redis_server.url, decode_responses=True), "rt:")
    name = f"alice{uuid.uuid4().hex[:8]}"
    return store.create(
        name, PASSWORD, fullname="Alice Liddell", publish=["chat.*"], subscribe=["private-alice.*"]
    )


@pytest.fixture
def settings(base_env):
    return load_settings(base_env)


def login(client, username, password=PASSWORD, **headers):
    """Log in the way the browser page does (fetch sends the page's Origin)."""
    headers.setdefault("Origin", "http://localhost")
    return client.post(
        "/auth/login", json={"username": username, "password": password}, headers=headers
    )


def session_cookie(response):
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith("session="):
            return header
    return None


# -- HTTP Basic ----------------------------------------------------------------------


def test_basic_challenges_then_welcomes_by_name(client, alice):
    anonymous = client.get("/auth/basic")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith('Basic realm="realtime-flask"')
    wrong = client.get("/auth/basic", auth=(alice.name, "not the password"))
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers
    right = client.get("/auth/basic", auth=(alice.name, PASSWORD))
    assert right.status_code == 200
    assert right.get_json()["welcome"] == "Welcome, Alice Liddell!"


# -- challenge / response (SCRAM-SHA-256 style) --------------------------------------


def scram_login(client, username, password=PASSWORD):
    challenge = client.post("/auth/challenge", json={"username": username}).get_json()
    auth_message = f"{username}:{challenge['nonce']}"
    proof = passwords.scram_client_proof(
        password, challenge["salt"], challenge["iterations"], auth_message
    )
    return challenge, auth_message, proof


def expected_server_signature(password, challenge, auth_message):
    salted = passwords.salted_password(
        password, base64.b64decode(challenge["salt"]), challenge["iterations"]
    )
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return base64.b64encode(
        hmac.new(server_key, auth_message.encode(), hashlib.sha256).digest()
    ).decode()


def test_challenge_response_logs_in_and_proves_the_server(client, alice):
    challenge, auth_message, proof = scram_login(client, alice.name)
    assert challenge["iterations"] == 600_000
    assert len(base64.urlsafe_b64decode(challenge["nonce"] + "==")) == 32
    response = client.post("/auth/respond", json={"nonce": challenge["nonce"], "proof": proof})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["ok"] is True and body["user"]["name"] == alice.name
    assert body["serverSignature"] == expected_server_signature(PASSWORD, challenge, auth_message)
    assert client.get("/auth/me").get_json()["auth"] == "session"


def test_a_proof_cannot_be_replayed(app, client, alice):
    challenge, _, proof = scram_login(client, alice.name)
    first = client.post("/auth/respond", json={"nonce": challenge["nonce"], "proof": proof})
    assert first.status_code == 200
    eavesdropper = app.test_client()  # has the proof, not the victim's cookie
    replay = eavesdropper.post("/auth/respond", json={"nonce": challenge["nonce"], "proof": proof})
    assert replay.status_code == 401
    assert "already used" in replay.get_json()["error"]


def test_an_expired_challenge_is_refused(client, alice, rdb):
    challenge, _, proof = scram_login(client, alice.name)
    key = f"rt:challenge:{challenge['nonce']}"
    assert 0 < rdb.ttl(key) <= 30
    rdb.pexpire(key, 1)  # what 30 seconds of waiting would do
    time.sleep(0.05)
    response = client.post("/auth/respond", json={"nonce": challenge["nonce"], "proof": proof})
    assert response.status_code == 401


def test_a_wrong_password_gives_a_wrong_proof(client, alice):
    challenge, _, proof = scram_login(client, alice.name, password="not the password")
    response = client.post("/auth/respond", json={"nonce": challenge["nonce"], "proof": proof})
    assert response.status_code == 401
    assert response.get_json()["error"] == "authentication failed"
    assert client.get("/auth/me").status_code == 401


def test_unknown_users_are_indistinguishable_from_known_ones(client, alice):
    known = client.post("/auth/challenge", json={"username": alice.name}).get_json()
    stranger = client.post("/auth/challenge", json={"username": "nobody-here"}).get_json()
    again = client.post("/auth/challenge", json={"username": "nobody-here"}).get_json()
    assert set(known) == set(stranger) == {"nonce", "salt", "iterations"}
    assert stranger["iterations"] == known["iterations"]
    assert len(base64.b64decode(stranger["salt"])) == len(base64.b64decode(known["salt"]))
    assert stranger["salt"] == again["salt"]  # stable, like a real user's
    assert stranger["nonce"] != again["nonce"]
    proof = passwords.scram_client_proof("guess", stranger["salt"], 1000, "x")
    response = client.post("/auth/respond", json={"nonce": stranger["nonce"], "proof": proof})
    assert response.status_code == 401
    assert response.get_json()["error"] == "authentication failed"


@pytest.mark.parametrize(
    "body",
    [{}, {"username": 5}, {"username": ""}, {"username": "x" * 2000}, ["not", "an", "object"]],
)
def test_bad_challenge_bodies_are_400(client, body):
    response = client.post("/auth/challenge", json=body)
    assert response.status_code == 400
    assert "error" in response.get_json()


@pytest.mark.parametrize("proof", ["not base64!", "", "AAAA", "A" * 5000])
def test_malformed_proofs_are_rejected_cleanly(client, alice, proof):
    challenge, _, _ = scram_login(client, alice.name)
    response = client.post("/auth/respond", json={"nonce": challenge["nonce"], "proof": proof})
    assert response.status_code in (400, 401)


# -- password sessions ---------------------------------------------------------------


def test_login_sets_a_hardened_cookie_holding_only_a_session_id(client, alice, rdb):
    response = login(client, alice.name)
    assert response.status_code == 200
    cookie = session_cookie(response)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert alice.name not in cookie  # the data lives in Redis
    sid = cookie.split("=", 1)[1].split(";")[0].rsplit(".", 1)[0]
    assert rdb.ttl(f"rt:session:{sid}") > 0
    assert client.get("/auth/me").get_json()["user"]["name"] == alice.name


def test_cookie_is_secure_over_https(app, alice):
    client = app.test_client()
    response = client.post(
        "/auth/login",
        json={"username": alice.name, "password": PASSWORD},
        base_url="https://localhost",
    )
    assert "Secure" in session_cookie(response)


def test_login_issues_a_new_session_id(client, alice):
    first = session_cookie(login(client, alice.name))
    csrf = client.get("/auth/me").get_json()["csrfToken"]
    second = session_cookie(login(client, alice.name, **{"X-CSRF-Token": csrf}))
    assert first != second
    old = first.split(";")[0].split("=", 1)[1]
    client.set_cookie("session", old)
    assert client.get("/auth/me").status_code == 401  # the old id is dead


def test_wrong_password_and_unknown_user_get_the_same_answer(client, alice):
    wrong = login(client, alice.name, "not the password")
    unknown = login(client, "nobody-at-all", "whatever-password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()


def test_logout_deletes_the_session(client, alice, rdb):
    response = login(client, alice.name)
    sid = session_cookie(response).split("=", 1)[1].split(";")[0].rsplit(".", 1)[0]
    csrf = response.get_json()["csrfToken"]
    out = client.post("/auth/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200
    assert not rdb.exists(f"rt:session:{sid}")
    assert client.get("/auth/me").status_code == 401


# -- CSRF --------------------------------------------------------------------------


def test_cookie_authenticated_change_needs_token_or_origin(client, alice):
    csrf = login(client, alice.name).get_json()["csrfToken"]
    bare = client.post("/pub/chat.room", data="hi")
    assert bare.status_code == 403 and "CSRF" in bare.get_json()["error"]
    forged = client.post("/pub/chat.room", data="hi", headers={"X-CSRF-Token": "guess"})
    assert forged.status_code == 403
    foreign = client.post(
        "/pub/chat.room",
        data="hi",
        headers={"Origin": "https://evil.example", "X-CSRF-Token": csrf},
    )
    assert foreign.status_code == 403 and "Origin" in foreign.get_json()["error"]
    with_token = client.post("/pub/chat.room", data="hi", headers={"X-CSRF-Token": csrf})
    assert with_token.status_code == 201
    same_origin = client.post("/pub/chat.room", data="hi", headers={"Origin": "http://localhost"})
    assert same_origin.status_code == 201


def test_login_from_a_foreign_page_is_refused(client, alice):
    response = client.post(
        "/auth/login",
        json={"username": alice.name, "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403


# -- JWT ------------------------------------------------------------------------------


def get_token(client, username, password=PASSWORD):
    response = client.post("/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["token"]


def tokendata(client, token):
    return client.post("/auth/tokendata", headers={"Authorization": f"Bearer {token}"})


def test_token_round_trip(client, alice, settings):
    token = get_token(client, alice.name)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    raw = jwt.decode(token, options={"verify_signature": False})
    assert isinstance(raw["sessionData"], str) and "Alice" not in raw["sessionData"]  # encrypted
    response = tokendata(client, token)
    assert response.status_code == 200
    claims = response.get_json()
    assert claims["sub"] == alice.name
    assert claims["iss"] == settings["JWT_ISSUER"] and claims["aud"] == settings["JWT_AUDIENCE"]
    assert claims["exp"] - claims["iat"] == settings["JWT_TTL_SECONDS"]
    assert claims["sessionData"]["fullname"] == "Alice Liddell"
    assert claims["perms"] == {"publish": ["chat.*"], "subscribe": ["private-alice.*"]}


def _claims(settings, user, epoch="not-the-users-epoch", **overrides):
    now = int(time.time())
    claims = {
        "iss": settings["JWT_ISSUER"],
        "aud": settings["JWT_AUDIENCE"],
        "sub": user,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "epoch": epoch,
        "sessionData": tokens._fernet(settings["SECRET_KEY"]).encrypt(b"{}").decode(),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims, settings, key=None, alg="HS256"):
    return jwt.encode(claims, key or tokens.signing_key(settings["SECRET_KEY"]), algorithm=alg)


def _alg_none(claims):
    def part(obj):
        import json

        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize(
    "attack, reason",
    [
        ("alg-none", "malformed token"),
        ("other-key", "signature is invalid"),
        ("wrong-aud", "audience"),
        ("wrong-iss", "issuer"),
        ("expired", "expired"),
        ("no-jti", "'jti'"),
        ("no-exp", "'exp'"),
        ("tampered-session-data", "sessionData"),
        ("garbage", "malformed token"),
    ],
)
def test_forged_and_broken_tokens_are_401(client, alice, settings, attack, reason):
    make = {
        "alg-none": lambda: _alg_none(_claims(settings, alice.name)),
        "other-key": lambda: _sign(_claims(settings, alice.name), settings, key=b"k" * 32),
        "wrong-aud": lambda: _sign(_claims(settings, alice.name, aud="someone-else"), settings),
        "wrong-iss": lambda: _sign(_claims(settings, alice.name, iss="evil"), settings),
        "expired": lambda: _sign(_claims(settings, alice.name, iat=1000, exp=2000), settings),
        "no-jti": lambda: _sign(_claims(settings, alice.name, jti=None), settings),
        "no-exp": lambda: _sign(_claims(settings, alice.name, exp=None), settings),
        "tampered-session-data": lambda: _sign(
            _claims(settings, alice.name, sessionData="gAAAAAB" + "x" * 80), settings
        ),
        "garbage": lambda: "not.a.token",
    }[attack]
    response = tokendata(client, make())
    assert response.status_code == 401
    assert reason in response.get_json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_logout_revokes_the_token(client, alice, rdb):
    token = get_token(client, alice.name)
    assert tokendata(client, token).status_code == 200
    out = client.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert out.status_code == 200
    jti = out.get_json()["revoked"]
    assert 0 < rdb.ttl(f"rt:revoked-jti:{jti}") <= 3600 + 10
    again = tokendata(client, token)
    assert again.status_code == 401 and "revoked" in again.get_json()["error"]


# -- channel permissions ---------------------------------------------------------------


def test_token_permissions_govern_channels(server, alice, channel):
    token = requests.post(
        f"{server.url}/auth/token", timeout=30, json={"username": alice.name, "password": PASSWORD}
    ).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    allowed = requests.post(f"{server.url}/pub/chat.{channel}", data="hi", headers=auth, timeout=5)
    assert allowed.status_code == 201
    denied = requests.post(f"{server.url}/pub/news.{channel}", data="hi", headers=auth, timeout=5)
    assert denied.status_code == 403 and "may not publish" in denied.json()["error"]

    private = f"private-alice.{channel}"
    server.publish(private, "secret")  # the admin may
    anonymous = requests.get(f"{server.url}/sub/{private}", params={"cursor": "0"}, timeout=5)
    assert anonymous.status_code == 401
    mine = requests.get(
        f"{server.url}/sub/{private}", params={"cursor": "0"}, headers=auth, timeout=30
    )
    assert mine.status_code == 200 and mine.json()["events"][0]["data"] == "secret"
    theirs = requests.get(
        f"{server.url}/sub/private-bob.{channel}", params={"cursor": "0"}, headers=auth, timeout=5
    )
    assert theirs.status_code == 403
    # EventSource and WebSocket cannot set headers: ?access_token= works on GET
    with requests.get(
        f"{server.url}/sub/{private}",
        timeout=5,
        stream=True,
        params={"last_event_id": "0", "access_token": token},
        headers={"Accept": "text/event-stream"},
    ) as sse:
        assert sse.status_code == 200
        first = next(
            event
            for event in parse_sse(sse.iter_content(chunk_size=None))
            if event.event == "message"
        )
    assert first.data == "secret"


# -- rate limits -------------------------------------------------------------------------


def test_login_rate_limit_trips_then_recovers(base_env, monkeypatch, alice):
    for name in ("REDIS_URL", "INSTANCE_DIR", "SECRET_KEY", "APP_ENV"):
        monkeypatch.setenv(name, base_env[name])
    from app import create_app

    app = create_app(
        {"LOGIN_RATE_LIMIT": "3 per 2 seconds", "QUOTA_KEY_PREFIX": f"rl-{uuid.uuid4().hex}"}
    )
    client = app.test_client()
    answers = [login(client, alice.name, "wrong password!").status_code for _ in range(3)]
    assert answers == [401, 401, 401]
    limited = client.post("/auth/challenge", json={"username": alice.name})  # shared budget
    assert limited.status_code == 429
    assert "error" in limited.get_json()
    time.sleep(2.2)  # the window passes
    assert login(client, alice.name).status_code == 200


# -- the users command line ----------------------------------------------------------------


def flask_cli(base_env, *args, input=None):
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "users", *args],
        input=input,
        text=True,
        capture_output=True,
        cwd=ROOT,
        env=base_env,
        timeout=60,
    )


@pytest.mark.slow
def test_users_cli_create_list_set_password_delete(base_env, client):
    name = f"cli{uuid.uuid4().hex[:6]}"
    created = flask_cli(
        base_env,
        "create",
        name,
        "--fullname",
        "Cli User",
        "--admin",
        input="first-password\nfirst-password\n",
    )
    assert created.returncode == 0, created.stderr
    assert f"{name}\tadmin\tCli User" in flask_cli(base_env, "list").stdout
    assert login(client, name, "first-password").status_code == 200
    duplicate = flask_cli(base_env, "create", name, input="other-password\nother-password\n")
    assert duplicate.returncode != 0 and "already exists" in duplicate.stderr
    changed = flask_cli(base_env, "set-password", name, input="second-password\nsecond-password\n")
    assert changed.returncode == 0, changed.stderr
    assert login(client, name, "first-password").status_code == 401
    short = flask_cli(base_env, "set-password", name, input="short\nshort\n")
    assert short.returncode != 0 and "at least 8" in short.stderr
    assert flask_cli(base_env, "delete", name).returncode == 0
    assert name not in flask_cli(base_env, "list").stdout


def test_demo_users_are_seeded_once_with_the_configured_admin_password(start_server):
    prefix = f"demo{uuid.uuid4().hex[:6]}:"
    server = start_server(
        DEMO_USERS=1, DEMO_ADMIN_PASSWORD="admin-demo-password", REDIS_PREFIX=prefix
    )
    jack = requests.get(f"{server.url}/auth/basic", auth=("jack", "beanstalk"), timeout=30)
    assert jack.status_code == 200 and jack.json()["welcome"] == "Welcome, Jack Spratt!"
    admin = requests.post(
        f"{server.url}/auth/token",
        timeout=30,
        json={"username": "admin", "password": "admin-demo-password"},
    )
    assert admin.status_code == 200
    assert "Demo users: jack/beanstalk" in server.log()


def test_a_demo_admin_password_the_rules_refuse_stops_the_server_with_the_reason(start_server):
    prefix = f"demo{uuid.uuid4().hex[:6]}:"
    with pytest.raises(RuntimeError, match="gunicorn exited early") as failed:
        start_server(DEMO_USERS=1, DEMO_ADMIN_PASSWORD="short", REDIS_PREFIX=prefix)
    log = str(failed.value)
    assert "DEMO_ADMIN_PASSWORD: passwords have at least 8 characters" in log
    assert "Traceback" not in log


def test_login_required_and_admin_required_guard_views(app, alice, admin_token):
    from core.security import admin_required, login_required

    app.add_url_rule("/test-only/member", "member", login_required(lambda: {"ok": True}))
    app.add_url_rule("/test-only/admin", "admin", admin_required(lambda: {"ok": True}))
    client = app.test_client()
    assert client.get("/test-only/member").status_code == 401
    assert client.get("/test-only/admin").status_code == 401
    login(client, alice.name)
    assert client.get("/test-only/member").status_code == 200
    denied = client.get("/test-only/admin")
    assert denied.status_code == 403 and denied.get_json()["error"] == "administrators only"
    admin = {"Authorization": f"Bearer {admin_token}"}
    assert app.test_client().get("/test-only/admin", headers=admin).status_code == 200
