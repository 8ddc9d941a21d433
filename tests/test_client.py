"""realtime_client, the Python client, against a real server on each
transport: catch-up, live delivery, resume across a reload without loss,
resets, and refusals that end the iteration instead of retrying."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from realtime_client import ClientError, Message, Reset, login, publish, subscribe
from tests.clients import wait_until, worker_pids
from tests.conftest import ROOT

TRANSPORTS = ("sse", "websocket", "longpoll")


class Reader(threading.Thread):
    """Iterates a subscription in the background until `count` messages."""

    def __init__(self, events, count):
        super().__init__(daemon=True)
        self.iterator, self.count, self.got, self.error = events, count, [], None

    def run(self):
        try:
            for event in self.iterator:
                self.got.append(event)
                if sum(isinstance(e, Message) for e in self.got) >= self.count:
                    return
        except Exception as exc:
            self.error = exc

    def texts(self):
        return [e.data for e in self.got if isinstance(e, Message)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_catch_up_then_live_in_order(server, admin_token, channel, transport):
    first = [publish(server.url, channel, f"old {i}", token=admin_token) for i in range(3)]
    reader = Reader(subscribe(server.url, channel, transport=transport, since="0"), 6)
    reader.start()
    assert wait_until(lambda: len(reader.texts()) >= 3, timeout=15)
    publish(server.url, channel, "new 0", token=admin_token)
    publish(server.url, channel, {"n": 1}, token=admin_token, is_json=True)
    publish(server.url, channel, '["two"]', token=admin_token, is_json=True)
    reader.join(15)
    assert reader.error is None
    assert reader.texts() == ["old 0", "old 1", "old 2", "new 0", '{"n":1}', '["two"]']
    assert [e.id for e in reader.got[:3]] == first


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_resumes_across_a_reload_with_nothing_lost_or_repeated(
        start_server, admin_token, channel, transport):
    server = start_server(LONGPOLL_TIMEOUT_SECONDS=5)
    reader = Reader(subscribe(server.url, channel, transport=transport, since="0"), 60)
    reader.start()
    publish(server.url, channel, "m00", token=admin_token)
    assert wait_until(lambda: reader.texts() == ["m00"], timeout=15)
    old = worker_pids(server)
    for i in range(1, 60):
        if i == 20:
            os.kill(server.process.pid, signal.SIGHUP)  # every stream on the old workers ends
        for _attempt in range(50):
            try:
                publish(server.url, channel, f"m{i:02d}", token=admin_token)
                break
            except (ClientError, OSError):
                time.sleep(0.1)
        time.sleep(0.02)
    reader.join(60)
    assert reader.error is None
    assert reader.texts() == [f"m{i:02d}" for i in range(60)]
    assert not any(isinstance(e, Reset) for e in reader.got)
    assert wait_until(lambda: not (worker_pids(server) & old), timeout=30), \
        "the reload replaced every worker"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cursor_no_longer_retained_gives_a_reset_then_what_follows(
        server, admin_token, channel, transport):
    publish(server.url, channel, "kept", token=admin_token)
    events = subscribe(server.url, channel, transport=transport, since="1-0")
    reset = next(events)
    assert isinstance(reset, Reset)
    publish(server.url, channel, "after", token=admin_token)
    assert next(events).data == "after"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_subscription_raises_instead_of_retrying(server, transport):
    with pytest.raises(ClientError) as refused:
        next(subscribe(server.url, "private-someone", transport=transport))
    assert refused.value.status in (401, 403, 1008)


def test_login_and_publish_errors_carry_the_servers_reason(server, admin_token, channel):
    with pytest.raises(ClientError) as wrong:
        login(server.url, "test-admin", "not the password")
    assert wrong.value.status == 401
    with pytest.raises(ClientError) as bad_json:
        publish(server.url, channel, "{oops", token=admin_token, is_json=True)
    assert bad_json.value.status == 400 and "not valid JSON" in bad_json.value.reason
    token = login(server.url, "test-admin", "test-admin-password")
    assert publish(server.url, channel, "with a fresh token", token=token)


def test_the_stdin_broadcaster_publishes_over_http_with_a_token(server, admin_token, channel):
    def broadcast(*args, token):
        env = {**os.environ, "REALTIME_TOKEN": token} if token else {
            k: v for k, v in os.environ.items() if k != "REALTIME_TOKEN"}
        return subprocess.run(
            [sys.executable, "-m", "workers.broadcast", "--channel", channel, *args],
            input="first line\n\nsecond line\n", capture_output=True, text=True, timeout=30,
            cwd=ROOT, env=env)

    sent = broadcast("--url", server.url, token=admin_token)
    assert sent.returncode == 0, sent.stderr
    events = subscribe(server.url, channel, transport="longpoll", since="0")
    assert [next(events).data, next(events).data] == ["first line", "second line"]

    no_token = broadcast("--url", server.url, token=None)
    assert no_token.returncode == 2 and "--url needs a token" in no_token.stderr
    refused = broadcast("--url", server.url, token="not-a-token")
    assert refused.returncode == 1 and "the server refused: 401" in refused.stderr
