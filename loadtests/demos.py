"""Demo users: the shared drawing, the mouse-tracking page and its
administrator dashboard, and the ticker. The Q&A demo is in qa.py."""

import json
import random
import time

import gevent
import requests
import websocket
from _common import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    STREAM_TIMEOUT,
    SYMBOLS,
    BrowserLikeUser,
    CheckFailed,
    close_ws,
    fetch_token,
    hold_seconds,
    ms_since,
    origin_of,
    problem,
    report,
    ws_close_info,
    ws_url,
)
from locust import User, between, task

from realtime_client import parse_sse

# When each point was sent, shared by this process's drawers: a drawer that
# receives another's move knows how long the relay took (client to client).
_draw_sent = {}


class Drawer(User):
    """WS /draw/ws: draws strokes of 10-30 points, one every 50 ms like the
    page, and measures how long other drawers' points take to reach it."""

    weight = 3
    wait_time = between(0.5, 2)
    PATH = "/draw/ws"

    def on_start(self):
        self.ws, self.reader = None, None

    def on_stop(self):
        self._disconnect()

    def _connect(self):
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(
                ws_url(self.host, self.PATH), timeout=STREAM_TIMEOUT, origin=origin_of(self.host)
            )
            welcome = self.ws.recv()
            if json.loads(welcome).get("type") != "welcome":
                raise CheckFailed(f"first frame is not 'welcome': {welcome[:100]}")
        except (websocket.WebSocketException, OSError, ValueError, CheckFailed) as exc:
            report(self, "WS", f"{self.PATH} welcome", ms_since(started), exception=exc)
            self._disconnect()
            return False
        report(self, "WS", f"{self.PATH} welcome", ms_since(started), len(welcome))
        self.reader = gevent.spawn(self._read, self.ws)
        return True

    def _disconnect(self):
        if self.reader is not None:
            self.reader.kill(block=False)
        if self.ws is not None:
            close_ws(self.ws)
        self.ws = self.reader = None

    def _read(self, ws):
        while True:
            try:
                opcode, payload = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue  # nobody else is drawing
            except (websocket.WebSocketException, OSError) as exc:
                report(self, "WS", f"{self.PATH} stream", 0, exception=exc)
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code, reason = ws_close_info(payload)
                report(
                    self,
                    "WS",
                    f"{self.PATH} closed by server",
                    0,
                    exception=CheckFailed(f"close {code}: {reason}"),
                )
                return
            try:
                frame = json.loads(payload)
                sent = (
                    _draw_sent.get((frame["x"], frame["y"]))
                    if (frame.get("type") == "moving")
                    else None
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                report(
                    self,
                    "WS",
                    f"{self.PATH} stream",
                    0,
                    exception=CheckFailed(f"malformed frame: {exc!r}"),
                )
                return
            if sent is not None:
                report(self, "WS", f"{self.PATH} relay", ms_since(sent), len(payload))

    @task
    def stroke(self):
        if self.reader is None or self.reader.dead:  # first stroke, or the socket broke
            self._disconnect()
            if not self._connect():
                return
        x, y = random.random(), random.random()
        points = random.randint(10, 30)
        for i in range(points):
            x = min(1.0, max(0.0, x + random.uniform(-0.02, 0.02)))
            y = min(1.0, max(0.0, y + random.uniform(-0.02, 0.02)))
            point = (round(x, 5), round(y, 5))
            _draw_sent[point] = time.perf_counter()
            try:
                self.ws.send(json.dumps({"x": point[0], "y": point[1], "drawing": i < points - 1}))
            except (websocket.WebSocketException, OSError) as exc:
                report(self, "WS", f"{self.PATH} send", 0, exception=exc)
                self._disconnect()
                return
            gevent.sleep(0.05)
        if len(_draw_sent) > 20_000:
            cutoff = time.perf_counter() - 30
            for key in [k for k, t in _draw_sent.items() if t < cutoff]:
                _draw_sent.pop(key, None)


class MouseVisitor(User):
    """WS /track/ws: a visitor who stays 5-15 s moving the mouse (20
    positions a second), leaves, and comes back after 1-3 s."""

    weight = 4
    wait_time = between(1, 3)
    PATH = "/track/ws"

    @task
    def visit(self):
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                ws_url(self.host, self.PATH), timeout=STREAM_TIMEOUT, origin=origin_of(self.host)
            )
        except (websocket.WebSocketException, OSError) as exc:
            report(self, "WS", f"{self.PATH} welcome", ms_since(started), exception=exc)
            return
        try:
            welcome = ws.recv()
            if json.loads(welcome).get("type") != "welcome":
                raise CheckFailed(f"first frame is not 'welcome': {welcome[:100]}")
            report(self, "WS", f"{self.PATH} welcome", ms_since(started), len(welcome))
            x, y = random.random(), random.random()
            leave_at = time.monotonic() + random.uniform(5, 15)
            while time.monotonic() < leave_at:
                x = min(1.0, max(0.0, x + random.uniform(-0.01, 0.01)))
                y = min(1.0, max(0.0, y + random.uniform(-0.01, 0.01)))
                ws.send(json.dumps({"x": round(x, 4), "y": round(y, 4)}))
                gevent.sleep(0.05)
        except (websocket.WebSocketException, OSError, ValueError, CheckFailed) as exc:
            report(self, "WS", f"{self.PATH} visit", ms_since(started), exception=exc)
        finally:
            close_ws(ws)


