"""The Q&A board across 2 gevent workers."""

import contextlib
import json
import time
import uuid

import pytest
import requests

from tests.clients import SSEClient

pytestmark = pytest.mark.integration


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
        headers = (
            {} if client_id is None else {"X-Client-Id": self.id if client_id is ... else client_id}
        )
        return requests.post(f"{self.server.url}/qa/{path}", json=body, headers=headers, timeout=10)

    def events(self, kind):
        return [json.loads(i["data"]) for i in self.stream.items if i["event"] == kind]

    def wait_question(self, text):
        return self.stream.wait_for(
            lambda items: any(
                i["event"] == "questions" and text in json.loads(i["data"])["questions"]
                for i in items
            )
        )

    def wait_answers(self, question, answer=None):
        """Until an answers event for `question` (containing `answer`, if given) arrives."""
        return self.stream.wait_for(
            lambda items: any(
                i["event"] == "answers"
                and json.loads(i["data"])["question"] == question
                and (answer is None or answer in json.loads(i["data"])["answers"])
                for i in items
            )
        )

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


@pytest.mark.parametrize(
    "path, body, status, reason",
    [
        ("questions", {"question": ""}, 400, "required"),
        ("questions", {"question": "   "}, 400, "required"),
        ("questions", {"question": "x" * 281}, 400, "too long"),
        ("questions", {"nothing": "here"}, 400, "required"),
        ("select", {"question": "never asked, surely"}, 404, "no such question"),
        ("answers", {"answer": "an answer to nothing"}, 400, "select a question"),
        ("answers", {"answer": "y" * 1001}, 400, "too long"),
    ],
)
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
    forged = visitor.post("questions", {"question": unique("q")}, client_id=visitor.id[:-2] + "xx")
    assert forged.status_code == 403
    bad_stream = requests.get(
        f"{board.url}/qa/stream",
        params={"client": "forged.id"},
        headers={"Accept": "text/event-stream"},
        timeout=5,
    )
    assert bad_stream.status_code == 403
    visitor.close()


@pytest.mark.slow
def test_questions_render_as_text_and_pings_keep_the_stream_alive(board):
    visitor = Visitor(board)
    question = unique("<script>alert(1)</script>")
    assert visitor.post("questions", {"question": question}).status_code == 201
    assert visitor.wait_question(question)  # stored and sent verbatim; the page uses textContent
    assert visitor.stream.wait_for(
        lambda items: any(i["event"] == "ping" for i in items), timeout=15
    )
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


# -- bounds and quotas: what one client can make the board keep --------------------------


def board_shown(visitor):
    """The question list of the visitor's latest `questions` event."""
    shown = visitor.events("questions")
    return shown[-1]["questions"] if shown else None


@contextlib.contextmanager
def own_board(start_server, **settings):
    """A one-worker server with a board of its own (its own Redis prefix),
    stopped when the test is done with it."""
    server = start_server(workers=1, REDIS_PREFIX=f"qa{uuid.uuid4().hex[:6]}:", **settings)
    try:
        yield server
    finally:
        server.stop()


def fresh_board_questions(server):
    """What a newcomer's stream shows: the board as it is in Redis."""
    newcomer = Visitor(server)
    assert newcomer.stream.wait_for(lambda items: any(i["event"] == "questions" for i in items))
    questions = board_shown(newcomer)
    newcomer.close()
    return questions


def test_a_full_board_takes_new_questions_and_the_oldest_roll_off(start_server):
    with own_board(start_server, QA_MAX_QUESTIONS=3) as server:
        asker, follower = Visitor(server), Visitor(server)
        asked = [unique(f"Question {n}") for n in range(5)]
        assert asker.post("questions", {"question": asked[0]}).status_code == 201
        assert follower.post("select", {"question": asked[0]}).status_code == 200
        assert follower.wait_answers(asked[0])
        for question in asked[1:]:
            response = asker.post("questions", {"question": question})
            assert response.status_code == 201, response.text  # never "the board is full"
        assert fresh_board_questions(server) == asked[-3:]  # the newest three, in order
        assert asker.wait_question(asked[-1])
        assert board_shown(asker) == asked[-3:]
        # The follower's question rolled off: its page is told nothing is followed,
        # and answering it is refused with the reason.
        assert follower.stream.wait_for(
            lambda items: any(
                i["event"] == "answers" and json.loads(i["data"])["question"] is None for i in items
            )
        )
        late = follower.post("answers", {"answer": "too late"})
        assert late.status_code == 409 and "no longer on the board" in late.json()["error"]
        # A question that rolled off may be asked again.
        assert asker.post("questions", {"question": asked[0]}).status_code == 201
        asker.close()
        follower.close()


