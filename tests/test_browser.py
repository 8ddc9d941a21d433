"""The demo pages in real headless Chromium (Playwright driving the system browser)."""

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from core.hub import Hub
from tests.clients import worker_pids
from tests.pages import wait_for
from tests.servers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def broadcast(base_env, lines):
    subprocess.run(
        [sys.executable, "-m", "workers.broadcast"],
        input="\n".join(lines) + "\n",
        text=True,
        cwd=ROOT,
        env=base_env,
        check=True,
        timeout=30,
    )


def test_longpoll_page_shows_lines_sent_through_the_broadcaster(server, base_env, page):
    page.goto(server.url + "/longpoll/")  # the page starts from the newest id at this moment
    broadcast(base_env, ["hello from stdin", "<b>not bold</b>"])
    items = page.locator("#lines li")
    items.nth(1).wait_for(timeout=15_000)
    texts = [t.split("via")[0].strip() for t in items.all_inner_texts()]
    assert texts == ["hello from stdin", "<b>not bold</b>"]
    assert page.locator("#lines b").count() == 0  # text, not HTML
    assert page.locator("#status").inner_text() == "listening"
    broadcast(base_env, ["a third line"])
    items.nth(2).wait_for(timeout=15_000)
    assert "a third line" in items.nth(2).inner_text()


