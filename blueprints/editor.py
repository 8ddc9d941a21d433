"""The collaborative code editor: operational transformation on Redis
(docs/architecture.md, "The editor").

    GET /editor/<doc>            the page
    GET /editor/<doc>/text       {"v", "text"}
    WS  /editor/<doc>/ws[?v=N]   the protocol below

Server -> client: `snapshot {v, text, reset}` (first connect, or a version too
old to catch up from), or the ops since `?v=` as `op` messages; then
`ready {v}`; later `op {v, op, src, id}` from others, `ack {v}` for one's own,
`presence {src, name, caret, v}`, `leave {src}`. If the server missed messages
(e.g. Redis restarted empty), `snapshot {v, text, reset: true}` and `ready {v}`
again mid-session: the document as it now is, and the session carries on.
An op made against a version too far behind (more than EDITOR_MAX_OP_LAG ops,
or older than the op log) is not committed: the answer is the same
`snapshot {v, text, reset: true, reason}` and `ready {v}`, and the client
carries on from that snapshot.
Client -> server: `op {v, op, id}` made against version v; `presence {v, caret}`.
Refusals (a malformed op, one that does not fit the document, a quota spent,
the document cap reached) close the socket with 1008 and the reason.

Committing: the op is transformed against every op committed since its `v`
(at most EDITOR_MAX_OP_LAG of them; off the event loop when that is much
work), applied, and stored by one Lua script that checks the version has not
moved (else: read and transform again), appends to the op log, records the op
id (a resubmitted op is not applied twice) and publishes the entry on the hub
in the same step, so every worker sees commits in version order.

What a document may hold in Redis is bounded (a security review found it was
not): the log keeps the last LOG_LENGTH ops and at most EDITOR_OPLOG_BYTES of
them (always the newest); the channel's stream is trimmed to what the log
keeps; entries are compact JSON with non-ASCII text as UTF-8, not \\u escapes
(an emoji: 4 bytes, not 12); every key of a document expires after
EDITOR_DOC_TTL_DAYS without use; and at most EDITOR_MAX_DOCS documents are
live, counted in a sorted set by last use (`editor:docs`) from which the
expired fall out. Opening a document that is not live creates it: that
spends EDITOR_DOCS_RATE_LIMIT, and every client frame spends
EDITOR_OP_RATE_LIMIT (per address and worker).
"""

import json
import random
import re
import secrets
import threading
import time
import weakref

from flask import Blueprint, current_app, render_template, request

from core import offload, ot, quotas
from core.errors import abort_json
from core.transports.websocket import Refused, json_object, route
from core.web import get_hub, get_redis, is_unicode

bp = Blueprint("editor", __name__, url_prefix="/editor")

DOC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MAX_DOC = 100_000  # code points
LOG_LENGTH = 500
MAX_NAME = 40
CATCH_UP_ALL = 2**40  # `most` for reads that want every entry the log has

# Below this much rebase work (entries' characters, plus op components times
# entries) a rebase takes well under a millisecond: less than a trip to the
# thread pool costs. Above it, it runs there, off the event loop.
OFFLOAD_CHARS = 32_000
OFFLOAD_STEPS = 2_000


