"""Newcomer polish (issue 19, item 8): every page has a viewport and the favicon,
/favicon.ico answers, browsers get HTML error pages (API clients JSON), and
`make run`'s log says where the administrator's password is."""

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from werkzeug.exceptions import TooManyRequests

from core.errors import abort_json
from tests.servers import ROOT

# What Chromium sends when it navigates to a page.
BROWSER = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'
FAVICON = '<link rel="icon" href="/static/favicon.svg">'
SPEC = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))


def page_routes():
    """Every GET that answers an HTML page, from docs/openapi.yaml (which
    tests/test_openapi.py keeps equal to the app's routes): a new page is
    checked here without being listed."""
    paths = []
    for path, item in SPEC["paths"].items():
        ok = item.get("get", {}).get("responses", {}).get("200", {})
        if ok.get("$ref", "").endswith("/Html") or "text/html" in ok.get("content", {}):
            paths.append(path.replace("{doc}", "welcome"))
    return sorted(paths)


def assert_head(html, where):
    assert VIEWPORT in html, f"{where}: no viewport meta"
    assert FAVICON in html, f"{where}: no favicon link"


@pytest.mark.unit
def test_the_page_routes_are_found():
    assert {"/", "/whoami", "/editor/welcome", "/admin/monitor", "/admin/lab"} <= set(page_routes())


@pytest.mark.integration
@pytest.mark.parametrize("path", page_routes())
def test_every_page_has_the_viewport_and_the_favicon(server, admin_token, path):
    response = requests.get(
        server.url + path,
        timeout=10,
        headers={"Accept": BROWSER, "Authorization": f"Bearer {admin_token}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert_head(response.text, path)
    if path.startswith("/admin/"):  # and the page saying how to log in as an admin
        anonymous = requests.get(server.url + path, headers={"Accept": BROWSER}, timeout=10)
        assert anonymous.status_code == 401
        assert_head(anonymous.text, f"{path} (anonymous)")


@pytest.mark.unit
@pytest.mark.parametrize(
    "html_file",
    sorted([*ROOT.glob("static/*.html"), *ROOT.glob("templates/*.html")]),
    ids=lambda p: p.name,
)
def test_every_html_file_has_the_viewport_and_the_favicon(html_file):
    assert_head(Path(html_file).read_text(encoding="utf-8"), html_file.name)


@pytest.mark.integration
def test_favicon_ico_redirects_to_the_svg(server):
    response = requests.get(server.url + "/favicon.ico", timeout=5, allow_redirects=False)
    assert response.status_code == 301
    assert response.headers["Location"] == "/static/favicon.svg"
    svg = requests.get(server.url + "/favicon.ico", timeout=5)
    assert svg.status_code == 200
    assert svg.headers["Content-Type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg")


# -- error pages: HTML for browsers, JSON for API clients ---------------------------------


def errors_for(server, alice_token):
    """(what, method, path, headers, status): one request per kind of error."""
    return [
        ("unknown path", "GET", "/no/such/page", {}, 404),
        ("unknown state", "GET", "/listCities/usa/narnia", {}, 404),
        ("wrong method", "POST", "/whoami", {}, 405),
        ("no login", "GET", "/admin/processes", {}, 401),
        (
            "not an admin",
            "GET",
            "/admin/processes",
            {"Authorization": f"Bearer {alice_token}"},
            403,
        ),
        ("bad token", "GET", "/auth/me", {"Authorization": "Bearer not-a-token"}, 401),
    ]


@pytest.mark.integration
def test_browsers_get_html_error_pages_with_the_status_and_the_security_headers(
    server, alice_token
):
    for what, method, path, headers, status in errors_for(server, alice_token):
        api = requests.request(method, server.url + path, headers=headers, timeout=10)
        page = requests.request(
            method, server.url + path, timeout=10, headers={**headers, "Accept": BROWSER}
        )
        assert page.status_code == status == api.status_code, what
        assert page.headers["Content-Type"].startswith("text/html"), what
        assert_head(page.text, what)
        assert f"<h1>{status} " in page.text, what
        assert api.json()["error"].replace("'", "&#39;") in page.text, what  # the same reason
        assert "script-src 'self'" in page.headers["Content-Security-Policy"], what
        assert page.headers["X-Content-Type-Options"] == "nosniff", what
        assert page.headers["X-Frame-Options"] == "DENY", what
        assert "Accept" in page.headers["Vary"], what
        if status == 401:  # what the client needs to do next survives too
            assert page.headers["WWW-Authenticate"] == api.headers["WWW-Authenticate"], what


@pytest.mark.integration
@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "application/json, text/plain, */*", "text/event-stream"],
)
def test_api_clients_keep_the_json_bodies(server, alice_token, accept):
    for what, method, path, headers, status in errors_for(server, alice_token):
        plain = requests.request(method, server.url + path, headers=headers, timeout=10)
        asked = requests.request(
            method,
            server.url + path,
            timeout=10,
            headers={**headers, **({"Accept": accept} if accept else {})},
        )
        assert asked.status_code == status, what
        assert asked.headers["Content-Type"] == "application/json", what
        assert asked.json() == plain.json() and "error" in asked.json(), what
        assert "Content-Security-Policy" not in asked.headers, what


