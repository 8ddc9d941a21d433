"""The Q&A board across 2 gevent workers."""

import json
import uuid

import pytest
import requests

from tests.clients import SSEClient


@pytest.fixture(scope="module")
def board(start_server):
    """A server with a board of its own (a fresh key prefix)."""
    return start_server(REDIS_PREFIX=f"qa{uuid.uuid4().hex[:6]}:")


class Visitor:
    """One browser tab: a stream plus POSTs carrying its X-Client-Id."""

    def __init__(self, server, client=None):
        self.server = server
        url = f"{server.url}/qa/stream" + (f"?client={client}" if client else "")
        self.stream = SSEClient(url)
        assert self.stream.wait_for(lambda items: any(i["event"] == "login" for i in items))
        self.id = json.loads(self.stream.items[0]["data"])["id"]

    def post(self, path, body, client_id=...):
        headers = {} if client_id is None else {
            "X-Client-Id": self.id if client_id is ... else client_id}
        return requests.post(f"{self.server.url}/qa/{path}", json=body, headers=headers, timeout=10)

    def events(self, kind):
        return [json.loads(i["data"]) for i in self.stream.items if i["event"] == kind]

    def wait_question(self, text):
        return self.stream.wait_for(lambda items: any(
            i["event"] == "questions" and text in json.loads(i["data"])["questions"]
            for i in items))

    def wait_answers(self, question, answer=None):
        """Until an answers event for `question` (containing `answer`, if given) arrives."""
        return self.stream.wait_for(lambda items: any(
            i["event"] == "answers" and json.loads(i["data"])["question"] == question
            and (answer is None or answer in json.loads(i["data"])["answers"]) for i in items))

    def close(self):
        self.stream.close()


def unique(text):
    return f"{text} #{uuid.uuid4().hex[:6]}"


def test_stream_starts_with_login_then_the_whole_board(board):
    visitor = Visitor(board)
    assert visitor.stream.wait_count(2)
    assert [i["event"] for i in visitor.stream.items[:2]] == ["login", "questions"]
    assert visitor.stream.retry == 2000
    visitor.close()


def test_questions_reach_streams_on_every_worker(board):
    visitors, workers = [], set()
    while len(workers) < 2:
        assert len(visitors) < 40
        visitor = Visitor(board)
        visitors.append(visitor)
        workers.add(visitor.stream.served_by)
    question = unique("Why is the sky blue?")
    response = visitors[0].post("questions", {"question": question})
    assert response.status_code == 201
    for visitor in visitors:
        assert visitor.wait_question(question), visitor.stream.served_by
        visitor.close()


def test_answers_go_only_to_followers_of_the_question(board):
    asker, follower, bystander = Visitor(board), Visitor(board), Visitor(board)
    q1, q2 = unique("What is a greenlet?"), unique("What is a stream id?")
    for q in (q1, q2):
        assert asker.post("questions", {"question": q}).status_code == 201
    assert follower.post("select", {"question": q1}).status_code == 200
    assert bystander.post("select", {"question": q2}).status_code == 200
    assert follower.wait_answers(q1)  # selecting sends the (empty) answers at once
    assert asker.post("select", {"question": q1}).status_code == 200
    answer = asker.post("answers", {"answer": "a coroutine that gevent schedules"})
    assert answer.status_code == 201
    assert follower.wait_answers(q1, "a coroutine that gevent schedules")
    assert asker.wait_answers(q1, "a coroutine that gevent schedules")
    # Events on the board are ordered: once the bystander has a later question,
    # it would already have had the answer, had it been sent to it.
    later = unique("Later question")
    asker.post("questions", {"question": later})
    assert bystander.wait_question(later)
    assert all(e["question"] == q2 for e in bystander.events("answers"))
    for visitor in (asker, follower, bystander):
        visitor.close()


def test_reconnecting_with_the_id_keeps_the_selection_and_misses_nothing(board):
    visitor, other = Visitor(board), Visitor(board)
    question = unique("Does resume work?")
    other.post("questions", {"question": question})
    visitor.post("select", {"question": question})
    assert visitor.wait_answers(question)
    visitor.close()
    # While it is away: a new question and an answer to the one it follows.
    missed_question = unique("Asked while away")
    other.post("questions", {"question": missed_question})
    other.post("select", {"question": question})
    other.post("answers", {"answer": "answered while away"})
    back = Visitor(board, client=visitor.id)
    assert back.id == visitor.id
    assert back.wait_question(missed_question)
    assert back.wait_answers(question, "answered while away")
    back.close()
    other.close()


@pytest.mark.parametrize("path, body, status, reason", [
    ("questions", {"question": ""}, 400, "required"),
    ("questions", {"question": "   "}, 400, "required"),
    ("questions", {"question": "x" * 281}, 400, "too long"),
    ("questions", {"nothing": "here"}, 400, "required"),
    ("select", {"question": "never asked, surely"}, 404, "no such question"),
    ("answers", {"answer": "an answer to nothing"}, 400, "select a question"),
    ("answers", {"answer": "y" * 1001}, 400, "too long"),
])
def test_bad_requests_are_rejected(board, path, body, status, reason):
    visitor = Visitor(board)
    response = visitor.post(path, body)
    assert response.status_code == status
    assert reason in response.json()["error"]
    visitor.close()


def test_duplicate_questions_are_409_whatever_the_case_or_spacing(board):
    visitor = Visitor(board)
    question = unique("Is this a duplicate?")
    assert visitor.post("questions", {"question": question}).status_code == 201
    again = visitor.post("questions", {"question": "  " + question.upper().replace(" ", "   ")})
    assert again.status_code == 409 and "already" in again.json()["error"]
    visitor.close()


def test_client_ids_cannot_be_missing_or_forged(board):
    visitor = Visitor(board)
    missing = visitor.post("questions", {"question": unique("q")}, client_id=None)
    assert missing.status_code == 401
    forged = visitor.post("questions", {"question": unique("q")},
                          client_id=visitor.id[:-2] + "xx")
    assert forged.status_code == 403
    bad_stream = requests.get(f"{board.url}/qa/stream", params={"client": "forged.id"},
                              headers={"Accept": "text/event-stream"}, timeout=5)
    assert bad_stream.status_code == 403
    visitor.close()


def test_questions_render_as_text_and_pings_keep_the_stream_alive(board):
    visitor = Visitor(board)
    question = unique("<script>alert(1)</script>")
    assert visitor.post("questions", {"question": question}).status_code == 201
    assert visitor.wait_question(question)  # stored and sent verbatim; the page uses textContent
    assert visitor.stream.wait_for(lambda items: any(i["event"] == "ping" for i in items),
                                   timeout=15)
    visitor.close()


def test_selecting_with_other_case_or_spacing_follows_the_same_question(board):
    asker, reader = Visitor(board), Visitor(board)
    question = unique("Where do answers live?")
    asker.post("questions", {"question": question})
    asker.post("select", {"question": question})
    asker.post("answers", {"answer": "in Redis"})
    selected = reader.post("select", {"question": "  " + question.upper() + " "})
    assert selected.status_code == 200
    assert selected.json() == {"ok": True, "question": question, "answers": ["in Redis"]}
    assert reader.wait_answers(question, "in Redis")
    asker.close()
    reader.close()
