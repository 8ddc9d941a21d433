"""Credentials end when the account changes, logins are limited per account,
and the auth, admin and health answers leak nothing they should not: each
test against a real gunicorn server and Redis, as a client would see it."""

import json
import subprocess
import sys
import uuid

import jwt
import pytest
import redis
import requests

from core import tokens
from core.config import load_settings
from core.users import UserStore
from tests.servers import ROOT

pytestmark = pytest.mark.integration

PASSWORD = "first password!"
NEW_PASSWORD = "second password!"


@pytest.fixture
def store(redis_server):
    return UserStore(redis.Redis.from_url(redis_server.url, decode_responses=True), "rt:")


@pytest.fixture
def settings(base_env):
    return load_settings(base_env)


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def users_cli(base_env, *args, password=None):
    """`flask users ...`, as an operator types it."""
    typed = f"{password}\n{password}\n" if password else None
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "users", *args],
        input=typed,
        text=True,
        capture_output=True,
        cwd=ROOT,
        env=base_env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def get_token(server, name, password=PASSWORD):
    response = requests.post(
        f"{server.url}/auth/token", timeout=30, json={"username": name, "password": password}
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def logged_in_session(server, name, password=PASSWORD):
    browser = requests.Session()
    response = browser.post(
        f"{server.url}/auth/login", timeout=30, json={"username": name, "password": password}
    )
    assert response.status_code == 200, response.text
    return browser


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def me(server, token=None, browser=None):
    client = browser or requests
    return client.get(f"{server.url}/auth/me", headers=bearer(token) if token else {}, timeout=10)


# -- credentials end when the account changes ----------------------------------------


def test_set_password_ends_the_old_token_and_session_at_once(server, store, base_env):
    name = unique("pw")
    store.create(name, PASSWORD)
    token, browser = get_token(server, name), logged_in_session(server, name)
    assert me(server, token).status_code == 200
    assert me(server, browser=browser).status_code == 200

    users_cli(base_env, "set-password", name, password=NEW_PASSWORD)

    old_token = me(server, token)
    assert old_token.status_code == 401
    assert "password or access changed" in old_token.json()["error"]
    assert me(server, browser=browser).status_code == 401
    assert "session" not in browser.cookies  # the server ended it, cookie and all
    assert me(server, get_token(server, name, NEW_PASSWORD)).status_code == 200


def test_streams_opened_with_changed_credentials_end_at_once(server, store, base_env):
    """Requests with an old credential are refused; the streams already open
    with it (SSE, WebSocket, a held long-poll, on either worker) end too."""
    import threading
    import time

    from tests.clients import SSEClient, WSClient, long_poll

    name = unique("str")
    store.create(name, PASSWORD, subscribe=["private-*"])
    token = get_token(server, name)
    channel = f"private-{uuid.uuid4().hex[:8]}"
    url = f"{server.url}/sub/{channel}?access_token={token}"
    streams = [SSEClient(url) for _ in range(2)]
    sockets = [WSClient(f"{server.ws_url}/sub/{channel}/ws?access_token={token}") for _ in range(2)]
    assert all(s.status == 200 for s in streams) and all(w.hello for w in sockets)
    polled = {}
    poll = threading.Thread(
        target=lambda: polled.update(
            began=time.monotonic(), r=long_poll(url), ended=time.monotonic()
        )
    )
    poll.start()
    time.sleep(1)  # the long-poll is held (for 25 s unless something ends it)

    users_cli(base_env, "set-access", name, "--subscribe", "private-other.*")

    for stream in streams:
        assert stream.wait_for(
            lambda items: any(
                i["event"] == "close" and "password or access changed" in i["data"] for i in items
            ),
            timeout=10,
        ), stream.items
    for ws in sockets:
        assert ws.closed.wait(10)
        assert ws.close_code == 1008 and "password or access changed" in ws.close_reason
    poll.join(15)
    assert polled["r"].status_code == 200 and polled["ended"] - polled["began"] < 15
    # ...and coming back with the old token is refused
    assert requests.get(url, timeout=10).status_code == 401
    for stream in streams:
        stream.close()


def test_an_administrators_monitor_stream_ends_when_the_account_loses_its_rights(
    server, store, base_env
):
    from tests.clients import SSEClient

    name = unique("mon")
    store.create(name, PASSWORD, admin=True)
    monitor = SSEClient(
        f"{server.url}/admin/monitor/stream", headers=bearer(get_token(server, name))
    )
    assert monitor.status == 200

    users_cli(base_env, "set-access", name, "--no-admin")

    assert monitor.wait_for(
        lambda items: any(
            i["event"] == "close" and "password or access changed" in i["data"] for i in items
        ),
        timeout=10,
    ), monitor.items
    assert monitor.closed.wait(10)
    monitor.close()


def test_a_deleted_then_recreated_name_revives_no_session_and_no_admin_token(
    server, store, base_env
):
    name = unique("adm")
    store.create(name, PASSWORD, admin=True)
    admin_token, browser = get_token(server, name), logged_in_session(server, name)
    processes = f"{server.url}/admin/processes"
    assert requests.get(processes, headers=bearer(admin_token), timeout=10).status_code == 200

    users_cli(base_env, "delete", name)
    users_cli(base_env, "create", name, password=PASSWORD)  # same name, not an administrator

    old = requests.get(processes, headers=bearer(admin_token), timeout=10)
    assert old.status_code == 401
    assert me(server, browser=browser).status_code == 401
    fresh = requests.get(processes, headers=bearer(get_token(server, name)), timeout=10)
    assert fresh.status_code == 403


def test_changing_access_ends_credentials_and_new_ones_get_the_new_rights(
    server, store, base_env, channel
):
    name = unique("acc")
    store.create(name, PASSWORD, publish=["chat.*"])
    token = get_token(server, name)
    publish = f"{server.url}/pub/chat.{channel}"
    assert requests.post(publish, data="hi", headers=bearer(token), timeout=10).status_code == 201

    out = users_cli(base_env, "set-access", name, "--no-publish")
    assert "sessions and tokens are ended" in out

    assert requests.post(publish, data="hi", headers=bearer(token), timeout=10).status_code == 401
    new_token = get_token(server, name)
    refused = requests.post(publish, data="hi", headers=bearer(new_token), timeout=10)
    assert refused.status_code == 403 and "may not publish" in refused.json()["error"]


def test_roles_and_permissions_come_from_the_user_store_not_the_token(
    server, store, settings, channel
):
    """A token signed with the server's key (a leaked key, an old version)
    that claims more than the user has gets only what the user has."""
    user = store.create(unique("plain"), PASSWORD)
    claims = {
        **tokens.issue(user, settings)[1],
        "roles": ["admin"],
        "perms": {"publish": ["*"], "subscribe": ["*"]},
    }
    token = jwt.encode(claims, tokens.signing_key(settings["SECRET_KEY"]), algorithm="HS256")
    assert me(server, token).json()["user"]["roles"] == ["user"]
    admin_view = requests.get(f"{server.url}/admin/processes", headers=bearer(token), timeout=10)
    assert admin_view.status_code == 403
    publish = requests.post(
        f"{server.url}/pub/news.{channel}", data="x", headers=bearer(token), timeout=10
    )
    assert publish.status_code == 403


# -- claims of unexpected types -------------------------------------------------------


def _encrypted(settings, value):
    return tokens._fernet(settings["SECRET_KEY"]).encrypt(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "claim, value, reason",
    [
        ("perms", "chat.*", "'perms'"),
        ("perms", {"publish": "chat.*"}, "'perms'"),
        ("roles", "admin", "'roles'"),
        ("roles", {"admin": True}, "'roles'"),
        ("sessionData", ["not", "an", "object"], "sessionData must be an object"),
        ("sessionData", {"fullname": 5}, "sessionData"),
        ("sessionData", 42, "'sessionData'"),
        ("exp", "99999999999", "'exp'"),
        ("epoch", 7, "'epoch'"),
    ],
)
def test_claims_of_the_wrong_type_are_401_with_the_reason(
    server, store, settings, claim, value, reason
):
    user = store.create(unique("typ"), PASSWORD)
    claims = tokens.issue(user, settings)[1]
    claims[claim] = (
        _encrypted(settings, value)
        if claim == "sessionData" and not isinstance(value, int)
        else value
    )
    token = jwt.encode(claims, tokens.signing_key(settings["SECRET_KEY"]), algorithm="HS256")
    response = requests.post(f"{server.url}/auth/tokendata", headers=bearer(token), timeout=10)
    assert response.status_code == 401, response.text
    assert reason in response.json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# -- per-account login limit ----------------------------------------------------------------


def test_the_account_limit_holds_however_many_addresses_guess(start_server, store):
    """Behind one trusted proxy, every guess comes from a new address: the
    per-address limit never trips, the per-account one does, on every login
    endpoint together, and refuses even the right password."""
    server = start_server(
        TRUSTED_PROXIES=1, LOGIN_RATE_LIMIT="2 per hour", LOGIN_ACCOUNT_RATE_LIMIT="4 per hour"
    )
    victim, bystander = store.create(unique("vic"), PASSWORD), store.create(unique("by"), PASSWORD)
    addresses = (f"10.{n // 250}.{n % 250}.{uuid.uuid4().int % 250}" for n in range(10_000))
    wrong = {"username": victim.name, "password": "guess guess"}

    def from_new_address(method, path, **kwargs):
        return requests.request(
            method,
            f"{server.url}{path}",
            timeout=30,
            headers={"X-Forwarded-For": next(addresses)},
            **kwargs,
        )

    guesses = [
        from_new_address("POST", "/auth/login", json=wrong).status_code,
        from_new_address("POST", "/auth/token", json=wrong).status_code,
        from_new_address("GET", "/auth/basic", auth=(victim.name, "guess guess")).status_code,
        from_new_address("POST", "/auth/challenge", json={"username": victim.name}).status_code,
    ]
    assert guesses == [401, 401, 401, 200]
    right = from_new_address(
        "POST", "/auth/login", json={"username": victim.name, "password": PASSWORD}
    )
    assert right.status_code == 429
    assert "for this account" in right.json()["error"]
    assert int(right.headers["Retry-After"]) > 0
    assert from_new_address("POST", "/auth/token", json=wrong).status_code == 429
    other = from_new_address(
        "POST", "/auth/token", json={"username": bystander.name, "password": PASSWORD}
    )
    assert other.status_code == 200  # one account's limit is not another's


# -- redirects never come from the Host header ------------------------------------------------


def test_auth_page_does_not_redirect_to_the_host_header(server):
    response = requests.get(
        f"{server.url}/auth", headers={"Host": "evil.example"}, allow_redirects=False, timeout=10
    )
    assert "evil.example" not in response.headers.get("Location", "")
    assert response.status_code == 200 and "text/html" in response.headers["Content-Type"]


def test_trusted_hosts_refuses_a_foreign_host_before_any_redirect(start_server):
    server = start_server(TRUSTED_HOSTS="127.0.0.1, localhost")
    foreign = requests.get(
        f"{server.url}/longpoll",
        headers={"Host": "evil.example"},
        allow_redirects=False,
        timeout=10,
    )
    assert foreign.status_code == 400
    assert "not trusted" in foreign.json()["error"]
    own = requests.get(f"{server.url}/longpoll", allow_redirects=False, timeout=10)
    assert own.status_code in (301, 308)
    assert own.headers["Location"] == "/longpoll/"


@pytest.mark.parametrize("path", ["/longpoll", "/qa", "/clock", "/ticker"])
def test_no_redirect_goes_to_the_host_a_client_sent(server, path):
    response = requests.get(
        server.url + path, headers={"Host": "evil.example"}, allow_redirects=False, timeout=10
    )
    assert response.status_code in (301, 308)
    assert response.headers["Location"] == path + "/"  # a path: this site, whatever Host said


# -- no cache keeps credentials or admin views ------------------------------------------------


def test_credentials_and_admin_views_are_no_store(server, store, admin_token):
    name = unique("cache")
    store.create(name, PASSWORD)
    token_answer = requests.post(
        f"{server.url}/auth/token", timeout=30, json={"username": name, "password": PASSWORD}
    )
    token = token_answer.json()["token"]
    answers = {
        "/auth/token": token_answer,
        "/auth/tokendata": requests.post(
            f"{server.url}/auth/tokendata", headers=bearer(token), timeout=10
        ),
        "/auth/login": requests.post(
            f"{server.url}/auth/login", timeout=30, json={"username": name, "password": PASSWORD}
        ),
        "/auth/me": me(server, token),
        "/admin/processes": requests.get(
            f"{server.url}/admin/processes", headers=bearer(admin_token), timeout=10
        ),
        "/metrics": requests.get(f"{server.url}/metrics", headers=bearer(admin_token), timeout=10),
    }
    assert {
        path: (r.status_code, r.headers.get("Cache-Control")) for path, r in answers.items()
    } == {path: (200, "no-store") for path in answers}


# -- worker details: administrators only, in production -------------------------------------


def test_production_shows_worker_details_to_administrators_only(
    start_server, admin_token, alice_token
):
    server = start_server(APP_ENV="production")
    for token in (None, alice_token):
        headers = {"Accept": "application/json", **(bearer(token) if token else {})}
        health = requests.get(f"{server.url}/healthz", headers=headers, timeout=10)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        whoami = requests.get(f"{server.url}/whoami", headers=headers, timeout=10)
        assert whoami.json() == {"status": "ok"}
        page = requests.get(f"{server.url}/whoami", timeout=10)
        assert str(server.process.pid) not in page.text and "pid" not in page.text

    admin = {"Accept": "application/json", **bearer(admin_token)}
    health = requests.get(f"{server.url}/healthz", headers=admin, timeout=10).json()
    assert health["status"] == "ok" and health["pid"] > 0 and "subscribers" in health
    whoami = requests.get(f"{server.url}/whoami", headers=admin, timeout=10).json()
    assert whoami["pid"] > 0 and whoami["host"]


def test_dev_shows_worker_details_to_anyone(server):
    health = requests.get(f"{server.url}/healthz", timeout=10)
    assert health.json()["pid"] > 0 and "subscribers" in health.json()
    assert health.headers["Cache-Control"] == "no-store"
