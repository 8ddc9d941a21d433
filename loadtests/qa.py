"""The Q&A demo's user: a participant with one SSE stream who asks, selects
and answers questions, timing each change until its own stream shows it."""

import json
import random
import time
import uuid

import gevent
import requests
from _common import (
    ROUND_TRIP_TIMEOUT,
    STREAM_TIMEOUT,
    BrowserLikeUser,
    CheckFailed,
    ms_since,
    problem,
    report,
)
from gevent.event import Event
from locust import between, task

from realtime_client import parse_sse


class QAParticipant(BrowserLikeUser):
    """The Q&A page: one SSE stream (GET /qa/stream) and POSTs with the
    stream's X-Client-Id. Each round asks a question (the first round, then
    now and then), selects a question and answers it. Each change is timed
    until the participant's own stream shows it (`... -> stream`)."""

    weight = 3
    wait_time = between(2, 5)
    PATH = "/qa/stream"

    def on_start(self):
        self.http = requests.Session()
        self.client_id, self.questions, self.pending = None, [], {}
        self.asked, self.board_full, self.full_questions = 0, False, set()
        self.logged_in = Event()
        self.reader = gevent.spawn(self._stream_forever)
        self.logged_in.wait(15)

    def on_stop(self):
        self.reader.kill(block=False)
        self.http.close()

    # The stream, on its own greenlet: reconnects with ?client= like the page.
    def _stream_forever(self):
        while True:
            self._stream_once()
            gevent.sleep(1)

    def _stream_once(self):
        started = time.perf_counter()
        params = {"client": self.client_id} if self.client_id else {}
        try:
            with self.http.get(
                f"{self.host}{self.PATH}",
                params=params,
                stream=True,
                timeout=(10, STREAM_TIMEOUT),
                headers={"Accept": "text/event-stream"},
            ) as response:
                if response.status_code != 200:
                    raise CheckFailed(f"HTTP {response.status_code}")
                for event in parse_sse(response.iter_content(chunk_size=None)):
                    self._on_event(event, started)
        except (
            requests.RequestException,
            OSError,
            CheckFailed,
            ValueError,
            KeyError,
            TypeError,
        ) as exc:
            report(self, "SSE", f"{self.PATH} stream", ms_since(started), exception=exc)

    def _on_event(self, event, started):
        kind, data = event.event, event.data
        if kind == "login":
            self.client_id = json.loads(data)["id"]
            report(self, "SSE", f"{self.PATH} login (first event)", ms_since(started), len(data))
            self.logged_in.set()
        elif kind == "questions":
            self.questions = json.loads(data)["questions"]
            for text in self.questions:
                self._arrived("question", text)
        elif kind == "answers":
            body = json.loads(data)
            self._arrived("select", body["question"])
            for text in body["answers"]:
                self._arrived("answer", text)
        elif kind == "close":
            report(self, "SSE", f"{self.PATH} closed by server", 0, len(data), CheckFailed(data))

    def _arrived(self, kind, key):
        waiting = self.pending.get((kind, key))
        if waiting is not None and waiting["at"] is None:
            waiting["at"] = time.perf_counter()
            waiting["event"].set()

    def _change(self, path, body, kind, key, label):
        """POST a change and time until this participant's stream shows it."""
        waiting = self.pending[(kind, key)] = {
            "event": Event(),
            "at": None,
            "started": time.perf_counter(),
        }
        try:
            with self.client.post(
                path, json=body, headers={"X-Client-Id": self.client_id}, catch_response=True
            ) as response:
                if response.status_code == 409:  # board or question full: expected in long runs
                    response.request_meta["name"] += " [409 full]"
                    response.success()
                    return 409
                if response.status_code not in (200, 201):
                    response.failure(problem(response))
                    return response.status_code
            if waiting["event"].wait(ROUND_TRIP_TIMEOUT):
                report(self, "QA", label, (waiting["at"] - waiting["started"]) * 1000)
            else:
                report(
                    self,
                    "QA",
                    label,
                    ROUND_TRIP_TIMEOUT * 1000,
                    exception=CheckFailed(f"not on the stream after {ROUND_TRIP_TIMEOUT} s"),
                )
            return response.status_code
        finally:
            self.pending.pop((kind, key), None)

    @task
    def take_part(self):
        if self.client_id is None:
            return  # no login event yet: the stream's failure is already reported
        if not self.board_full and (self.asked == 0 or random.random() < 0.25):
            users = random.randint(2, 10**6)
            text = f"Load test {uuid.uuid4().hex[:10]}: what happens at {users} users?"
            status = self._change(
                "/qa/questions", {"question": text}, "question", text, "question -> stream"
            )
            self.asked += 1
            self.board_full = status == 409
        choices = [q for q in self.questions if q not in self.full_questions]
        if not choices:
            return
        question = random.choice(choices)
        if (
            self._change(
                "/qa/select", {"question": question}, "select", question, "select -> answers"
            )
            != 200
        ):
            return
        text = f"answer {uuid.uuid4().hex[:10]} from a load-test participant"
        if self._change("/qa/answers", {"answer": text}, "answer", text, "answer -> stream") == 409:
            self.full_questions.add(question)
