"""The Q&A board over Server-Sent Events (chapter 6), with its state in Redis.

    GET    /qa/               the page
    GET    /qa/stream         SSE: login {"id"}, questions {"questions"},
                              answers {"question","answers"}, ping
    POST   /qa/questions      {"question"} -> 201; duplicate 409; empty/oversize 400
    DELETE /qa/questions      administrators: clear the board
    POST   /qa/select         {"question"} -> the stream now follows it; unknown 404
    POST   /qa/answers        {"answer"} -> appended to the selected question

Requests name their client with `X-Client-Id`, the signed id the stream gave
in its `login` event. Every change is one event on the internal hub channel
`qa:events`, carrying the whole new list and the board's version (a counter
every change increments), published by the same Lua script that makes the
change (lua/qa_*.lua), so events arrive in the order of the changes. A stream
forwards questions to everyone, and answers only when they are for the
question its client follows; an event no newer than the state a stream read
when it started is skipped. A stream that reconnects with `?client=` keeps
its id and selection, and gets the full current state again.

What one client can make the board keep is bounded, so the board cannot be
filled for good nor Redis flooded (the hub keeps the last STREAM_MAXLEN
events, each at most one list):
- questions expire QA_QUESTION_TTL_SECONDS after they were asked, and past
  QA_MAX_QUESTIONS the oldest rolls off (with its answers): a new question
  always gets in; administrators can clear the board;
- a question takes at most QA_MAX_ANSWERS answers and QA_ANSWER_BYTES bytes
  of them (409 beyond);
- selecting publishes only who follows what; the follower's stream reads the
  answers itself;
- questions and answers share the quota QA_POST_RATE_LIMIT, selections have
  QA_SELECT_RATE_LIMIT (per address and per account; 429 beyond).

Redis keys (REDIS_PREFIX + "qa:"): `asked` (sorted set: normalised question
-> when asked, ms), `question-index` (hash: normalised -> as asked),
`answers` (hash: normalised -> JSON list), `version`, `selected:<client>`.
"""

import json
import secrets
import time

from flask import Blueprint, current_app, request
from itsdangerous import BadSignature, URLSafeSerializer

from core import quotas
from core.errors import abort_json
from core.security import admin_required, current_user
from core.transports import sse
from core.web import get_hub, get_keys, get_redis, required_fields

bp = Blueprint("qa", __name__, url_prefix="/qa")

CHANNEL = "qa:events"
MAX_QUESTION, MAX_ANSWER = 280, 1000
PING_SECONDS = 10
SELECTION_TTL = 24 * 3600


def _normalise(text):
    return " ".join(text.split()).casefold()


def _now_ms():
    return int(time.time() * 1000)


def _cutoff_ms(ttl_seconds):
    """Questions asked at or before this moment have expired."""
    return _now_ms() - ttl_seconds * 1000


def _signer():
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="qa-client")


def _client_id():
    signed = request.headers.get("X-Client-Id")
    if not signed:
        abort_json(401, "X-Client-Id is required: the id from the stream's login event")
    try:
        return _signer().loads(signed)
    except BadSignature:
        abort_json(403, "X-Client-Id is not one this server issued")


def _spend(setting, what):
    """One use of a Q&A quota, counted per address and, for a logged-in
    user, per account (current_user() makes the account known to quotas)."""
    current_user()
    quotas.spend(setting, what)


def _change(script, args):
    """Run a board script: the board's keys and the stream of CHANNEL, with `args`
    and the channel's notification channel last."""
    hub = get_hub()
    return hub.scripts[script](
        keys=[*hub.keys.qa_board(), hub.stream_key(CHANNEL)],
        args=[*args, hub.notification_channel(CHANNEL)],
    )


@bp.get("/")
def page():
    return current_app.send_static_file("qa.html")