class TrackDashboard(BrowserLikeUser):
    """An administrator watching /admin/track: GET /admin/track/stream (SSE)
    with a bearer token. `batch` events carry the server time `at` when the
    worker sent them: the delay from there to this client is reported."""

    fixed_count = 1
    abstract = not ADMIN_PASSWORD  # no administrator password given: no dashboard
    PATH = "/admin/track/stream"

    def on_start(self):
        self.token = fetch_token(
            self, ADMIN_USERNAME, ADMIN_PASSWORD or "", name="/auth/token (dashboard)"
        )
        self.http = requests.Session()

    def on_stop(self):
        self.http.close()

    def wait_time(self):
        return 1 if self.token else 10

    @task
    def watch(self):
        if self.token is None:
            self.token = fetch_token(
                self, ADMIN_USERNAME, ADMIN_PASSWORD or "", name="/auth/token (dashboard)"
            )
            return
        started = time.perf_counter()
        try:
            response = self.http.get(
                f"{self.host}{self.PATH}",
                stream=True,
                timeout=(10, STREAM_TIMEOUT),
                headers={"Accept": "text/event-stream", "Authorization": f"Bearer {self.token}"},
            )
        except requests.RequestException as exc:
            report(self, "SSE", f"{self.PATH} snapshot", ms_since(started), exception=exc)
            return
        with response:
            if response.status_code != 200:
                report(
                    self,
                    "SSE",
                    f"{self.PATH} snapshot",
                    ms_since(started),
                    exception=CheckFailed(f"HTTP {response.status_code}"),
                )
                self.token = None if response.status_code == 401 else self.token
                return
            deadline = time.monotonic() + hold_seconds()
            try:
                for event in parse_sse(response.iter_content(chunk_size=None)):
                    kind, length = event.event, len(event.data)
                    if kind == "snapshot":
                        report(self, "SSE", f"{self.PATH} snapshot", ms_since(started), length)
                    elif kind == "batch":
                        at = json.loads(event.data)["at"]
                        report(
                            self,
                            "SSE",
                            f"{self.PATH} batch",
                            max(0.0, time.time() * 1000 - at),
                            length,
                        )
                    elif kind == "close":
                        report(
                            self,
                            "SSE",
                            f"{self.PATH} closed by server",
                            0,
                            length,
                            CheckFailed(event.data),
                        )
                        return
                    if time.monotonic() >= deadline:
                        return
            except (requests.RequestException, OSError) as exc:
                report(self, "SSE", f"{self.PATH} stream", ms_since(started), exception=exc)


class TickerPoller(BrowserLikeUser):
    """The ticker page: GET /ticker/quote, then wait exactly the `callIn` the
    server asked for (5 s normally, longer under load)."""

    weight = 4

    def on_start(self):
        self.symbol, self.call_in = random.choice(SYMBOLS), random.uniform(0, 2)
        gevent.sleep(self.call_in)  # pages do not all open in the same millisecond

    def wait_time(self):
        return self.call_in

    @task
    def quote(self):
        with self.client.get(
            "/ticker/quote",
            params={"symbol": self.symbol},
            name="/ticker/quote",
            catch_response=True,
        ) as response:
            try:
                body = response.json()
                call_in, price = body["callIn"], body["quote"]["price"]
            except (ValueError, KeyError, TypeError):
                response.failure(problem(response))
                self.call_in = 10
                return
            if response.status_code != 200 or not isinstance(call_in, int) or price <= 0:
                response.failure(problem(response))
                self.call_in = 10
                return
            self.call_in = call_in / 1000