def test_the_pages_policy_stops_injected_inline_script(server, page):
    page.goto(server.url + "/clock/")
    page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.injected = true";
        document.body.append(script);
    }""")
    page.wait_for_timeout(200)
    assert page.evaluate("window.injected") is None  # blocked by script-src 'self'
    assert page.locator("#status").inner_text() in ("connecting", "streaming")


def test_clock_page_ticks(server, page):
    page.goto(server.url + "/clock/")
    wait_for(page, "Number(document.getElementById('ticks').textContent) >= 2", timeout=10_000)
    first = page.locator("#clock").inner_text()
    wait_for(page, "Number(document.getElementById('ticks').textContent) >= 4", timeout=10_000)
    assert page.locator("#clock").inner_text() != first
    assert page.locator("#status").inner_text() == "streaming"
    assert page.locator("#pid").inner_text().isdigit()


@pytest.fixture(scope="module")
def browser_user(redis_server):
    import uuid

    import redis

    from core.users import UserStore

    store = UserStore(redis.Redis.from_url(redis_server.url, decode_responses=True), "rt:")
    return store.create(f"web{uuid.uuid4().hex[:8]}", "browser-password", fullname="Web Surfer")


def _fill(page, user, password):
    page.fill("#username", user)
    page.fill("#password", password)


def test_challenge_response_login_in_the_browser(server, page, browser_user):
    page.goto(server.url + "/auth/")
    _fill(page, browser_user.name, "wrong-password")
    page.click("#scram-go")
    wait_for(
        page, "document.getElementById('scram-log').textContent.includes('← 401')", timeout=30_000
    )
    assert page.locator("#whoami").inner_text() == "not logged in"

    _fill(page, browser_user.name, "browser-password")
    page.click("#scram-go")
    wait_for(
        page,
        "document.getElementById('scram-log').textContent.includes('server proved')",
        timeout=30_000,
    )
    log = page.locator("#scram-log").inner_text()
    assert "browser-password" not in log  # the password never went over the wire
    wait_for(
        page, "document.getElementById('whoami').textContent.includes('(session)')", timeout=10_000
    )


def test_token_flow_in_the_browser(server, page, browser_user):
    page.goto(server.url + "/auth/")
    _fill(page, browser_user.name, "browser-password")
    page.click("#token-go")
    page.wait_for_selector("#tokendata-go:not([disabled])", timeout=15_000)
    assert '"alg":"HS256"' in page.locator("#token-log").inner_text()
    page.click("#tokendata-go")
    wait_for(
        page,
        "document.getElementById('token-log').textContent.includes('Web Surfer')",
        timeout=15_000,
    )  # sessionData, decrypted by the server
    page.click("#revoke-go")
    wait_for(
        page, "document.getElementById('token-log').textContent.includes('revoked')", timeout=15_000
    )
    page.click("#tokendata-go")
    wait_for(
        page,
        "document.getElementById('token-log').textContent.includes('token was revoked')",
        timeout=15_000,
    )


def test_password_session_and_basic_in_the_browser(server, page, browser_user):
    page.goto(server.url + "/auth/")
    _fill(page, browser_user.name, "browser-password")
    page.click("#basic-go")
    wait_for(
        page,
        "document.getElementById('basic-log').textContent.includes('Welcome, Web Surfer!')",
        timeout=15_000,
    )
    page.click("#login-go")
    wait_for(
        page, "document.getElementById('whoami').textContent.includes('(session)')", timeout=15_000
    )
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["session"]["httpOnly"] is True and cookies["session"]["sameSite"] == "Lax"
    page.click("#logout-go")
    wait_for(
        page, "document.getElementById('whoami').textContent === 'not logged in'", timeout=15_000
    )


def test_two_qa_pages_see_questions_but_answers_only_when_following(start_server, browser):
    import uuid

    board = start_server(REDIS_PREFIX=f"qab{uuid.uuid4().hex[:6]}:")
    first, second = browser.new_context().new_page(), browser.new_context().new_page()
    for page in (first, second):
        page.goto(board.url + "/qa/")
        page.wait_for_selector("#status.ok", timeout=15_000)
    first.fill("#question", "Who broadcasts the <b>questions</b>?")
    first.click("#ask-form button")
    question = second.get_by_role("button", name="Who broadcasts the <b>questions</b>?")
    question.wait_for(timeout=15_000)
    assert second.locator("#questions b").count() == 0  # rendered as text

    first.get_by_role("button", name="Who broadcasts the <b>questions</b>?").click()
    first.wait_for_selector("#answer:not([disabled])", timeout=15_000)
    first.fill("#answer", "the hub, through Redis")
    first.click("#answer-button")
    first.locator("#answers li", has_text="the hub, through Redis").wait_for(timeout=15_000)
    assert second.locator("#answers li").count() == 0  # not following it: nothing

    question.click()
    second.locator("#answers li", has_text="the hub, through Redis").wait_for(timeout=15_000)
    for page in (first, second):
        page.context.close()


@pytest.mark.slow
def test_ticker_page_updates_at_the_pace_the_server_sets(start_server, browser):
    import uuid

    server = start_server(TICKER_CALL_IN_MS=1000, REDIS_PREFIX=f"tkb{uuid.uuid4().hex[:6]}:")
    context = browser.new_context()
    page = context.new_page()

    def requested():
        """When the page started each quote request, in seconds, by the
        browser's own clock (Resource Timing): events relayed to this process
        can arrive late and bunched on a busy machine (a gap of 1.0 s was
        seen here as 0.67 s)."""
        return page.evaluate(
            "performance.getEntriesByType('resource')"
            ".filter(e => e.name.includes('/ticker/quote')).map(e => e.startTime / 1000)"
        )

    page.goto(server.url + "/ticker/")
    wait_for(page, "Number(document.getElementById('polls').textContent) >= 4", timeout=15_000)
    assert page.locator("#callin").inner_text() == "1000"
    assert page.locator("#field-price").inner_text().replace(".", "").isdigit()
    started = requested()
    assert len(started) >= 4, started
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert min(gaps) > 0.8, gaps  # it waited for callIn between polls
    page.fill("#symbol", "ZZZZ")
    page.click("#symbol-form button")
    wait_for(
        page, "document.getElementById('callin').textContent === 'never (stopped)'", timeout=10_000
    )
    stopped_at = len(requested())
    page.wait_for_timeout(2500)
    assert len(requested()) == stopped_at  # callIn null: no more polls
    # A symbol the server refuses outright (400): stop and say why, not poll in a loop.
    page.fill("#symbol", "BRK-B")
    page.click("#symbol-form button")
    wait_for(
        page, "document.getElementById('error').textContent.includes('symbol')", timeout=10_000
    )
    stopped_at = len(requested())
    page.wait_for_timeout(2500)
    assert len(requested()) == stopped_at
    assert page.locator("#callin").inner_text() == "never (stopped)"
    context.close()


def test_two_editor_pages_typing_at_once_converge_and_show_carets(server, browser):
    import uuid

    url = f"{server.url}/editor/b-{uuid.uuid4().hex[:8]}"
    pages = []
    for name in ("ada", "grace"):
        context = browser.new_context()
        context.add_init_script(f"localStorage.setItem('editor-name', '{name}')")
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#status.ok", timeout=15_000)
        page.click("#text")
        pages.append(page)
    ada, grace = pages
    for a_char, g_char in zip("abc😀d", "xyz\tw", strict=False):  # interleaved: ops cross in flight
        ada.keyboard.type(a_char)
        grace.keyboard.press("Tab") if g_char == "\t" else grace.keyboard.type(g_char)
    converged = (
        "document.getElementById('text').value.length >= 14 && "
        "document.getElementById('version').textContent !== 'null'"
    )
    for page in pages:
        wait_for(page, converged, timeout=15_000)
    wait_for(
        ada,
        "(t) => document.getElementById('text').value === t",
        arg=grace.locator("#text").input_value(),
        timeout=15_000,
    )
    text = ada.locator("#text").input_value()
    assert sorted(text.replace("    ", "\t")) == sorted("abc😀dxyz\tw")
    assert "    " in text  # Tab inserted indentation
    ada.locator(".remote-caret[data-name='grace']").wait_for(state="attached", timeout=15_000)
    grace.locator(".remote-caret[data-name='ada']").wait_for(state="attached", timeout=15_000)
    for page in pages:
        page.context.close()


def test_two_drawing_pages_see_each_others_strokes_and_pointers(server, browser):
    pages = []
    for _ in range(2):
        page = browser.new_context(viewport={"width": 800, "height": 600}).new_page()
        page.goto(server.url + "/draw/")
        page.wait_for_selector("#status.ok", timeout=15_000)
        pages.append(page)
    artist, watcher = pages
    artist.mouse.move(200, 300)
    artist.mouse.down()
    for x in range(200, 601, 20):
        artist.mouse.move(x, 300)
        artist.wait_for_timeout(30)
    artist.mouse.up()
    watcher.locator(".pointer").first.wait_for(timeout=15_000)  # the artist's labelled cursor
    # the stroke reached the other canvas: a dark pixel in the middle of the line
    wait_for(
        watcher,
        "document.getElementById('board').getContext('2d')"
        ".getImageData(400, 300, 1, 1).data[3] > 0",
        timeout=15_000,
    )
    artist.context.close()
    watcher.locator(".pointer").first.wait_for(state="detached", timeout=15_000)  # left
    watcher.context.close()


def test_a_tracked_visitor_appears_on_the_admin_dashboard(server, browser):
    admin = browser.new_context()
    dashboard = admin.new_page()
    response = admin.request.post(
        server.url + "/auth/login",
        headers={"Origin": server.url},
        data={"username": "test-admin", "password": "test-admin-password"},
    )
    assert response.ok
    dashboard.goto(server.url + "/admin/track")
    dashboard.wait_for_selector("#status.ok", timeout=15_000)
    visitor = browser.new_context(viewport={"width": 800, "height": 600}).new_page()
    visitor.goto(server.url + "/track/")
    visitor.wait_for_selector("#status.ok", timeout=15_000)
    for x in range(100, 700, 25):
        visitor.mouse.move(x, 200 + x // 10)
        visitor.wait_for_timeout(20)
    visitor_id = visitor.locator("#me").inner_text()
    wait_for(
        dashboard,
        "(id) => document.getElementById('visitors').textContent.split(' ').includes(id)",
        arg=visitor_id,
        timeout=15_000,
    )
    assert int(dashboard.locator("#users").inner_text()) >= 1
    sent = int(visitor.locator("#sent").inner_text())
    assert sent > 5
    wait_for(
        dashboard,
        "(n) => Number(document.getElementById('total').textContent) >= n",
        arg=sent,
        timeout=15_000,
    )  # every move counted on the chart
    visitor.context.close()
    wait_for(
        dashboard,
        "(id) => !document.getElementById('visitors').textContent.split(' ').includes(id)",
        arg=visitor_id,
        timeout=15_000,
    )
    admin.close()


def test_monitor_page_charts_the_workers(server, browser):
    admin = browser.new_context()
    response = admin.request.post(
        server.url + "/auth/login",
        headers={"Origin": server.url},
        data={"username": "test-admin", "password": "test-admin-password"},
    )
    assert response.ok
    page = admin.new_page()
    page.goto(server.url + "/admin/monitor")
    page.wait_for_selector("#status.ok", timeout=15_000)
    wait_for(
        page,
        "[...document.querySelectorAll('#table tr')].filter(r => r.textContent.startsWith('worker'))"
        ".length >= 2",
        timeout=15_000,
    )
    rows = page.locator("#table tr").all_inner_texts()
    assert any(row.startswith("master") for row in rows)
    admin.close()
    anonymous = browser.new_context().new_page()
    anonymous.goto(server.url + "/admin/monitor")
    assert "Administrators only" in anonymous.content()
    anonymous.context.close()


# -- the browser client, static/js/realtime.js (on the /channel/ demo page) -----------------


def shown(page):
    """What the channel page shows: (data, transport, id, served by) per message,
    and the resets it announced."""
    return page.evaluate("""() => [...document.querySelectorAll('#messages li')].map(li => ({
        text: li.firstChild.textContent, via: li.dataset.via, id: li.dataset.id,
        servedBy: li.dataset.servedBy, reset: li.dataset.reset}))""")


def wait_shown(page, count, timeout=30):
    deadline = time.monotonic() + timeout
    while len([m for m in shown(page) if m["id"]]) < count:
        assert time.monotonic() < deadline, f"{len(shown(page))} of {count}: {shown(page)[-3:]}"
        page.wait_for_timeout(100)
    return [m for m in shown(page) if m["id"]]


def wait_status(page, text, timeout=30):
    deadline = time.monotonic() + timeout
    while page.locator("#status").inner_text() != text:
        assert time.monotonic() < deadline, page.locator("#status").inner_text()
        page.wait_for_timeout(100)


@pytest.mark.chaos
@pytest.mark.slow
def test_auto_falls_back_to_sse_then_long_poll_and_comes_back_losing_nothing(
    start_server, browser, redis_server, rdb, channel
):
    server = start_server()
    publisher = Hub(rdb, redis_server.url)  # straight into Redis: it works with no worker up
    blocked = {"websocket": True, "sse": False}
    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def websocket(route):  # a proxy refusing WebSocket upgrades
        if blocked["websocket"]:
            route.close(code=4000, reason="blocked by the test")
        else:
            route.connect_to_server()

    def event_stream(route):  # ... and, later, event streams
        accept = route.request.headers.get("accept", "")
        if blocked["sse"] and "text/event-stream" in accept:
            route.abort()
        else:
            route.continue_()

    page.route_web_socket(re.compile(r"/sub/.*/ws"), websocket)
    page.route(re.compile(r"/sub/"), event_stream)
    page.goto(f"{server.url}/channel/?channel={channel}&transport=auto&retry_better_after=3000")
    wait_status(page, "live (sse)")

    sent, on_websocket = [f"message {i}" for i in range(200)], threading.Event()

    def publish_all():
        for i, text in enumerate(sent):
            if i == 150:  # keep the last 50 for after the way back up
                on_websocket.wait(60)
            publisher.publish(channel, text)
            time.sleep(0.03)

    thread = threading.Thread(target=publish_all, daemon=True)
    thread.start()
    wait_shown(page, 30)
    blocked["sse"] = True
    for pid in worker_pids(server):  # every connection drops; gunicorn starts new workers
        os.kill(pid, signal.SIGKILL)
    wait_status(page, "live (longpoll)")
    wait_shown(page, 60)
    blocked["websocket"] = blocked["sse"] = False
    wait_status(page, "live (websocket)", timeout=30)
    on_websocket.set()
    thread.join(30)
    messages = wait_shown(page, 200)
    assert [m["text"] for m in messages] == sent  # each once, in order
    ids = [m["id"] for m in messages]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    transports = [m["via"] for m in messages]
    assert transports[0] == "sse" and transports[-1] == "websocket"
    assert "longpoll" in transports
    assert not [m for m in shown(page) if m["reset"]]
    context.close()
    assert errors == []


@pytest.mark.chaos
@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_the_client_resumes_after_its_worker_is_killed_and_shows_a_reset(
    start_server, page, redis_server, rdb, channel, transport
):
    server = start_server()
    publisher = Hub(rdb, redis_server.url)
    for i in range(3):
        publisher.publish(channel, f"before {i}")
    # A cursor the channel no longer has (it never had it): the page says so,
    # and goes on from the channel's newest message.
    page.goto(f"{server.url}/channel/?channel={channel}&transport={transport}&since=1-0")
    deadline = time.monotonic() + 20
    while not [m for m in shown(page) if m["reset"]]:
        assert time.monotonic() < deadline, shown(page)
        page.wait_for_timeout(100)
    wait_status(page, f"live ({transport})")
    first = [f"first {i}" for i in range(10)]
    for text in first:
        publisher.publish(channel, text)
    holder = wait_shown(page, 10)[-1]["servedBy"]
    os.kill(int(holder.rsplit("/", 1)[1]), signal.SIGKILL)
    second = [f"second {i}" for i in range(10)]
    for text in second:
        publisher.publish(channel, text)
    messages = wait_shown(page, 20)
    assert [m["text"] for m in messages] == first + second  # nothing lost, nothing twice
    assert all(m["via"] == transport for m in messages)


def test_a_hidden_page_lets_its_connection_go_and_catches_up_when_shown(
    start_server, page, channel
):
    server = start_server(workers=1)  # its /healthz counts every open connection

    def open_streams():
        return sum(requests.get(f"{server.url}/healthz", timeout=5).json()["connections"].values())

    page.goto(f"{server.url}/channel/?channel={channel}&transport=websocket&pause_when_hidden=1")
    wait_status(page, "live (websocket)")
    server.publish(channel, "seen while shown")
    wait_shown(page, 1)
    assert open_streams() == 1
    visibility = """hidden => {
        Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }"""
    page.evaluate(visibility, True)
    wait_status(page, "paused while hidden")
    deadline = time.monotonic() + 10
    while open_streams():
        assert time.monotonic() < deadline, "the hidden page still holds a connection"
        time.sleep(0.2)
    missed = [f"while hidden {i}" for i in range(5)]
    for text in missed:
        server.publish(channel, text)
    page.evaluate(visibility, False)
    wait_status(page, "live (websocket)")
    assert [m["text"] for m in wait_shown(page, 6)] == ["seen while shown", *missed]
