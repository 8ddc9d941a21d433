"""Channel users: the publisher and a subscriber for each of the three
transports (SSE, WebSocket, long-poll)."""

import json
import time
import uuid

import gevent
import requests
import websocket
from _common import (
    CHANNEL,
    LONGPOLL_TIMEOUT,
    PASSWORD,
    PUBLISH_RATE,
    STREAM_TIMEOUT,
    USERNAME,
    BrowserLikeUser,
    ChannelSubscriber,
    CheckFailed,
    fetch_token,
    hold_seconds,
    ms_since,
    origin_of,
    problem,
    report,
    sse_events,
    ws_close_info,
    ws_url,
)
from locust import User, between, constant, constant_pacing, task


class Publisher(BrowserLikeUser):
    """Publishes numbered JSON messages on the bench channel at a steady rate,
    with a bearer token, so that every subscriber has something to receive."""

    fixed_count = 1
    wait_time = constant_pacing(1 / PUBLISH_RATE)

    def on_start(self):
        self.token = fetch_token(self, USERNAME, PASSWORD, name="/auth/token (publisher)")
        self.new_epoch()

    def new_epoch(self):
        # After a failed publish we cannot know whether it went out: start a
        # new numbering, so that subscribers do not report a false gap.
        self.publisher, self.seq = uuid.uuid4().hex[:8], 0

    @task
    def publish(self):
        if self.token is None:
            self.token = fetch_token(self, USERNAME, PASSWORD, name="/auth/token (publisher)")
            if self.token is None:
                return
        self.seq += 1
        body = {"pub": self.publisher, "seq": self.seq, "text": f"bench message {self.seq}"}
        with self.client.post(f"/pub/{CHANNEL}", json=body, name="/pub/[channel]",
                              headers={"Authorization": f"Bearer {self.token}"},
                              catch_response=True) as response:
            if response.status_code != 201:
                response.failure(problem(response))
                self.new_epoch()
                if response.status_code == 401:
                    self.token = None  # expired or revoked: log in again


