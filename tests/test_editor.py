"""The editor through the real server: concurrent clients on 2 workers converge."""

import json
import threading
import time
import uuid

import pytest
import requests
import websocket

from core.keys import Keys
from tests.editor_client import SimClient

pytestmark = pytest.mark.integration


def test_concurrent_clients_on_two_workers_converge(server):
    doc = f"conv-{uuid.uuid4().hex[:8]}"
    clients = [SimClient(server, doc, seed) for seed in range(6)]
    threads = [threading.Thread(target=c.run, args=(40,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [repr(c.error) for c in clients if c.error] == []
    for c in clients:
        c.settle()
    final = requests.get(f"{server.url}/editor/{doc}/text", timeout=10).json()
    assert 0 < final["v"] <= sum(c.edits for c in clients)  # buffered edits travel composed
    states = [(c.version, c.text, c.inflight, c.buffer) for c in clients]
    assert all(state == (final["v"], final["text"], None, None) for state in states), (
        final,
        states,
    )


def test_a_resubmitted_op_is_not_applied_twice(server):
    doc = f"dup-{uuid.uuid4().hex[:8]}"
    ws = websocket.create_connection(f"{server.ws_url}/editor/{doc}/ws", timeout=10)
    assert json.loads(ws.recv())["type"] == "snapshot"
    assert json.loads(ws.recv())["type"] == "ready"
    op = {"type": "op", "v": 0, "op": [{"insert": "once"}], "id": "same-id"}
    ws.send(json.dumps(op))
    assert json.loads(ws.recv()) == {"type": "ack", "v": 1}
    ws.send(json.dumps(op))  # as after a reconnect
    ws.send(
        json.dumps({"type": "op", "v": 1, "op": [{"retain": 4}, {"insert": "!"}], "id": "next"})
    )
    assert json.loads(ws.recv()) == {"type": "ack", "v": 2}
    assert requests.get(f"{server.url}/editor/{doc}/text", timeout=5).json() == {
        "v": 2,
        "text": "once!",
    }
    ws.close()


@pytest.mark.parametrize(
    "message, reason",
    [
        ("not json", "JSON"),
        ("[1, 2]", "JSON objects"),
        ('{"type": "dance"}', "unknown message type"),
        ('{"type": "op", "v": "zero", "op": [], "id": "x"}', "version number"),
        ('{"type": "op", "v": 0, "op": [{"retain": -3}], "id": "x"}', "bad op"),
        ('{"type": "op", "v": 0, "op": [{"delete": 5}], "id": "x"}', "walks 5"),
        (
            '{"type": "op", "v": 0, "op": [{"retain": 1000000000}], "id": "x"}',
            "walks 1000000000 code points; the document has 0",
        ),
        ('{"type": "op", "v": 99, "op": [{"insert": "x"}], "id": "x"}', "future"),
        ('{"type": "op", "v": 0, "op": [{"insert": "x"}]}', "op.id"),
        ('{"type": "presence", "caret": [1]}', "caret"),
    ],
)
def test_bad_frames_close_with_a_reason_and_leave_the_document_alone(server, message, reason):
    doc = f"bad-{uuid.uuid4().hex[:8]}"
    ws = websocket.create_connection(f"{server.ws_url}/editor/{doc}/ws", timeout=10)
    ws.recv(), ws.recv()  # snapshot, ready
    ws.send(message)
    opcode, data = ws.recv_data(control_frame=True)
    while opcode != websocket.ABNF.OPCODE_CLOSE:
        opcode, data = ws.recv_data(control_frame=True)
    assert int.from_bytes(data[:2], "big") == 1008
    assert reason in data[2:].decode()
    assert requests.get(f"{server.url}/editor/{doc}/text", timeout=5).json() == {"v": 0, "text": ""}


def test_invalid_document_ids_are_refused(server):
    assert requests.get(f"{server.url}/editor/bad%20id/text", timeout=5).status_code == 400
    assert requests.get(f"{server.url}/editor/{'x' * 65}", timeout=5).status_code == 400


# -- bounds and quotas (a security review found none) ----------------------------------------


def _open(server, doc, since=None):
    """A WebSocket on `doc`, past its snapshot (or catch-up) and `ready`;
    returns (socket, version)."""
    query = "" if since is None else f"?v={since}"
    ws = websocket.create_connection(f"{server.ws_url}/editor/{doc}/ws{query}", timeout=30)
    while True:
        message = json.loads(ws.recv())
        if message["type"] == "ready":
            return ws, message["v"]


def _next(ws, *types):
    """The next message of one of `types`, or {"type": "close", code, reason}."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return {
                "type": "close",
                "code": int.from_bytes(data[:2], "big"),
                "reason": data[2:].decode(),
            }
        if opcode == websocket.ABNF.OPCODE_TEXT:
            message = json.loads(data)
            if message["type"] in types:
                return message


def _op(ws, v, components, op_id):
    ws.send(json.dumps({"type": "op", "v": v, "op": components, "id": op_id}, ensure_ascii=False))
    return _next(ws, "ack", "snapshot")


def _replace_all(ws, v, text, old_length, op_id):
    """Replace the whole document with `text`; returns the new version."""
    reply = _op(ws, v, [{"insert": text}] + ([{"delete": old_length}] if old_length else []), op_id)
    assert reply["type"] == "ack", reply
    return reply["v"]


def test_every_redis_key_of_a_document_expires(server, rdb):
    doc = f"ttl-{uuid.uuid4().hex[:8]}"
    ws, v = _open(server, doc)
    assert _op(ws, v, [{"insert": "hello"}], "a")["type"] == "ack"
    ws.send(json.dumps({"type": "presence", "v": 1, "caret": [0, 0]}))
    ws.close()
    keys = rdb.keys(f"*{doc}*")
    assert len(keys) == 4, keys  # state, op log, op ids, the channel's stream
    ttls = {key: rdb.ttl(key) for key in keys}
    assert all(0 < ttl <= 7 * 24 * 3600 for ttl in ttls.values()), ttls
    assert 0 < rdb.ttl(Keys().editor_documents()) <= 7 * 24 * 3600


def test_the_op_log_and_the_channel_stay_bounded_in_bytes_and_store_utf8(server, rdb):
    """25 ops of 15,000 emoji (60 KB each as UTF-8, 180 KB as \\u escapes): the
    log keeps at most EDITOR_OPLOG_BYTES (1 MB) plus the newest op, the
    channel's stream the same ops, and each is stored as UTF-8."""
    doc = f"bytes-{uuid.uuid4().hex[:8]}"
    ws, v = _open(server, doc)
    length = 0
    for i in range(25):
        v = _replace_all(ws, v, "😀" * 15_000, length, f"flood-{i}")
        length = 15_000
    ws.close()
    log = rdb.lrange(Keys().editor_document(doc)[1], 0, -1)
    sizes = [len(item.encode()) for item in log]
    assert max(sizes) < 15_000 * 4 + 300  # UTF-8, compact: about 4 bytes an emoji
    assert sum(sizes) <= 1024 * 1024 + max(sizes)
    stream = rdb.xrange(Keys().stream(f"editor:{doc}"))
    assert sum(len(fields["d"].encode()) for _, fields in stream) <= 1024 * 1024 + max(sizes)
    # What was trimmed is gone for catch-up: an old version gets the document afresh.
    old = websocket.create_connection(f"{server.ws_url}/editor/{doc}/ws?v=1", timeout=10)
    first = json.loads(old.recv())
    assert (first["type"], first["v"], first["reset"]) == ("snapshot", 25, True)
    assert first["text"] == "😀" * 15_000
    old.close()


def test_an_op_too_far_behind_is_answered_with_a_fresh_snapshot(server):
    """More than EDITOR_MAX_OP_LAG (100) ops behind: not transformed, not
    committed; the client gets the document as it is, and carries on."""
    doc = f"lag-{uuid.uuid4().hex[:8]}"
    ws, v = _open(server, doc)
    for i in range(101):
        v = _op(ws, v, [{"insert": "x"}], f"fill-{i}")["v"]
    reply = _op(ws, 0, [{"insert": "late"}], "late")
    assert reply["type"] == "snapshot", reply
    assert (reply["v"], reply["text"], reply["reset"]) == (101, "x" * 101, True)
    assert "101 ops behind" in reply["reason"]
    assert _next(ws, "ready") == {"type": "ready", "v": 101}
    assert _op(ws, 101, [{"insert": "on time"}], "again") == {"type": "ack", "v": 102}
    ws.close()
    assert requests.get(f"{server.url}/editor/{doc}/text", timeout=5).json() == {
        "v": 102,
        "text": "on time" + "x" * 101,
    }


def test_an_op_must_fit_the_version_it_was_made_on(server):
    """The document has 3 code points now, but had none at version 0: an op
    made on version 0 that retains 2 does not fit it."""
    doc = f"fit-{uuid.uuid4().hex[:8]}"
    ws, v = _open(server, doc)
    assert _op(ws, v, [{"insert": "abc"}], "first")["v"] == 1
    reply = _op(ws, 0, [{"retain": 2}, {"insert": "!"}], "stale")
    assert reply["type"] == "close" and reply["code"] == 1008, reply
    assert "walks 2 code points; the document has 0" in reply["reason"]
    assert requests.get(f"{server.url}/editor/{doc}/text", timeout=5).json() == {
        "v": 1,
        "text": "abc",
    }


def test_documents_beyond_the_cap_are_refused_until_one_expires(start_server, rdb):
    prefix = f"cap{uuid.uuid4().hex[:6]}:"
    server = start_server(workers=1, REDIS_PREFIX=prefix, EDITOR_MAX_DOCS=3)
    for name in ("one", "two", "three"):
        ws, v = _open(server, name)
        assert _op(ws, v, [{"insert": name}], "a")["type"] == "ack"
        ws.close()
    ws = websocket.create_connection(f"{server.ws_url}/editor/four/ws", timeout=10)
    refused = _next(ws, "ready")
    assert refused["type"] == "close" and refused["code"] == 1008, refused
    assert "too many documents: at most 3" in refused["reason"]
    assert [key for key in rdb.scan_iter(match=f"{prefix}*") if "four" in key] == []
    ws, _ = _open(server, "two")  # the live ones stay open to everyone
    ws.close()
    # "one" unused for longer than EDITOR_DOC_TTL_DAYS (its last use set back
    # 8 days, as its keys' expiry would have removed it): its place is free.
    rdb.zadd(Keys(prefix).editor_documents(), {"one": (time.time() - 8 * 24 * 3600) * 1000})
    ws, v = _open(server, "four")
    assert _op(ws, v, [{"insert": "four"}], "a")["type"] == "ack"
    ws.close()
    assert sorted(rdb.zrange(Keys(prefix).editor_documents(), 0, -1)) == ["four", "three", "two"]


def test_new_documents_per_address_are_limited(start_server):
    server = start_server(
        workers=1,
        REDIS_PREFIX=f"rate{uuid.uuid4().hex[:6]}:",
        EDITOR_DOCS_RATE_LIMIT="3 per minute",
    )
    tag = uuid.uuid4().hex[:6]
    for i in range(3):
        ws, _ = _open(server, f"new-{tag}-{i}")
        ws.close()
    ws, _ = _open(server, f"new-{tag}-0")  # reopening a live one creates nothing
    ws.close()
    ws = websocket.create_connection(f"{server.ws_url}/editor/new-{tag}-3/ws", timeout=10)
    refused = _next(ws, "ready")
    assert refused["type"] == "close" and refused["code"] == 1008, refused
    assert "too many new editor documents: at most 3 per 1 minute" in refused["reason"]


def test_frames_per_address_are_limited_on_each_worker(start_server):
    server = start_server(workers=1, EDITOR_OP_RATE_LIMIT="3 per minute")
    doc = f"ops-{uuid.uuid4().hex[:8]}"
    ws, v = _open(server, doc)
    for i in range(3):
        v = _op(ws, v, [{"insert": "x"}], f"op-{i}")["v"]
    refused = _op(ws, v, [{"insert": "x"}], "op-3")
    assert refused["type"] == "close" and refused["code"] == 1008, refused
    assert "too many editor messages: at most 3 per 1 minute" in refused["reason"]
    assert requests.get(f"{server.url}/editor/{doc}/text", timeout=5).json()["text"] == "xxx"


def test_the_worker_keeps_answering_while_a_worst_case_op_is_rebased(start_server):
    """The most rebasing one op may cost: made 100 versions back (the most
    EDITOR_MAX_OP_LAG allows), with ~4,600 components (a 64 KB frame), over
    100 ops of 600 components each (under 1 MB of log): over a second of
    CPU here. It runs off the event loop, so /healthz on the same (only)
    worker answers meanwhile: no /healthz waits for as long as half the op."""
    server = start_server(workers=1)
    doc = f"heavy-{uuid.uuid4().hex[:8]}"
    ws, v = _open(server, doc)
    base = _op(ws, v, [{"insert": "a" * 6000}], "base")["v"]
    v = base
    for i in range(100):
        v = _op(ws, v, [{"retain": 20}, {"insert": "b"}] * 300, f"fill-{i}")["v"]
    waits, done = [], threading.Event()

    def poll_healthz():
        with requests.Session() as session:
            while not done.is_set():
                began = time.perf_counter()
                assert session.get(f"{server.url}/healthz", timeout=30).status_code == 200
                waits.append(time.perf_counter() - began)

    began = time.perf_counter()
    ws.send(
        json.dumps(
            {"type": "op", "v": base, "id": "heavy", "op": [{"retain": 1}, {"insert": "c"}] * 2300},
            separators=(",", ":"),
        )
    )
    poller = threading.Thread(target=poll_healthz)
    poller.start()
    reply = _next(ws, "ack", "snapshot")
    took = time.perf_counter() - began
    done.set()
    poller.join(30)
    ws.close()
    assert reply == {"type": "ack", "v": 102}
    assert len(waits) >= 2 and max(waits) < took / 2, (took, sorted(waits)[-5:])
