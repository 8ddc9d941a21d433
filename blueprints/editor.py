"""The collaborative code editor: operational transformation on Redis (DESIGN §6).

    GET /editor/<doc>            the page
    GET /editor/<doc>/text       {"v", "text"}
    WS  /editor/<doc>/ws[?v=N]   the protocol below

Server -> client: `snapshot {v, text, reset}` (first connect, or a version too
old to catch up from), or the ops since `?v=` as `op` messages; then
`ready {v}`; later `op {v, op, src, id}` from others, `ack {v}` for one's own,
`presence {src, name, caret, v}`, `leave {src}`. If the server missed messages
(e.g. Redis restarted empty), `snapshot {v, text, reset: true}` and `ready {v}`
again mid-session: the document as it now is, and the session carries on.
Client -> server: `op {v, op, id}` made against version v; `presence {v, caret}`.

Committing: the op is transformed against every op committed since its `v`,
applied, and stored by one Lua script that checks the version has not moved
(else: read and transform again), appends to the bounded op log, records the
op id (a resubmitted op is not applied twice) and publishes the entry on the
hub in the same step, so every worker sees commits in version order. The
current text is kept beside the log; the log keeps the last LOG_LENGTH ops.
"""

import json
import random
import re
import secrets
import threading
import time
import weakref

from flask import Blueprint, current_app, render_template, request

from core import ot
from core.errors import abort_json
from core.transports.websocket import Refused, json_object, route
from core.web import get_hub, get_redis, is_unicode

bp = Blueprint("editor", __name__, url_prefix="/editor")

DOC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MAX_DOC = 100_000  # code points
LOG_LENGTH = 500
MAX_NAME = 40

# KEYS: doc hash, log, ids; ARGV: from version. -> {v, text, base, {entries since from}}
_READ_LUA = """
local st = redis.call('HMGET', KEYS[1], 'v', 'text', 'base')
local v, base = tonumber(st[1] or '0'), tonumber(st[3] or '0')
local from = tonumber(ARGV[1])
local entries = {}
if from >= base and from < v then entries = redis.call('LRANGE', KEYS[2], from - base, -1) end
return {v, st[2] or '', base, entries}
"""

# KEYS: doc hash, log, ids, hub stream; ARGV: expected v, new text, entry JSON
# without its closing `"v":N}`, op id, log length, hub channel.
# -> {1, v} committed, {0, v} the version moved, {2, v} this op id was committed as v.
_COMMIT_LUA = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return {0, v} end
local seen = redis.call('HGET', KEYS[3], ARGV[4])
if seen then return {2, tonumber(seen)} end
v = v + 1
local entry = ARGV[3] .. '"v":' .. v .. '}'
redis.call('HSET', KEYS[1], 'v', v, 'text', ARGV[2])
redis.call('HSETNX', KEYS[1], 'base', 0)
redis.call('RPUSH', KEYS[2], entry)
redis.call('HSET', KEYS[3], ARGV[4], v)
if redis.call('LLEN', KEYS[2]) > tonumber(ARGV[5]) then
  local oldest = cjson.decode(redis.call('LPOP', KEYS[2]))
  redis.call('HINCRBY', KEYS[1], 'base', 1)
  redis.call('HDEL', KEYS[3], oldest.id)