class SSESubscriber(ChannelSubscriber, User):
    """EventSource on GET /sub/<channel>: holds the stream for LOAD_HOLD_SECONDS,
    leaves, and resumes with Last-Event-ID after 1-3 s."""

    weight = 8
    wait_time = between(1, 3)
    PATH = "/sub/[channel]"

    def on_start(self):
        self._start_session()
        self.http = requests.Session()

    def on_stop(self):
        self.http.close()

    @task
    def listen(self):
        headers = {"Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        resuming = self.last_id is not None
        started, connected_at = time.perf_counter(), time.time() * 1000
        try:
            response = self.http.get(f"{self.host}/sub/{CHANNEL}", headers=headers, stream=True,
                                     timeout=(10, STREAM_TIMEOUT))
        except requests.RequestException as exc:
            report(self, "SSE", f"{self.PATH} connect", ms_since(started), exception=exc)
            return
        with response:
            if response.status_code != 200:
                report(self, "SSE", f"{self.PATH} connect", ms_since(started),
                       exception=CheckFailed(f"HTTP {response.status_code}"))
                return
            report(self, "SSE", f"{self.PATH} connect", ms_since(started))
            self._read(response, started, connected_at if resuming else None)

    def _read(self, response, started, away_until):
        deadline, first = time.monotonic() + hold_seconds(), away_until is None
        try:
            for event in sse_events(response):
                length = len(event["data"])
                if event["event"] == "message":
                    self._deliver("SSE", self.PATH, event["id"], event["data"], length,
                                  started, first, away_until)
                    first = False
                elif event["event"] == "reset":  # our resume point was trimmed
                    report(self, "SSE", f"{self.PATH} reset", 0, length,
                           CheckFailed("resume point lost: " + event["data"]))
                    self.last_id = event.get("id") or None
                elif event["event"] == "close":  # the server dropped us; resume
                    report(self, "SSE", f"{self.PATH} closed by server", 0, length,
                           CheckFailed(event["data"]))
                    return
                if time.monotonic() >= deadline:
                    return
        except (requests.RequestException, OSError, ValueError) as exc:
            report(self, "SSE", f"{self.PATH} stream", ms_since(started), exception=exc)


class WebSocketSubscriber(ChannelSubscriber, User):
    """WS /sub/<channel>/ws: waits for {"subscribed"}, then {"id","data"}
    frames; leaves after LOAD_HOLD_SECONDS and resumes with ?last_event_id=."""

    weight = 8
    wait_time = between(1, 3)
    PATH = "/sub/[channel]/ws"

    def on_start(self):
        self._start_session()

    @task
    def listen(self):
        query = f"?last_event_id={self.last_id}" if self.last_id else ""
        resuming = self.last_id is not None
        started, connected_at = time.perf_counter(), time.time() * 1000
        try:
            ws = websocket.create_connection(ws_url(self.host, f"/sub/{CHANNEL}/ws{query}"),
                                             timeout=STREAM_TIMEOUT, origin=origin_of(self.host))
        except (websocket.WebSocketException, OSError) as exc:
            report(self, "WS", f"{self.PATH} subscribed", ms_since(started), exception=exc)
            return
        try:
            hello = ws.recv()
            if "subscribed" not in json.loads(hello):
                raise CheckFailed(f"first frame is not 'subscribed': {hello[:100]}")
        except (websocket.WebSocketException, OSError, ValueError, CheckFailed) as exc:
            report(self, "WS", f"{self.PATH} subscribed", ms_since(started), exception=exc)
            ws.close(timeout=1)
            return
        report(self, "WS", f"{self.PATH} subscribed", ms_since(started), len(hello))
        try:
            self._read(ws, started, connected_at if resuming else None)
        except (ValueError, KeyError, TypeError) as exc:
            report(self, "WS", f"{self.PATH} stream", ms_since(started),
                   exception=CheckFailed(f"malformed frame: {exc!r}"))
        finally:
            ws.close(timeout=1)

    def _read(self, ws, started, away_until):
        deadline, first = time.monotonic() + hold_seconds(), away_until is None
        while time.monotonic() < deadline:
            try:
                opcode, payload = ws.recv_data()
            except (websocket.WebSocketException, OSError) as exc:
                report(self, "WS", f"{self.PATH} stream", ms_since(started), exception=exc)
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code, reason = ws_close_info(payload)
                report(self, "WS", f"{self.PATH} closed by server", 0,
                       exception=CheckFailed(f"close {code}: {reason}"))
                return
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            frame = json.loads(payload)
            if frame.get("reset"):
                report(self, "WS", f"{self.PATH} reset", 0, len(payload),
                       CheckFailed("resume point lost"))
                self.last_id = frame.get("cursor")
                continue
            self._deliver("WS", self.PATH, frame["id"], frame["data"], len(payload),
                          started, first, away_until)
            first = False


class LongPollClient(ChannelSubscriber, BrowserLikeUser):
    """GET /sub/<channel>?cursor=...: polls again as soon as an answer comes,
    as the long-poll page does. The HTTP row's time is how long the server
    held the request; the LONGPOLL row is each message's delivery delay."""

    weight = 4
    wait_time = constant(0)
    PATH = "/sub/[channel]"

    def on_start(self):
        self._start_session()

    @task
    def poll(self):
        params = {"cursor": self.last_id} if self.last_id else {}
        with self.client.get(f"/sub/{CHANNEL}", params=params, name=f"{self.PATH} long-poll",
                             timeout=LONGPOLL_TIMEOUT, catch_response=True) as response:
            try:
                body = response.json()
                events_ = body["events"]
            except (ValueError, KeyError, TypeError):
                response.failure(problem(response))
                gevent.sleep(1)
                return
            response.success()
        if body.get("reset"):
            report(self, "LONGPOLL", f"{self.PATH} reset", 0,
                   exception=CheckFailed("cursor lost"))
        for item in events_:
            self._deliver("LONGPOLL", self.PATH, item["id"], item["data"],
                          len(json.dumps(item["data"])))
        self.last_id = body.get("cursor") or self.last_id