@bp.post("/questions")
def ask():
    _client_id()
    _spend("QA_POST_RATE_LIMIT", "questions and answers")
    (question,) = required_fields("question", max_length=MAX_QUESTION)
    question = " ".join(question.split())
    config = current_app.config
    ttl = config["QA_QUESTION_TTL_SECONDS"]
    result = _change(
        "qa_ask",
        [
            question,
            _normalise(question),
            _now_ms(),
            _cutoff_ms(ttl),
            config["QA_MAX_QUESTIONS"],
            ttl * 1000,
        ],
    )
    if result[0] == 1:
        abort_json(409, "that question was already asked")
    return {"ok": True, "question": question, "count": result[1]}, 201


@bp.delete("/questions")
@admin_required
def clear():
    """Administrators empty the board (CSRF-checked like every state change
    riding on a session: core.security.csrf_protect). Every stream shows an
    empty board."""
    removed = _change("qa_clear", [])
    return {"ok": True, "removed": removed}


@bp.post("/select")
def select():
    client = _client_id()
    _spend("QA_SELECT_RATE_LIMIT", "question selections")
    (question,) = required_fields("question", max_length=MAX_QUESTION)
    redis_client, normalised = get_redis(), _normalise(question)
    pipe = redis_client.pipeline(transaction=True)
    pipe.zscore(get_keys().qa("asked"), normalised)
    pipe.hget(get_keys().qa("question-index"), normalised)  # the question as it was asked
    pipe.hget(get_keys().qa("answers"), normalised)
    asked, question, answers = pipe.execute()
    if asked is None or asked <= _cutoff_ms(current_app.config["QA_QUESTION_TTL_SECONDS"]):
        abort_json(404, "no such question")
    redis_client.set(get_keys().qa("selected", client), question, ex=SELECTION_TTL)
    # Who follows what, not the answers: the follower's stream reads them.
    get_hub().publish_json(CHANNEL, {"type": "select", "client": client, "question": question})
    return {"ok": True, "question": question, "answers": json.loads(answers or "[]")}


@bp.post("/answers")
def answer():
    client = _client_id()
    _spend("QA_POST_RATE_LIMIT", "questions and answers")
    (text,) = required_fields("answer", max_length=MAX_ANSWER)
    question = get_redis().get(get_keys().qa("selected", client))
    if question is None:
        abort_json(400, "select a question before answering")
    config = current_app.config
    result = _change(
        "qa_answer",
        [
            text.strip(),
            _normalise(question),
            _cutoff_ms(config["QA_QUESTION_TTL_SECONDS"]),
            config["QA_MAX_ANSWERS"],
            config["QA_ANSWER_BYTES"],
        ],
    )
    if result[0] == 2:
        abort_json(409, f"that question has its {config['QA_MAX_ANSWERS']} answers")
    if result[0] == 3:
        abort_json(409, "that question is no longer on the board: select another")
    if result[0] == 4:
        abort_json(
            409,
            f"that question's answers are full (at most {config['QA_ANSWER_BYTES']} bytes of them)",
        )
    return {"ok": True, "question": question, "count": result[1]}, 201


@bp.get("/stream")
def stream():
    client, signed = None, request.args.get("client")
    if signed:
        try:
            client = _signer().loads(signed)
        except BadSignature:
            abort_json(403, "client is not an id this server issued")
    if client is None:
        client = secrets.token_hex(16)
        signed = _signer().dumps(client)
    state = _BoardState(
        get_redis(), get_keys(), client, current_app.config["QA_QUESTION_TTL_SECONDS"]
    )
    signed_login = sse.event(json.dumps({"id": signed}), event="login")
    retry_ms = current_app.config["SSE_RETRY_MS"]
    # Subscribe first, then read the state: nothing published in between is
    # missed. A reset (the log moved on without us) shows the whole board afresh.
    return sse.response(
        sse.stream(
            get_hub().subscribe(CHANNEL),
            request.environ,
            first=lambda: sse.PADDING + sse.retry(retry_ms) + signed_login + state.reload(),
            heartbeat=PING_SECONDS,
            encode=state.frame,
            on_reset=lambda _reset: state.reload(),
            keepalive=_ping,
        )
    )