end
hub_publish(KEYS[4], ARGV[6], 'j', entry)
return {1, v}
"""


# Greenlets of one worker commit to a document one at a time: the optimistic
# retry loop below then only races the other workers.
_commit_locks = weakref.WeakValueDictionary()
_commit_locks_guard = threading.Lock()


def _commit_lock(doc_key):
    with _commit_locks_guard:
        lock = _commit_locks.get(doc_key)
        if lock is None:
            lock = _commit_locks[doc_key] = threading.Lock()
        return lock


class Document:
    """One document's state in Redis. Built in the view (app context), used
    by the WebSocket loops after it."""

    def __init__(self, doc_id):
        prefix = current_app.config["REDIS_PREFIX"]
        self.hub, self.redis = get_hub(), get_redis()
        self.channel = f"editor:{doc_id}"
        self.keys = [f"{prefix}editor:{doc_id}", f"{prefix}editor:{doc_id}:log",
                     f"{prefix}editor:{doc_id}:ids"]
        self._read = self.redis.register_script(_READ_LUA)
        self._commit = self.hub.script(_COMMIT_LUA)

    def read(self, since=0):
        """(v, text, base, [log entries after version `since`])."""
        v, text, base, entries = self._read(keys=self.keys, args=[since])
        return int(v), text, int(base), [json.loads(e) for e in entries]

    def submit(self, base_v, op, op_id, src):
        """Transform `op` (made against version base_v) and commit it; returns
        the version it was committed as (a resubmitted op keeps its first one)."""
        with _commit_lock(self.keys[0]):
            return self._submit(base_v, op, op_id, src)

    def _submit(self, base_v, op, op_id, src):
        for attempt in range(50):
            if attempt:
                time.sleep(random.uniform(0, 0.002 * attempt))  # another worker just won
            v, text, base, entries = self.read(base_v)
            if base_v > v:
                raise Refused(f"version {base_v} is in the future (document is at {v})")
            if base_v < base:
                raise Refused(f"version {base_v} is too old to catch up; reload")
            rebased = op
            for entry in entries:
                if entry["id"] == op_id:
                    return entry["v"]  # already committed (resubmitted after a reconnect)
                rebased, _ = ot.transform(rebased, ot.from_json(entry["op"]))
            try:
                new_text = ot.apply(text, rebased)
            except ot.OTError as exc:
                raise Refused(str(exc)) from None
            if len(new_text) > MAX_DOC:
                raise Refused(f"a document holds at most {MAX_DOC} characters")
            entry_head = json.dumps({"kind": "op", "op": ot.to_json(rebased), "src": src,
                                     "id": op_id}, separators=(",", ":"))[:-1] + ","
            status, version = self._commit(
                keys=[*self.keys, self.hub.stream_key(self.channel)],
                args=[v, new_text, entry_head, op_id, LOG_LENGTH, self.channel])
            if status in (1, 2):
                return int(version)
        raise Refused("too much contention; resubmit")


@bp.get("/<doc>")
def page(doc):
    if not DOC_ID.match(doc):
        abort_json(400, "document ids are 1-64 of A-Z a-z 0-9 _ -")
    return render_template("editor.html", doc=doc)


@bp.get("/<doc>/text")
def text(doc):
    if not DOC_ID.match(doc):
        abort_json(400, "document ids are 1-64 of A-Z a-z 0-9 _ -")
    v, body, _, _ = Document(doc).read()
    return {"v": v, "text": body}


def _parse_op_message(message):
    if not isinstance(message.get("v"), int) or isinstance(message["v"], bool) or message["v"] < 0:
        raise Refused("op.v must be a version number")
    op_id = message.get("id")
    if not isinstance(op_id, str) or not 1 <= len(op_id) <= 64 or not is_unicode(op_id):
        raise Refused("op.id must be a string of 1-64 characters")
    try:
        return message["v"], ot.from_json(message.get("op")), op_id
    except ot.OTError as exc:
        raise Refused(f"bad op: {exc}") from None


def _caret(message):
    caret = message.get("caret")
    if (not isinstance(caret, list) or len(caret) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_DOC
                       for c in caret)):
        raise Refused("presence.caret must be [anchor, head] code point indexes")
    return caret


@route("/<doc>/ws", bp)
def editor_ws(ws, doc):
    if not DOC_ID.match(doc):
        raise Refused("document ids are 1-64 of A-Z a-z 0-9 _ -")
    raw_v = request.args.get("v", "")
    since = int(raw_v) if raw_v.isdigit() and len(raw_v) < 12 else None
    name = "".join(ch for ch in request.args.get("name", "") if ch.isprintable())[:MAX_NAME]
    document, src = Document(doc), secrets.token_hex(8)
    heartbeat = current_app.config["HEARTBEAT_SECONDS"]

    # Subscribe first, then read: nothing slips between.
    with document.hub.subscribe(document.channel, on_abort=ws.abort) as sub:
        v, body, base, entries = document.read(since if since is not None else 0)
        if since is None or not base <= since <= v:
            ws.send(json.dumps({"type": "snapshot", "v": v, "text": body,
                                "reset": since is not None}))
        else:
            for entry in entries:
                ws.send(json.dumps({"type": "op", **entry}))
        ws.send(json.dumps({"type": "ready", "v": v}))
        relayed = _Relayed(ws, document, src, v)
        try:
            # One greenlet writes every frame, in the order the hub delivered
            # them: acks come in version order among the others' ops.
            for raw in ws.relay(sub, encode=relayed.encode, on_reset=relayed.reset,
                                heartbeat=heartbeat):
                _handle(document, src, name, json_object(raw))
        finally:
            document.hub.publish_json(document.channel, {"kind": "leave", "src": src})


def _handle(document, src, name, message):
    """One message from the client: an op to commit, or presence to share."""
    if message.get("type") == "op":
        document.submit(*_parse_op_message(message), src)
    elif message.get("type") == "presence":
        version = message.get("v")
        document.hub.publish_json(document.channel, {
            "kind": "presence", "src": src, "name": name, "caret": _caret(message),
            "v": version if isinstance(version, int) else None})
    else:
        raise Refused("unknown message type")


class _Relayed:
    """Hub -> this client: others' ops, acks for ours (in version order),
    presence; and the document afresh after a reset."""

    def __init__(self, ws, document, src, version):
        self.ws, self.document, self.src = ws, document, src
        self.seen = version  # the newest version this client has

    def encode(self, msg):
        entry = msg.value
        if entry["kind"] == "op":
            if entry["v"] <= self.seen:
                return None
            self.seen = entry["v"]
            out = ({"type": "ack", "v": entry["v"]} if entry["src"] == self.src
                   else {"type": "op", **entry})
        elif entry["src"] != self.src:
            out = {"type": entry["kind"], **entry}
        else:
            return None
        return json.dumps(out)

    def reset(self, _reset):
        """Messages were missed (e.g. Redis restarted empty): send the document
        as it is now, `snapshot {v, text, reset: true}`, then `ready {v}`, and
        carry on from there. The client drops its unacknowledged edits (and
        tells its user)."""
        v, text, _, _ = self.document.read(-1)  # -1: the state only, no log entries
        self.seen = v
        self.ws.send(json.dumps({"type": "snapshot", "v": v, "text": text, "reset": True}))
        return json.dumps({"type": "ready", "v": v})