@pytest.mark.slow
def test_questions_expire_and_may_then_be_asked_again(start_server):
    with own_board(start_server, QA_QUESTION_TTL_SECONDS=1) as server:
        visitor = Visitor(server)
        question = unique("Will this last?")
        assert visitor.post("questions", {"question": question}).status_code == 201
        time.sleep(1.5)  # past its time to live (a lower bound: never too short)
        assert question not in fresh_board_questions(server)
        gone = visitor.post("select", {"question": question})
        assert gone.status_code == 404
        assert visitor.post("questions", {"question": question}).status_code == 201
        visitor.close()


@pytest.mark.slow
def test_answers_are_bounded_per_question_in_count(start_server):
    with own_board(start_server, QA_MAX_ANSWERS=3) as server:
        visitor = Visitor(server)
        question = unique("How many answers?")
        visitor.post("questions", {"question": question})
        visitor.post("select", {"question": question})
        statuses = [visitor.post("answers", {"answer": f"answer {n}"}) for n in range(4)]
        assert [r.status_code for r in statuses] == [201, 201, 201, 409]
        assert "its 3 answers" in statuses[-1].json()["error"]
        visitor.close()


def test_answers_are_bounded_per_question_in_bytes(board):
    """Default QA_ANSWER_BYTES (32 KB): 1000-character answers stop at about 32."""
    visitor = Visitor(board)
    question = unique("Long answers?")
    visitor.post("questions", {"question": question})
    visitor.post("select", {"question": question})
    accepted = 0
    for _ in range(60):
        response = visitor.post("answers", {"answer": "a" * 1000})
        if response.status_code != 201:
            break
        accepted += 1
    assert response.status_code == 409 and "bytes" in response.json()["error"]
    assert 20 < accepted <= 32
    selected = visitor.post("select", {"question": question}).json()
    assert len(selected["answers"]) == accepted
    visitor.close()


def board_bytes(rdb, server):
    """What the board's server keeps in Redis: every key under its prefix,
    the hub's log of board events included."""
    prefix = server.env["REDIS_PREFIX"]
    return sum(rdb.memory_usage(key, samples=0) or 0 for key in rdb.scan_iter(prefix + "*"))


@pytest.mark.slow
def test_answers_and_selections_cannot_flood_redis(start_server, rdb):
    """The review's attack: 600 answers and 300 selections put 140 MB into
    Redis. The answers stop at their per-question bound and a selection
    publishes who follows what, not the answers."""
    with own_board(start_server) as server:
        visitor = Visitor(server)
        questions = [unique(f"Flood {n}") for n in range(3)]
        for question in questions:
            visitor.post("questions", {"question": question})
            visitor.post("select", {"question": question})
            for _ in range(200):
                visitor.post("answers", {"answer": "f" * 1000})
        for n in range(300):
            assert visitor.post("select", {"question": questions[n % 3]}).status_code == 200
        assert board_bytes(rdb, server) < 4 * 1024 * 1024
        visitor.close()


def test_posts_and_selections_have_quotas_per_address(start_server):
    with own_board(
        start_server, QA_POST_RATE_LIMIT="3 per minute", QA_SELECT_RATE_LIMIT="2 per minute"
    ) as server:
        visitor = Visitor(server)
        question = unique("Quota?")
        assert visitor.post("questions", {"question": question}).status_code == 201
        assert visitor.post("select", {"question": question}).status_code == 200
        assert visitor.post("answers", {"answer": "one"}).status_code == 201
        assert visitor.post("answers", {"answer": "two"}).status_code == 201
        over = visitor.post("questions", {"question": unique("One too many")})
        assert over.status_code == 429
        assert "too many questions and answers" in over.json()["error"]
        assert int(over.headers["Retry-After"]) >= 1
        assert visitor.post("select", {"question": question}).status_code == 200
        assert visitor.post("select", {"question": question}).status_code == 429
        # Counted per address, not per client id: a new tab is refused too.
        other = Visitor(server)
        assert other.post("answers", {"answer": "three"}).status_code == 429
        visitor.close()
        other.close()


