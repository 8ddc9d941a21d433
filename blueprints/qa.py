"""The Q&A board over Server-Sent Events (chapter 6), with its state in Redis.

    GET  /qa/                  the page
    GET  /qa/stream            SSE: login {"id"}, questions {"questions"}, answers {"question","answers"}, ping
    POST /qa/questions         {"question"} -> 201; duplicate 409; empty/oversize 400
    POST /qa/select            {"question"} -> the stream now follows it; unknown 404
    POST /qa/answers           {"answer"} -> appended to the selected question

Requests name their client with `X-Client-Id`, the signed id the stream gave
in its `login` event. Every change is one event on the internal hub channel
`qa:events`, carrying the whole new list and its length, published by the
same Lua script that changes the list (Hub.script), so events arrive in the
order of the changes. A stream forwards questions to everyone, and answers
only when they are for the question its client follows; an event no newer
than the state a stream read when it started is skipped. A stream that
reconnects with `?client=` keeps its id and selection, and gets the full
current state again.
"""

import hashlib
import json
import secrets
import time

from flask import Blueprint, current_app, request
from itsdangerous import BadSignature, URLSafeSerializer

from core.errors import abort_json
from core.transports import sse
from core.web import get_hub, get_redis, required_fields

bp = Blueprint("qa", __name__, url_prefix="/qa")

CHANNEL = "qa:events"
MAX_QUESTION, MAX_ANSWER = 280, 1000
MAX_QUESTIONS, MAX_ANSWERS = 200, 200
PING_SECONDS = 10
SELECTION_TTL = 24 * 3600

# KEYS: list, hash normalised text -> text, hub stream; ARGV: text, normalised
# ('' = no duplicate check), limit, hub channel, event type, question.
# Appends and publishes the whole new list in one step.
# Returns {0, length}, {1} duplicate, {2} full.
_APPEND_LUA = """
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return {1} end
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {2} end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[2], ARGV[1]) end
redis.call('RPUSH', KEYS[1], ARGV[1])
local all = redis.call('LRANGE', KEYS[1], 0, -1)
local event = {type = ARGV[5], count = #all}
if ARGV[5] == 'questions' then event.questions = all
else event.question = ARGV[6]; event.answers = all end
hub_publish(KEYS[3], ARGV[4], 'j', cjson.encode(event))
return {0, #all}
"""

def _key(*parts, prefix=None):
    prefix = current_app.config["REDIS_PREFIX"] if prefix is None else prefix
    return prefix + "qa:" + ":".join(parts)


def _answers_key(question, prefix=None):
    return _key("answers", hashlib.sha256(question.encode()).hexdigest(), prefix=prefix)


def _normalise(text):
    return " ".join(text.split()).casefold()


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


def _append(list_key, index_key, text, normalised, limit, event, question=""):
    hub = get_hub()
    return hub.script(_APPEND_LUA)(
        keys=[list_key, index_key, hub.stream_key(CHANNEL)],
        args=[text, normalised, limit, CHANNEL, event, question])


@bp.get("/")
def page():
    return current_app.send_static_file("qa.html")


@bp.post("/questions")
def ask():
    _client_id()
    (question,) = required_fields("question", max_length=MAX_QUESTION)
    question = " ".join(question.split())
    result = _append(_key("questions"), _key("question-index"), question, _normalise(question),
                     MAX_QUESTIONS, "questions")
    if result[0] == 1:
        abort_json(409, "that question was already asked")
    if result[0] == 2:
        abort_json(409, f"the board is full ({MAX_QUESTIONS} questions)")
    return {"ok": True, "question": question, "count": result[1]}, 201


@bp.post("/select")
def select():
    client = _client_id()
    (question,) = required_fields("question", max_length=MAX_QUESTION)
    r = get_redis()
    # The question as it was asked, whatever the case and spacing of this request.
    question = r.hget(_key("question-index"), _normalise(question))
    if question is None:
        abort_json(404, "no such question")
    r.set(_key("selected", client), question, ex=SELECTION_TTL)
    answers = r.lrange(_answers_key(question), 0, -1)
    get_hub().publish_json(CHANNEL, {"type": "select", "client": client, "question": question,
                                     "answers": answers, "count": len(answers)})
    return {"ok": True, "question": question, "answers": answers}


@bp.post("/answers")
def answer():
    client = _client_id()
    (text,) = required_fields("answer", max_length=MAX_ANSWER)
    question = get_redis().get(_key("selected", client))
    if question is None:
        abort_json(400, "select a question before answering")
    answers_key = _answers_key(question)
    result = _append(answers_key, answers_key, text.strip(), "", MAX_ANSWERS, "answers", question)
    if result[0] == 2:
        abort_json(409, f"that question has its {MAX_ANSWERS} answers")
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
    state = _BoardState(get_redis(), current_app.config["REDIS_PREFIX"], client)
    signed_login = sse.event(json.dumps({"id": signed}), event="login")
    retry_ms = current_app.config["SSE_RETRY_MS"]
    # Subscribe first, then read the state: nothing published in between is
    # missed. A reset (the log moved on without us) shows the whole board afresh.
    return sse.response(sse.stream(
        get_hub().subscribe(CHANNEL), request.environ,
        first=lambda: sse.PADDING + sse.retry(retry_ms) + signed_login + state.reload(),
        heartbeat=PING_SECONDS, encode=state.frame, on_reset=lambda _reset: state.reload(),
        keepalive=_ping))


class _BoardState:
    """What one client is shown: read from Redis when its stream (re)starts
    or missed messages, then kept current from the hub's events. Used by the
    stream after the view has returned, so it carries its key prefix (no app
    context)."""

    def __init__(self, redis_client, prefix, client):
        self.redis, self.prefix, self.client = redis_client, prefix, client
        self.selected, self.shown = None, {"questions": 0, "answers": 0}

    def reload(self):
        """The board as it is now, as the frames that show it."""
        questions = self.redis.lrange(_key("questions", prefix=self.prefix), 0, -1)
        self.selected = self.redis.get(_key("selected", self.client, prefix=self.prefix))
        answers = (self.redis.lrange(_answers_key(self.selected, self.prefix), 0, -1)
                   if self.selected else [])
        self.shown = {"questions": len(questions), "answers": len(answers)}
        return _questions_frame(questions) + (
            _answers_frame(self.selected, answers) if self.selected else b"")

    def frame(self, msg):
        """The frame an event means for this client, or None: questions go to
        everyone, answers only to the followers of their question; an event no
        newer than what the client was shown is skipped."""
        event, shown = msg.value, self.shown
        kind = event["type"]
        if kind == "questions" and event["count"] > shown["questions"]:
            shown["questions"] = event["count"]
            return msg.encoded(_questions_event)
        if kind == "select" and event["client"] == self.client:
            self.selected, shown["answers"] = event["question"], event["count"]
            return _answers_frame(self.selected, event["answers"])
        if kind == "answers" and event["question"] == self.selected and (
                event["count"] > shown["answers"]):
            shown["answers"] = event["count"]
            return msg.encoded(_answers_event)
        return None


def _questions_frame(questions):
    return sse.event(json.dumps({"questions": questions}), event="questions")


def _answers_frame(question, answers):
    return sse.event(json.dumps({"question": question, "answers": answers}), event="answers")


def _questions_event(msg):  # shared by every stream the event goes to
    return _questions_frame(msg.value["questions"])


def _answers_event(msg):
    return _answers_frame(msg.value["question"], msg.value["answers"])


def _ping():
    return sse.event(str(int(time.time() * 1000)), event="ping")