class _BoardState:
    """What one client is shown: read from Redis when its stream (re)starts,
    missed messages, or its client selects a question, then kept current from
    the hub's events. Used by the stream after the view has returned, so it
    carries its key names and settings (no app context)."""

    def __init__(self, redis_client, keys, client, ttl_seconds):
        self.redis_client, self.keys, self.client = redis_client, keys, client
        self.ttl_seconds = ttl_seconds
        self.selected = None
        # the board's version each part of what the client sees was read at
        self.shown = {"questions": 0, "answers": 0}

    def _read(self, question, with_questions=True):
        """(version, questions as asked, answers of `question`) in one step;
        the questions are left out (None) when not wanted."""
        asked, index, answers, version = self.keys.qa_board()
        pipe = self.redis_client.pipeline(transaction=True)
        pipe.get(version)
        pipe.hget(answers, _normalise(question) if question else "")
        if with_questions:
            pipe.zrangebyscore(asked, f"({_cutoff_ms(self.ttl_seconds)}", "+inf")
            pipe.hgetall(index)
        version, answers, *board = pipe.execute()
        questions = [board[1][n] for n in board[0] if n in board[1]] if board else None
        return int(version or 0), questions, json.loads(answers or "[]")

    def reload(self):
        """The board as it is now, as the frames that show it."""
        selected = self.redis_client.get(self.keys.qa("selected", self.client))
        version, questions, answers = self._read(selected)
        self.shown = {"questions": version, "answers": version}
        frames = _questions_frame(questions)
        if selected and selected in questions:
            self.selected = selected
            return frames + _answers_frame(selected, answers)
        if selected or self.selected:  # what it followed is gone (expired, cleared)
            self.selected = None
            return frames + _unselected_frame()
        return frames

    def frame(self, msg):
        """The frame an event means for this client, or None: questions go to
        everyone, answers only to the followers of their question; an event no
        newer than what the client was shown is skipped."""
        event = msg.value
        kind = event["type"]
        if kind == "select":
            return self._followed(event["question"]) if event["client"] == self.client else None
        version = event.get("version", 0)
        if kind == "questions" and version > self.shown["questions"]:
            self.shown["questions"] = version
            frame = msg.encoded(_questions_event)  # shared by every stream of the worker
            if self.selected is not None and self.selected not in event["questions"]:
                self.selected = None  # rolled off or expired
                return frame + _unselected_frame()
            return frame
        if (
            kind == "answers"
            and event["question"] == self.selected
            and (version > self.shown["answers"])
        ):
            self.shown["answers"] = version
            return msg.encoded(_answers_event)
        if kind == "clear" and version > self.shown["questions"]:
            self.shown = {"questions": version, "answers": version}
            frame = _EMPTY_BOARD
            if self.selected is not None:
                self.selected = None
                frame += _unselected_frame()
            return frame
        return None

    def _followed(self, question):
        """The answers of the question this client now follows."""
        version, _questions, answers = self._read(question, with_questions=False)
        self.selected, self.shown["answers"] = question, version
        return _answers_frame(question, answers)


def _questions_frame(questions):
    return sse.event(json.dumps({"questions": questions}), event="questions")


def _answers_frame(question, answers):
    return sse.event(json.dumps({"question": question, "answers": answers}), event="answers")


def _unselected_frame():
    """The question this client followed is gone: nothing is selected."""
    return _answers_frame(None, [])


_EMPTY_BOARD = _questions_frame([])


def _questions_event(msg):  # shared by every stream the event goes to
    return _questions_frame(msg.value["questions"])


def _answers_event(msg):
    return _answers_frame(msg.value["question"], msg.value["answers"])


def _ping():
    return sse.event(str(int(time.time() * 1000)), event="ping")