# -- clearing the board (administrators) ----------------------------------------------------


@pytest.fixture(scope="module")
def board_users(board, base_env, redis_server):
    """Bearer tokens of an administrator and of a plain user of the board's
    server (users live under its key prefix), and the admin's password."""
    import redis as redis_py

    from core.config import load_settings
    from core.tokens import issue
    from core.users import UserStore

    settings = load_settings(board.env)
    store = UserStore(
        redis_py.Redis.from_url(redis_server.url, decode_responses=True), settings["REDIS_PREFIX"]
    )
    admin = store.get("qa-admin") or store.create("qa-admin", "qa-admin-password", admin=True)
    plain = store.get("qa-plain") or store.create("qa-plain", "qa-plain-password")
    return {
        "admin": issue(admin, settings, ttl=3600)[0],
        "plain": issue(plain, settings, ttl=3600)[0],
        "password": "qa-admin-password",
    }


def clear(server, **headers):
    return requests.delete(f"{server.url}/qa/questions", headers=headers, timeout=10)


def test_administrators_clear_the_board_and_every_page_sees_it(board, board_users):
    asker, follower = Visitor(board), Visitor(board)
    question = unique("Clear me")
    asker.post("questions", {"question": question})
    follower.post("select", {"question": question})
    follower.post("answers", {"answer": "soon gone"})
    assert follower.wait_answers(question, "soon gone")
    assert asker.wait_question(question)

    assert clear(board).status_code == 401
    refused = clear(board, Authorization=f"Bearer {board_users['plain']}")
    assert refused.status_code == 403 and "administrators" in refused.json()["error"]
    cleared = clear(board, Authorization=f"Bearer {board_users['admin']}")
    assert cleared.status_code == 200 and cleared.json()["removed"] >= 1

    for visitor in (asker, follower):  # live pages show an empty board
        assert visitor.stream.wait_for(
            lambda items: any(
                i["event"] == "questions" and json.loads(i["data"])["questions"] == []
                for i in items
            )
        )
    assert follower.stream.wait_for(
        lambda items: any(
            i["event"] == "answers" and json.loads(i["data"]) == {"question": None, "answers": []}
            for i in items
        )
    )
    assert fresh_board_questions(board) == []
    assert asker.post("questions", {"question": question}).status_code == 201  # asked afresh
    asker.close()
    follower.close()


def test_clearing_with_a_session_needs_the_csrf_token(board, board_users):
    session = requests.Session()
    login = session.post(
        f"{board.url}/auth/login",
        timeout=30,
        json={"username": "qa-admin", "password": board_users["password"]},
    )
    assert login.status_code == 200, login.text
    no_token = session.delete(f"{board.url}/qa/questions", timeout=10)
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["error"]
    foreign = session.delete(
        f"{board.url}/qa/questions", timeout=10, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    with_token = session.delete(
        f"{board.url}/qa/questions", timeout=10, headers={"X-CSRF-Token": login.json()["csrfToken"]}
    )
    assert with_token.status_code == 200


@pytest.mark.browser
def test_an_administrator_clears_the_board_from_the_page(board, board_users, browser):
    """In Chromium: the button shows for an administrator only, and clicking
    it empties every open page's board."""
    question = unique("Asked before the clear")
    asker = Visitor(board)
    assert asker.post("questions", {"question": question}).status_code == 201
    visitor, admin = browser.new_page(), browser.new_page()
    try:
        visitor.goto(board.url + "/qa/")
        visitor.get_by_role("button", name=question).wait_for(timeout=15_000)
        assert visitor.locator("#clear-board").is_hidden()  # not for visitors
        admin.goto(board.url + "/auth/")  # log in (a session cookie), then the board
        login = admin.evaluate("""async () => (await fetch('/auth/login', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: JSON.stringify(
            {username: 'qa-admin', password: 'qa-admin-password'})})).status""")
        assert login == 200
        admin.goto(board.url + "/qa/")
        admin.on("dialog", lambda dialog: dialog.accept())
        admin.locator("#clear-board").click(timeout=15_000)
        visitor.get_by_role("button", name=question).wait_for(state="detached", timeout=15_000)
        assert admin.locator("#ask-error").inner_text() == ""
    finally:
        visitor.close()
        admin.close()
    asker.close()
