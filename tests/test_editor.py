"""The editor through the real server: concurrent clients on 2 workers converge."""

import json
import threading
import uuid

import pytest
import requests
import websocket

from tests.editor_client import SimClient


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
        final, states)


def test_a_resubmitted_op_is_not_applied_twice(server):
    doc = f"dup-{uuid.uuid4().hex[:8]}"
    ws = websocket.create_connection(f"{server.ws_url}/editor/{doc}/ws", timeout=10)
    assert json.loads(ws.recv())["type"] == "snapshot"
    assert json.loads(ws.recv())["type"] == "ready"
    op = {"type": "op", "v": 0, "op": [{"insert": "once"}], "id": "same-id"}
    ws.send(json.dumps(op))
    assert json.loads(ws.recv()) == {"type": "ack", "v": 1}
    ws.send(json.dumps(op))  # as after a reconnect
    ws.send(json.dumps({"type": "op", "v": 1, "op": [{"retain": 4}, {"insert": "!"}],
                        "id": "next"}))
    assert json.loads(ws.recv()) == {"type": "ack", "v": 2}
    assert requests.get(f"{server.url}/editor/{doc}/text", timeout=5).json() == {
        "v": 2, "text": "once!"}
    ws.close()


@pytest.mark.parametrize("message, reason", [
    ("not json", "JSON"),
    ("[1, 2]", "JSON objects"),
    ('{"type": "dance"}', "unknown message type"),
    ('{"type": "op", "v": "zero", "op": [], "id": "x"}', "version number"),
    ('{"type": "op", "v": 0, "op": [{"retain": -3}], "id": "x"}', "bad op"),
    ('{"type": "op", "v": 0, "op": [{"delete": 5}], "id": "x"}', "walks 5"),
    ('{"type": "op", "v": 99, "op": [{"insert": "x"}], "id": "x"}', "future"),
    ('{"type": "op", "v": 0, "op": [{"insert": "x"}]}', "op.id"),
    ('{"type": "presence", "caret": [1]}', "caret"),
])
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
