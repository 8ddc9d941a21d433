"""Fixtures: a real redis-server per session and real gunicorn servers.

The same `core.embedded_redis` that `make run` uses starts the Redis. The
`server` fixture is a gunicorn with 2 gevent workers, as deployed; tests that
need other settings start their own with `start_server(...)`.
"""

import os
import re
import shutil

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from core.config import SETTINGS
from core.embedded_redis import EmbeddedRedis
from tests.servers import GunicornServer
from tests.settings import SECRET_KEY

# `make test-fast` (--hypothesis-profile=fast): property tests try fewer examples.
hypothesis_settings.register_profile("fast", max_examples=20)

# -- every test is `unit` or `integration` (markers in pyproject.toml) ----------------------

# The fixtures below that start a process (redis-server, gunicorn, Chromium) or
# need one: a unit test requests none of them, directly or through another fixture.
PROCESS_FIXTURES = frozenset(
    {
        "redis_server",
        "base_env",
        "admin_token",
        "alice_token",
        "rdb",
        "start_server",
        "server",
        "app",
        "client",
        "browser",
        "page",
    }
)


@pytest.hookimpl(tryfirst=True)  # sees every test, before `-m` deselects any
def pytest_collection_modifyitems(items):
    """Collection fails when a test is marked neither or both of `unit` and
    `integration`, when a unit test requests a process, or when a test that
    drives Chromium is not marked `browser`: `make test-fast` (`-m unit`) and
    `-m "not browser"` select what they say."""
    wrong = []
    for item in items:
        kinds = sorted({m.name for m in item.iter_markers()} & {"unit", "integration"})
        needs = sorted(PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        if len(kinds) != 1:
            wrong.append(
                f"{item.nodeid}: marked {'both' if kinds else 'neither'} unit "
                f"{'and' if kinds else 'nor'} integration"
            )
        elif kinds == ["unit"] and needs:
            wrong.append(f"{item.nodeid}: a unit test requests {', '.join(needs)}")
        if {"browser", "page"}.intersection(needs) and not item.get_closest_marker("browser"):
            wrong.append(f"{item.nodeid}: drives Chromium but is not marked browser")
    if wrong:
        raise pytest.UsageError(
            "\n  ".join(
                ["tests/conftest.py: every test is `unit` (no process) or `integration`:", *wrong]
            )
        )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def base_env(redis_server, tmp_path_factory):
    instance = tmp_path_factory.mktemp("instance")
    return {
        **os.environ,
        "APP_ENV": "dev",
        "REDIS_URL": redis_server.url,
        "INSTANCE_DIR": str(instance),
        "SECRET_KEY": SECRET_KEY,
        "LOGIN_RATE_LIMIT": "10000 per minute",  # the rate-limit test sets its own
        # Tests come from one address, many at once: quotas out of the way
        # (each quota's own test sets it low). core/quotas.py
        **{
            name: "1000000 per minute"
            for name in SETTINGS
            if name.endswith("_RATE_LIMIT") and name != "LOGIN_RATE_LIMIT"
        },
        "CONNECTIONS_PER_ADDRESS": "1000000",
        "PYTHONUNBUFFERED": "1",
        "GRACEFUL_TIMEOUT": "3",  # tests leave streams open; do not wait 30 s at teardown
        "JOB_WORKERS": "0",  # tests/test_jobs.py starts its own RQ workers
    }


@pytest.fixture(scope="session")
def admin_token(redis_server, base_env):
    """A bearer token of an admin user (may publish everywhere), valid on
    every test server: they share the Redis and the SECRET_KEY."""
    from core.config import load_settings
    from core.tokens import issue
    from core.users import UserStore

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    settings = load_settings(base_env)
    store = UserStore(client, settings["REDIS_PREFIX"])
    admin = store.get("test-admin") or store.create(
        "test-admin", "test-admin-password", fullname="Test Admin", admin=True
    )
    token, _ = issue(admin, settings, ttl=6 * 3600)
    GunicornServer.default_token = token
    return token


@pytest.fixture(scope="session")
def alice_token(redis_server, base_env):
    """A bearer token of a plain (non-admin) user."""
    from core.config import load_settings
    from core.tokens import issue
    from core.users import UserStore

    settings = load_settings(base_env)
    store = UserStore(
        redis.Redis.from_url(redis_server.url, decode_responses=True), settings["REDIS_PREFIX"]
    )
    user = store.get("test-plain") or store.create("test-plain", "test-plain-password")
    return issue(user, settings, ttl=6 * 3600)[0]


@pytest.fixture
def rdb(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def start_server(base_env, tmp_path_factory, admin_token):
    """Factory: start_server(workers=2, SETTING=value, ...) -> a running GunicornServer."""
    started = []

    def start(workers=2, **settings):
        log = tmp_path_factory.mktemp("gunicorn") / "server.log"
        server = GunicornServer(base_env, log, workers=workers, **settings).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server):
    """The default deployment: 2 gevent workers."""
    return start_server(workers=2)


@pytest.fixture
def app(base_env, monkeypatch):
    """An in-process app for plain request/response endpoints (Flask test client)."""
    for name in (
        "REDIS_URL",
        "INSTANCE_DIR",
        "SECRET_KEY",
        "APP_ENV",
        "LOGIN_RATE_LIMIT",
        "CONNECTIONS_PER_ADDRESS",
        *(n for n in SETTINGS if n.endswith("_RATE_LIMIT")),
    ):
        monkeypatch.setenv(name, base_env[name])
    from app import create_app

    app = create_app({"TESTING": True})
    yield app
    app.extensions["hub"].stop()  # its listener ends quietly when Redis stops


@pytest.fixture
def client(app):
    return app.test_client()


_channel_counter = iter(range(1, 10**9))


@pytest.fixture
def channel(request):
    """A channel name no other test uses."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", request.node.name)[:40]
    return f"t{next(_channel_counter)}.{os.getpid()}.{name}"


# -- Chromium, driven by Playwright (browser tests) ----------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (CI installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