@pytest.mark.integration
def test_curl_gets_json_errors(server):
    """curl sends `Accept: */*`."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (CI installs Debian's curl package)")
    result = subprocess.run(
        ["curl", "-s", "-i", server.url + "/no/such/page"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert "404 NOT FOUND" in result.stdout.upper()
    assert re.search(r'\{"error":\s*"The requested URL was not found', result.stdout)


@pytest.mark.integration
def test_the_html_error_page_escapes_the_message(app):
    """Reasons may quote what the client sent."""
    app.add_url_rule(
        "/test-only/hostile",
        "hostile",
        lambda: abort_json(400, "bad name '<script>alert(1)</script>'"),
    )
    client = app.test_client()
    page = client.get("/test-only/hostile", headers={"Accept": BROWSER})
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and page.mimetype == "text/html"
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert client.get("/test-only/hostile").get_json() == {
        "error": "bad name '<script>alert(1)</script>'"
    }


@pytest.mark.integration
def test_429_and_500_are_html_for_browsers_json_for_api_clients(app):
    def too_many():
        raise TooManyRequests("slow down")

    def broken():
        raise RuntimeError("a bug")

    app.add_url_rule("/test-only/too-many", "too_many", too_many)
    app.add_url_rule("/test-only/broken", "broken", broken)
    client = app.test_client()
    for path, status, reason in (
        ("/test-only/too-many", 429, "slow down"),
        ("/test-only/broken", 500, "internal error"),
    ):
        page = client.get(path, headers={"Accept": BROWSER})
        assert page.status_code == status and page.mimetype == "text/html"
        assert reason in page.get_data(as_text=True)
        assert "Content-Security-Policy" in page.headers
        api = client.get(path)
        assert api.status_code == status and api.get_json() == {"error": reason}


@pytest.mark.integration
def test_a_websocket_handshake_never_gets_html(client):
    """Its refusal's reason is read back from the JSON (core/transports/websocket.py)."""
    response = client.get(
        "/ws/echo",
        headers={
            "Accept": BROWSER,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Origin": "http://elsewhere.example",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert response.status_code == 403
    assert response.get_json() == {
        "error": "WebSocket connections from this Origin are not allowed"
    }


# -- make run's log: where the administrator's password is --------------------------------


def hint_lines(server):
    return [
        line
        for line in server.log().splitlines()
        if "Administrator" in line and "set-password" in line
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_every_start_logs_once_where_the_admin_password_is_and_how_to_reset_it(
    start_server, base_env
):
    prefix = f"hint{uuid.uuid4().hex[:6]}:"
    server = start_server(workers=2, DEMO_USERS=1, REDIS_PREFIX=prefix)
    lines = hint_lines(server)
    assert len(lines) == 1, server.log()  # the master's, not one per worker
    assert "printed in this log" in lines[0]
    assert "`.venv/bin/flask --app app users set-password admin`" in lines[0]
    assert "Demo users: jack/beanstalk, admin/" in server.log()  # the first start's

    # The command it names works (on the same Redis and prefix).
    env = {**base_env, "REDIS_PREFIX": prefix}
    reset = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "users", "set-password", "admin"],
        input="a-new-admin-password\na-new-admin-password\n",
        text=True,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert reset.returncode == 0, reset.stderr
    token = requests.post(
        server.url + "/auth/token",
        timeout=30,
        json={"username": "admin", "password": "a-new-admin-password"},
    )
    assert token.status_code == 200

    # A second start on the same Redis: the account exists, nothing new is
    # printed about it, but the line is there again.
    again = start_server(workers=2, DEMO_USERS=1, REDIS_PREFIX=prefix)
    assert len(hint_lines(again)) == 1, again.log()
    assert "Demo users: jack" not in again.log()


@pytest.mark.integration
def test_without_demo_users_the_log_says_how_to_create_an_administrator(start_server):
    server = start_server(workers=1)  # the tests' servers: DEMO_USERS unset
    lines = [line for line in server.log().splitlines() if "Administrators:" in line]
    assert len(lines) == 1, server.log()
    assert "users create NAME --admin" in lines[0] and "set-password NAME" in lines[0]
