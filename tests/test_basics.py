"""Chapter-5 basics: index, health, whoami, routing with variables, cookies, the SSE clock."""

import collections
import gc
import io
import json
import re
import subprocess
import sys

import pytest
import requests
from flask import Response

from core.keys import Keys
from core.security import security_headers
from tests.clients import LongPoller, SSEClient
from tests.servers import ROOT


@pytest.mark.integration
def test_index_links_every_demo(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for link in (
        "/longpoll/",
        "/clock/",
        "/qa/",
        "/ticker/",
        "/auth/",
        "/editor/welcome",
        "/draw/",
        "/track/",
        "/admin/track",
        "/ws/",
        "/whoami",
        "/listCities/usa/ohio",
        "/cookie",
        "/healthz",
    ):
        assert f'href="{link}"' in html


@pytest.mark.integration
def test_index_links_every_admin_page_marked_for_administrators(client, app):
    html = client.get("/").get_data(as_text=True)
    admin_pages = {
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/admin/")
        and "GET" in rule.methods
        and not rule.websocket
        and not rule.rule.endswith("/stream")
        and "<" not in rule.rule
    }
    assert admin_pages >= {"/admin/monitor", "/admin/processes", "/admin/track", "/admin/lab"}
    for link in sorted(admin_pages | {"/metrics"}):
        item = html[html.index(f'href="{link}"') :]
        item = item[: item.index("</li>")]
        assert "(administrators)" in item, link


@pytest.mark.integration
def test_pages_carry_a_content_security_policy_and_every_response_the_basic_headers(client):
    page = client.get("/clock/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    script_src = csp.split("script-src")[1].split(";")[0]
    assert "unsafe-eval" not in csp and "'unsafe-inline'" not in script_src
    for response in (page, client.get("/healthz"), client.get("/no/such/page")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"
    assert "Content-Security-Policy" not in client.get("/healthz").headers  # JSON


@pytest.mark.unit
def test_a_header_the_view_set_is_kept_and_the_others_added_once():
    own = Response("<p>hi</p>", mimetype="text/html", headers={"x-frame-options": "SAMEORIGIN"})
    headers = security_headers(own).headers
    assert headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert headers.getlist("X-Content-Type-Options") == ["nosniff"]
    assert len(headers.getlist("Content-Security-Policy")) == 1
    moved = Response(status=308, headers={"Location": "http://evil.example/qa/?x=1"})
    assert security_headers(moved).headers["Location"] == "/qa/?x=1"


@pytest.mark.integration
def test_healthz_reports_redis_hub_and_pid(server):
    response = requests.get(server.url + "/healthz", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["redis"] is True and body["hub"] is True
    assert isinstance(body["pid"], int)


@pytest.mark.integration
def test_whoami_shows_the_serving_worker_and_the_workers_share_the_port(server):
    pids = set()
    for _ in range(20):
        body = requests.get(
            server.url + "/whoami", headers={"Accept": "application/json"}, timeout=5
        ).json()
        pids.add(body["pid"])
        assert body["worker"] in {"1", "2"}
    assert len(pids) == 2  # two pre-forked workers behind one port
    html = requests.get(server.url + "/whoami", timeout=5)
    assert html.headers["Content-Type"].startswith("text/html")
    assert "Served by worker" in html.text


@pytest.mark.integration
@pytest.mark.parametrize(
    "path, cities",
    [
        (
            "/listCities/usa/ohio",
            ["Columbus", "Cleveland", "Cincinnati", "Toledo", "Akron", "Dayton"],
        ),
        (
            "/listCities/Canada/British%20Columbia",
            ["Vancouver", "Surrey", "Burnaby", "Richmond", "Abbotsford", "Coquitlam"],
        ),
    ],
)
def test_list_cities(client, path, cities):
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json() == cities


@pytest.mark.integration
@pytest.mark.parametrize(
    "path, status, error",
    [
        ("/listCities/atlantis/ohio", 404, "unknown country"),
        ("/listCities/usa/narnia", 404, "unknown state"),
        ("/listCities/version/x", 404, "unknown country"),  # was a 500: an internal key's name
        ("/listCities/usa/<script>", 400, "names of letters"),
        ("/listCities", 404, "not found"),
        ("/listCities/usa", 404, "not found"),
    ],
)
def test_list_cities_errors_are_json(client, path, status, error):
    response = client.get(path)
    assert response.status_code == status
    assert error in response.get_json()["error"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "path",
    [
        "/listCities/usa/ohio",
        "/listCities/Canada/British%20Columbia",
        "/listCities/usa/narnia",
        "/listCities/atlantis/ohio",
        "/listCities/usa/<script>",
        "/listCities/usa",
        "/listCities",
    ],
)
def test_list_cities_with_a_trailing_slash_answers_the_same(client, path):
    """The book's Express route is not strict about a trailing slash."""
    plain, slashed = client.get(path), client.get(path + "/")
    assert (slashed.status_code, slashed.get_json()) == (plain.status_code, plain.get_json())


@pytest.mark.integration
def test_cities_come_from_redis(client, rdb, app):
    client.get("/listCities/usa/ohio")
    key = Keys(app.config["REDIS_PREFIX"]).cities_country("usa")
    assert json.loads(rdb.hget(key, "ohio"))[0] == "Columbus"


@pytest.mark.integration
def test_cookie_round_trip(client):
    assert client.get("/mycookie").status_code == 404
    response = client.get("/cookie")
    header = response.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header
    value = header.split(";")[0].split("=")[1]
    mine = client.get("/mycookie")
    assert mine.status_code == 200 and mine.get_data(as_text=True).strip() == value


@pytest.mark.integration
def test_forged_cookie_is_rejected(client):
    client.set_cookie("demo_cookie", "<img src=x>")
    response = client.get("/mycookie")
    assert response.status_code == 400
    assert "not a number" in response.get_json()["error"]


@pytest.mark.integration
def test_sse_clock_pads_sets_retry_and_ticks(server):
    clock = SSEClient(server.url + "/sse/clock")
    assert clock.status == 200
    assert clock.response.headers["Content-Type"].startswith("text/event-stream")
    assert clock.wait_count(2, timeout=5)
    first, second = (json.loads(e["data"]) for e in clock.items[:2])
    assert clock.retry == 2000
    assert clock.comments >= 1  # the 2 KB padding comment
    assert second["epoch_ms"] - first["epoch_ms"] == pytest.approx(1000, abs=150)
    clock.close()


@pytest.mark.integration
def test_unknown_paths_get_json_404(server):
    response = requests.get(server.url + "/no/such/page", timeout=5)
    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.integration
def test_broadcast_worker_publishes_each_stdin_line(server, base_env):
    marker, _ = server.publish("broadcast-test", "marker")
    poller = LongPoller(f"{server.url}/sub/broadcast-test", cursor=marker)
    lines = ["first line", "", "second line  ", "ünïcødé ✓"]
    result = subprocess.run(
        [sys.executable, "-m", "workers.broadcast", "--channel", "broadcast-test"],
        input="\n".join(lines) + "\n",
        text=True,
        capture_output=True,
        cwd=ROOT,
        env=base_env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert poller.wait_count(3)
    assert [e["data"] for e in poller.items] == ["first line", "second line  ", "ünïcødé ✓"]
    poller.close()


@pytest.mark.integration
def test_broadcast_worker_rejects_a_bad_channel(base_env):
    result = subprocess.run(
        [sys.executable, "-m", "workers.broadcast", "--channel", "no spaces"],
        input="",
        text=True,
        capture_output=True,
        cwd=ROOT,
        env=base_env,
        timeout=30,
    )
    assert result.returncode == 2
    assert "invalid channel name" in result.stderr


@pytest.mark.unit
def test_the_security_review_cites_tests_that_exist():
    """docs/security.md names the test that proves each control: keep it true."""
    cited = set(re.findall(r"`(test_\w+)`", (ROOT / "docs" / "security.md").read_text()))
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE))
    assert cited and not cited - defined, sorted(cited - defined)


def _wsgi_call(app, method, path, body=b""):
    """The app called as gunicorn calls it (no test client, whose own objects
    would muddy what the cycle collector finds); returns the status line."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.7",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)),
    }
    status = []
    answer = app.wsgi_app(environ, lambda line, headers, exc_info=None: status.append(line))
    b"".join(answer)
    getattr(answer, "close", lambda: None)()
    return status[0]


@pytest.mark.integration
def test_a_refused_request_leaves_no_frames_for_the_cycle_collector(app):
    """An error answer must not keep the frames of the request that raised it:
    each refused request used to leave about 120 objects in reference cycles
    (the error, its traceback, the request's frames and session), and under a
    flood of 401s, 404s and 429s the cycle collector stopped a worker's event
    loop for 8 to 47 ms at a time to free them."""
    refused = [
        ("GET", "/no-such-page", b"", "404"),  # a routing error
        ("POST", "/pub/news", b"hello", "401"),  # abort_json in a view
        ("GET", "/healthz", b"", "200"),  # and an answer that is not an error
    ]
    for method, path, body, _ in refused:
        _wsgi_call(app, method, path, body)  # first calls warm caches up
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for method, path, body, expected in refused:
            for _ in range(20):
                assert _wsgi_call(app, method, path, body).startswith(expected)
        gc.collect()
        kept = collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not {"frame", "traceback", "RedisSession", "Request"} & kept.keys(), kept


@pytest.mark.unit
def test_flask_asks_once_per_function_and_forgets_functions_made_per_request():
    from app import RealtimeFlask

    app = RealtimeFlask(__name__)

    def view():
        return "ok"

    async def coroutine_view():
        return "ok"

    assert app.ensure_sync(view) is view and app.ensure_sync(view) is view
    with pytest.raises(RuntimeError):  # (no asgiref here) never taken for a plain function
        app.ensure_sync(coroutine_view)
    for n in range(100):  # e.g. an after_this_request closure, made per request
        app.ensure_sync(lambda response, n=n: response)
    gc.collect()
    assert set(app._is_sync) == {view}