def dumps(obj):
    """Compact JSON with non-ASCII as UTF-8: what is stored, published and sent."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _entry(item):
    """The entry JSON of a log item `<stream id> <entry JSON>`."""
    return item.partition(" ")[2]


class Behind(Exception):
    """The op was made against a version too far behind to transform: the
    client is sent a fresh snapshot instead (the reason says why)."""


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
        config = current_app.config
        self.hub, self.redis_client = get_hub(), get_redis()
        self.doc_id, self.channel = doc_id, f"editor:{doc_id}"
        self.keys = self.hub.keys.editor_document(doc_id)
        self.docs_key = self.hub.keys.editor_documents()
        self.ttl_ms = config["EDITOR_DOC_TTL_DAYS"] * 24 * 3600 * 1000
        self.max_docs = config["EDITOR_MAX_DOCS"]
        self.log_bytes = config["EDITOR_OPLOG_BYTES"]
        self.max_lag = config["EDITOR_MAX_OP_LAG"]
        # lua/editor_*.lua
        self._open = self.hub.scripts["editor_open"]
        self._read = self.hub.scripts["editor_read"]
        self._commit = self.hub.scripts["editor_commit"]

    def open(self):
        """Count this document among the live ones and refresh its keys' TTL;
        one that is not live yet is created, which spends the creator's
        EDITOR_DOCS_RATE_LIMIT and needs room under EDITOR_MAX_DOCS."""
        if self._open_call(create=False) == 2:
            quotas.spend("EDITOR_DOCS_RATE_LIMIT", "new editor documents")
            if self._open_call(create=True) == 0:
                raise Refused(
                    f"too many documents: at most {self.max_docs} are kept; "
                    "reopen one in use, or retry once an unused one expires"
                )

    def _open_call(self, create):
        return self._open(
            keys=[*self.keys, self.docs_key],
            args=[self.doc_id, int(time.time() * 1000), self.ttl_ms, self.max_docs, int(create)],
        )

    def read(self, since=0, most=CATCH_UP_ALL):
        """(v, text, base, [entry JSON texts after version `since`]); no entries
        when `since` is outside the log or more than `most` behind."""
        v, text, base, items = self._read(keys=self.keys[:2], args=[since, most])
        return int(v), text, int(base), [_entry(item) for item in items]

    def submit(self, base_v, op, walks, op_id, src):
        """Transform `op` (made against version base_v, walking `walks` code
        points of it) and commit it; returns the version it was committed as
        (a resubmitted op keeps its first one)."""
        with _commit_lock(self.keys[0]):
            return self._submit(base_v, op, walks, op_id, src)

    def _submit(self, base_v, op, walks, op_id, src):
        for attempt in range(50):
            if attempt:
                time.sleep(random.uniform(0, 0.002 * attempt))  # another worker just won
            v, text, base, entries = self.read(base_v, self.max_lag)
            self._check_version(base_v, v, base)
            rebase = offload.run_blocking if _heavy(op, entries) else _call
            committed, result = rebase(_rebase, text, entries, op, walks, op_id, src)
            if committed is not None:
                return committed  # already committed (resubmitted after a reconnect)
            new_text, entry_head = result
            status, version = self._commit(
                keys=[*self.keys, self.docs_key, self.hub.stream_key(self.channel)],
                args=[
                    v,
                    new_text,
                    entry_head,
                    op_id,
                    LOG_LENGTH,
                    self.hub.notification_channel(self.channel),
                    self.log_bytes,
                    self.doc_id,
                    int(time.time() * 1000),
                    self.ttl_ms,
                    self.max_docs,
                ],
            )
            if status in (1, 2):
                return int(version)
            if status == 3:
                raise Refused(f"too many documents: at most {self.max_docs} are kept")
        raise Refused("too much contention; resubmit")

    def _check_version(self, base_v, v, base):
        if base_v > v:
            raise Refused(f"version {base_v} is in the future (document is at {v})")
        if base_v < base or v - base_v > self.max_lag:
            raise Behind(
                f"your version {base_v} is {v - base_v} ops behind (at most "
                f"{min(self.max_lag, v - base)} can be merged): your unsent edits "
                f"were dropped; here is the document as it is now"
            )


def _call(function, *args):
    return function(*args)


def _heavy(op, entries):
    """Whether rebasing `op` over `entries` is worth taking off the event loop."""
    return sum(map(len, entries)) > OFFLOAD_CHARS or (len(op) + 1) * len(entries) > OFFLOAD_STEPS


def _rebase(text, entries, op, walks, op_id, src):
    """Pure CPU work, safe on a thread: transform `op` over the log `entries`
    committed since its version and apply it to `text`. -> (v, None) when the
    op id is among them (committed already), else (None, (new text, entry
    JSON head))."""
    ops = []
    for raw in entries:
        entry = json.loads(raw)
        if entry["id"] == op_id:
            return entry["v"], None
        ops.append(ot.from_json(entry["op"]))
    # The op must fit the document it was made on (a trailing retain is
    # dropped by normalizing, so checked here, on the wire form's length).
    length = len(text) - sum(map(ot.length_change, ops))
    if walks > length:
        raise Refused(f"operation walks {walks} code points; the document has {length}")
    for other in ops:
        op, _ = ot.transform(op, other)
    try:
        new_text = ot.apply(text, op)
    except ot.OTError as exc:
        raise Refused(str(exc)) from None
    if len(new_text) > MAX_DOC:
        raise Refused(f"a document holds at most {MAX_DOC} characters")
    head = dumps({"kind": "op", "op": ot.to_json(op), "src": src, "id": op_id})[:-1] + ","
    return None, (new_text, head)


@bp.get("/<doc>")
def page(doc):
    if not DOC_ID.match(doc):
        abort_json(400, "document ids are 1-64 of A-Z a-z 0-9 _ -")
    return render_template("editor.html", doc=doc)


@bp.get("/<doc>/text")
def text(doc):
    if not DOC_ID.match(doc):
        abort_json(400, "document ids are 1-64 of A-Z a-z 0-9 _ -")
    v, body, _, _ = Document(doc).read(-1)  # -1: the state only, no log entries
    return {"v": v, "text": body}


def _parse_op_message(message):
    """(v, op, walks, id) of an `op` frame; `walks`: the code points its wire
    form walks, trailing retain included."""
    if not isinstance(message.get("v"), int) or isinstance(message["v"], bool) or message["v"] < 0:
        raise Refused("op.v must be a version number")
    op_id = message.get("id")
    if not isinstance(op_id, str) or not 1 <= len(op_id) <= 64 or not is_unicode(op_id):
        raise Refused("op.id must be a string of 1-64 characters")
    try:
        op = ot.from_json(message.get("op"))
    except ot.OTError as exc:
        raise Refused(f"bad op: {exc}") from None
    return message["v"], op, ot.walks(message["op"]), op_id


def _caret(message):
    caret = message.get("caret")
    if (
        not isinstance(caret, list)
        or len(caret) != 2
        or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_DOC for c in caret
        )
    ):
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
    document.open()
    heartbeat = current_app.config["HEARTBEAT_SECONDS"]

    # Subscribe first, then read: nothing slips between.
    with document.hub.subscribe(document.channel, on_abort=ws.abort) as sub:
        v, body, base, entries = document.read(since if since is not None else -1)
        if since is None or not base <= since <= v:
            ws.send(dumps({"type": "snapshot", "v": v, "text": body, "reset": since is not None}))
        else:
            for entry in entries:
                ws.send('{"type":"op",' + entry[1:])  # the stored entry, as it is
        ws.send(dumps({"type": "ready", "v": v}))
        relayed = _Relayed(ws, document, src, v)
        try:
            # One greenlet writes every frame, in the order the hub delivered
            # them: acks come in version order among the others' ops.
            for raw in ws.relay(
                sub, encode=relayed.encode, on_reset=relayed.reset, heartbeat=heartbeat
            ):
                try:
                    _handle(document, src, name, json_object(raw))
                except Behind as behind:
                    relayed.resync(str(behind))
        finally:
            document.hub.publish(
                document.channel, dumps({"kind": "leave", "src": src}), is_json=True
            )


def _handle(document, src, name, message):
    """One message from the client: an op to commit, or presence to share.
    Either spends one of the address' EDITOR_OP_RATE_LIMIT on this worker."""
    quotas.spend("EDITOR_OP_RATE_LIMIT", "editor messages", per_worker=True)
    if message.get("type") == "op":
        document.submit(*_parse_op_message(message), src)
    elif message.get("type") == "presence":
        version = message.get("v")
        document.hub.publish(
            document.channel,
            dumps(
                {
                    "kind": "presence",
                    "src": src,
                    "name": name,
                    "caret": _caret(message),
                    "v": version if isinstance(version, int) else None,
                }
            ),
            is_json=True,
        )
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
            out = (
                {"type": "ack", "v": entry["v"]}
                if entry["src"] == self.src
                else {"type": "op", **entry}
            )
        elif entry["src"] != self.src:
            out = {"type": entry["kind"], **entry}
        else:
            return None
        return dumps(out)

    def reset(self, _reset):
        """Messages were missed (e.g. Redis restarted empty): send the document
        as it is now, `snapshot {v, text, reset: true}`, then `ready {v}`, and
        carry on from there. The client drops its unacknowledged edits (and
        tells its user)."""
        return self._snapshot()

    def resync(self, reason):
        """The client's op was too far behind to merge: the same as a reset,
        with the reason."""
        self.ws.send(self._snapshot(reason))

    def _snapshot(self, reason=None):
        """Send `snapshot`; return the `ready` that follows it."""
        v, text, _, _ = self.document.read(-1)  # -1: the state only, no log entries
        self.seen = v
        snapshot = {"type": "snapshot", "v": v, "text": text, "reset": True}
        if reason:
            snapshot["reason"] = reason
        self.ws.send(dumps(snapshot))
        return dumps({"type": "ready", "v": v})
