"""Redis Cluster (REDIS_CLUSTER=1): channels sharded over 3 masters, and a
master failing over in the middle of a stream with resuming clients on every
transport (docs/deploy.md).

Real servers: 3 masters with a replica each (tests/redis_topologies.py,
ClusterSetup), a gunicorn with 2 workers given the URL of one node. What a
client must end with is what the Sentinel tests ask (tests/resumers.py,
check_client): in order and once, every message the cluster holds after its
starting point, or an explicit reset and everything after it.
"""

import json
import subprocess
import threading
import time
import urllib.parse

import pytest
import redis
import requests

import core.hub
import core.redis_connections
from core.hub import Hub
from core.keys import Keys
from core.redis_connections import RedisConnections
from tests.clients import healthz_bodies, wait_until, worker_pids
from tests.redis_topologies import ClusterSetup, skip_without_cluster_support
from tests.resumers import (
    HTTPPublisher,
    admin_token_of,
    describe,
    failover_mid_stream,
    finish,
    start_clients,
    wait_connected,
)
from tests.servers import ROOT, gunicorn_command
from tests.test_draw_bounds import drawer, stroke, wait_history
from tests.test_editor import _op as send_op
from tests.test_editor import _open as open_document
from tests.test_nginx import behind_nginx, every_transport_gets_what_either_instance_published
from tests.test_qa import Visitor
from tests.test_ticker import quote
from tests.test_ws_apps import dashboard
from tests.test_ws_apps import visitor as mouse_visitor

# slow: each test starts a cluster of its own (6 redis-server processes, about 3 s)
pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_PASSWORD = "cluster-admin-password"


@pytest.fixture
def cluster(tmp_path):
    skip_without_cluster_support()
    with ClusterSetup(tmp_path / "cluster") as setup:
        yield setup


@pytest.fixture
def cluster_server(start_server, cluster):
    server = start_server(
        REDIS_CLUSTER=1,
        REDIS_URL=cluster.url,
        STREAM_MAXLEN=5000,
        LONGPOLL_TIMEOUT_SECONDS=5,
        DEMO_USERS=1,
        DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    yield server
    server.stop()


def login(server):
    return admin_token_of(server, ADMIN_PASSWORD)


def channels_per_master(cluster, name, per):
    """{master port: `per` channels named after `name` whose streams it holds}."""
    found = {}
    for i in range(1000):
        channel = f"{name}-{i}"
        on = found.setdefault(cluster.master_of(Keys().stream(channel)), [])
        if len(on) < per:
            on.append(channel)
        if len(found) == 3 and all(len(on) == per for on in found.values()):
            return found
    raise AssertionError(f"no {per} channels found for every master")


def listeners_on(cluster, port):
    """The hub listeners connected to the master at `port` (CLIENT LIST names them)."""
    with redis.Redis(port=port, password=cluster.password, decode_responses=True) as node:
        return {c["name"] for c in node.client_list() if c["name"].startswith("rt:hub:")}


def cut_listeners(cluster, ports):
    """Cut every pub/sub connection (the hubs' listeners) to the masters at `ports`."""
    for port in ports:
        with redis.Redis(port=port, password=cluster.password) as node:
            node.client_kill_filter(_type="pubsub")


def hub_reconnects(server):
    """{worker pid: its hub's reconnects}."""
    return {pid: body["hub_reconnects"] for pid, (_, body) in healthz_bodies(server).items()}


@pytest.mark.chaos  # (the listeners' connections cut)
def test_channels_on_every_shard_reach_clients_of_every_transport(cluster, cluster_server):
    server = cluster_server
    channels = channels_per_master(cluster, "shard", per=2)
    publisher_token = login(server)  # users and sessions live in the cluster too
    publishers = {
        channel: HTTPPublisher(
            server, channel, publisher_token, server.log_path.with_suffix(f".{channel}")
        )
        for on in channels.values()
        for channel in on
    }
    clients = [
        client
        for channel in publishers
        for client in start_clients(server, channel, per_transport=2, until="END.0")
    ]
    try:
        wait_connected(clients)
        workers = worker_pids(server)
        for publisher in publishers.values():
            for i in range(10):
                publisher.publish(f"m{i:02d}")
        # each worker listens to every master, one connection each, and hears a
        # channel's notifications as a shard channel of its master only
        for port, on in channels.items():
            assert len(listeners_on(cluster, port)) == 2, port
            with redis.Redis(port=port, password=cluster.password) as node:
                for channel in on:
                    name = Keys().notifications(channel)
                    # (the workers that serve the channel: one or both)
                    assert node.execute_command("PUBSUB", "SHARDNUMSUB", name)[1] in (1, 2)
                    assert node.execute_command("PUBSUB", "NUMSUB", name)[1] == 0
        # Every listener connection cut: each worker listens anew, subscribing
        # to all its channels at once (one SSUBSCRIBE per slot), and catches up.
        cut_listeners(cluster, channels)
        for publisher in publishers.values():
            for i in range(10, 20):
                publisher.publish(f"m{i:02d}")
            publisher.publish("END")
        hanging = finish(clients, timeout=60)
        assert not hanging, [describe(c, []) for c in hanging[:3]]
        for client in clients:
            assert client.messages() == [f"m{i:02d}.0" for i in range(20)] + ["END.0"]
            assert not client.resets()
        reconnects = hub_reconnects(server)
        assert set(reconnects) == workers and all(n >= 1 for n in reconnects.values())
        assert wait_until(lambda: all(len(listeners_on(cluster, p)) == 2 for p in channels))
    finally:
        for client in clients:
            client.stop()


def test_apps_keep_their_state_on_a_cluster(cluster, cluster_server):
    """Q&A and the editor change their state and publish in one script: on a
    cluster their keys and their channels' streams share one slot."""
    server = cluster_server
    visitor = Visitor(server)
    try:
        assert visitor.post("questions", {"question": "Does it shard?"}).status_code == 201
        assert visitor.wait_question("Does it shard?")
        assert visitor.post("select", {"question": "Does it shard?"}).status_code == 200
        assert visitor.post("answers", {"answer": "by slot"}).status_code == 201
        assert visitor.wait_answers("Does it shard?", "by slot")
    finally:
        visitor.close()
    ws, version = open_document(server, "sharded")
    try:
        assert send_op(ws, version, [{"insert": "hello"}], "op-1")["type"] == "ack"
    finally:
        ws.close()
    assert cluster.client().hget(Keys().editor_document("sharded")[0], "text") == "hello"
    # drawing (a script and a transaction on its keys), the ticker (a script),
    # mouse tracking (presence, and its dashboard's stream)
    ws, _ = drawer(server)
    try:
        stroke(ws, [0.1, 0.2, 0.3])
        assert len(wait_history(server, lambda segments: len(segments) >= 2)) >= 2
    finally:
        ws.close()
    assert quote(server).status_code == 200
    token = login(server)
    # the process page: every master's and worker's report, in one read
    processes = requests.get(
        f"{server.url}/admin/processes",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=10,
    )
    assert processes.status_code == 200, processes.text
    roles = [p["role"] for p in processes.json()["processes"]]
    assert roles.count("master") == 1 and roles.count("worker") == 2, roles
    board = dashboard(server, token)
    try:
        ws, hello = mouse_visitor(server)
        assert board.wait_for(
            lambda items: any(
                i["event"] == "join" and json.loads(i["data"])["id"] == hello["id"] for i in items
            )
        )
        ws.close()
    finally:
        board.close()


def test_a_cluster_that_cannot_serve_is_one_line_at_start_up(base_env, redis_server, cluster):
    """Not a cluster node, or slots without a master: the server does not start,
    and says why in one line (not a traceback in every worker)."""

    def start(url):
        return subprocess.run(
            gunicorn_command(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**base_env, "REDIS_CLUSTER": "1", "REDIS_URL": url, "BIND": "127.0.0.1:0"},
        )

    failing = cluster.url  # a master: the one left without its slots (cluster_state:fail)
    port = urllib.parse.urlsplit(failing).port
    with redis.Redis(port=port, password=cluster.password) as node:
        first, last = cluster.masters(port)[0][1][0]
        node.execute_command("CLUSTER", "DELSLOTSRANGE", first, last)
    assert wait_until(lambda: cluster_info(cluster, port)["cluster_state"] == "fail")
    for url, why in (
        (redis_server.url, "is not a Redis Cluster node"),
        (failing, "is not serving (cluster_state:fail"),
    ):
        result = start(url)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "REDIS_CLUSTER" in line]
        assert len(lines) == 1 and why in lines[0], result.stderr[-2000:]
        assert lines[0].startswith("configuration error: REDIS_CLUSTER: ")
        assert "Traceback" not in result.stderr


def test_a_worker_starting_while_a_slot_has_no_master_waits_for_it(cluster, monkeypatch):
    """A worker restarted in the middle of a failover finds a cluster that
    cannot serve every slot yet: its client waits for the cluster (up to
    CLUSTER_WAIT) instead of failing to boot, and gives up after that."""
    port, ranges = cluster.masters()[0]  # the master REDIS_URL names
    slot = ranges[0][0]
    with redis.Redis(port=port, password=cluster.password) as node:
        node.execute_command("CLUSTER", "DELSLOTS", slot)
        restored = threading.Event()

        def restore():
            time.sleep(2)  # long after the client's first try
            node.execute_command("CLUSTER", "ADDSLOTS", slot)
            restored.set()

        restorer = threading.Thread(target=restore)
        restorer.start()
        try:
            client = RedisConnections(url=cluster.url, cluster=True).client()
        finally:
            restorer.join()
        assert restored.is_set()
        client.set("after-the-wait", "yes")
        assert client.get("after-the-wait") == "yes"
        client.close()

        node.execute_command("CLUSTER", "DELSLOTS", slot)
        monkeypatch.setattr(core.redis_connections, "CLUSTER_WAIT", 1.0)
        with pytest.raises(redis.exceptions.RedisClusterException, match="not covered"):
            RedisConnections(url=cluster.url, cluster=True).client()
        node.execute_command("CLUSTER", "ADDSLOTS", slot)


def cluster_info(cluster, port):
    with redis.Redis(port=port, password=cluster.password, decode_responses=True) as node:
        return node.execute_command("CLUSTER INFO")


def test_a_worker_lets_go_of_a_shard_channel_and_hears_it_again(cluster, monkeypatch):
    """The hub's own SUNSUBSCRIBE (a channel nobody here wanted for IDLE_KEEP)
    is not mistaken for the server's (a slot moving away): no reconnect."""
    monkeypatch.setattr(core.hub, "IDLE_KEEP", 1.0)
    connections = RedisConnections(url=cluster.url, cluster=True)
    hub = Hub(connections.client(), connections, prefix="unit:")
    channel = "idle-then-back"
    master = cluster.master_of(hub.stream_key(channel))

    def listeners():
        with redis.Redis(port=master, password=cluster.password) as node:
            name = hub.notification_channel(channel)
            return node.execute_command("PUBSUB", "SHARDNUMSUB", name)[1]

    try:
        with hub.subscribe(channel) as sub:
            assert wait_until(lambda: listeners() == 1)
            assert sub.wait(0.5) == []  # live
            hub.publish(channel, "one")
            got = [m.data for m in sub.wait(5)]
            # (if this fails again: whether the listener had the channel live)
            assert got == ["one"], (hub.stats(), hub.live_epoch(channel), hub.reconnects)
        assert wait_until(lambda: listeners() == 0, timeout=10)
        with hub.subscribe(channel) as back:
            assert wait_until(lambda: listeners() == 1)
            assert back.wait(0.5) == []
            hub.publish(channel, "two")
            assert [m.data for m in back.wait(5)] == ["two"]
            hub.publish_many(channel, ["three", "four"])  # one pipeline, on the channel's master
            got = []
            while len(got) < 2:
                got += back.wait(5)
            assert [m.data for m in got] == ["three", "four"]
        assert hub.reconnects == 0
    finally:
        hub.stop()


def test_every_channel_goes_live_whichever_master_confirms_first(cluster):
    """On a cluster the listener has a connection per master, and each one
    confirms its own subscriptions: a channel's SSUBSCRIBE may be confirmed
    before the control channel's SUBSCRIBE on another master. Every channel
    must still go live, at the listener's first connect and at each
    reconnect (a channel confirmed before the listener knew it was connected
    used to be ignored: its subscribers caught up for ever, hearing nothing)."""
    connections = RedisConnections(url=cluster.url, cluster=True)
    hub = Hub(connections.client(), connections, prefix="unit-live:")
    channels = [c for on in channels_per_master(cluster, "live", per=3).values() for c in on]
    subs = [hub.subscribe(channel) for channel in channels]
    try:
        for sub in subs:
            sub.__enter__()
        for round_ in range(4):
            if round_:  # every listener connection cut: the hub listens anew
                before = hub.reconnects
                cut_listeners(cluster, [port for port, _ in cluster.masters()])
                assert wait_until(lambda b=before: hub.reconnects > b, timeout=10)
            for channel in channels:
                hub.publish(channel, f"{channel} {round_}")
            for sub, channel in zip(subs, channels, strict=True):
                got = []
                deadline = time.monotonic() + 10
                while not got and time.monotonic() < deadline:
                    got = [m.data for m in sub.wait(0.5) if not m.is_reset]
                assert got == [f"{channel} {round_}"], (round_, channel)
    finally:
        for sub in subs:
            sub.__exit__(None, None, None)
        hub.stop()


def test_two_instances_behind_nginx_deliver_on_every_transport(
    start_server, cluster, channel, tmp_path
):
    """Hosts added behind nginx share only the cluster: what one publishes
    reaches the other's subscribers on every transport."""
    with behind_nginx(
        start_server,
        tmp_path,
        REDIS_CLUSTER=1,
        REDIS_URL=cluster.url,
        DEMO_USERS=1,
        DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD,
    ) as deployment:
        every_transport_gets_what_either_instance_published(
            deployment, channel, token=login(deployment.a)
        )


@pytest.mark.chaos
@pytest.mark.parametrize(
    ("how", "min_replicas"),
    [("fail_over", 0), ("kill_master", 1)],
    ids=["CLUSTER-FAILOVER-then-SIGKILL", "SIGKILL-with-PUBLISH_MIN_REPLICAS=1"],
)
def test_a_master_failing_over_mid_stream_loses_nothing_acknowledged(
    start_server, channel, tmp_path, how, min_replicas
):
    """A manual failover (the replica takes over once it has everything) or
    the master killed (the cluster promotes a replica by itself, and
    asynchronous replication may lose its last writes, except those that
    PUBLISH_MIN_REPLICAS made wait for a replica: so that one replica is left
    to confirm them after the failover, each master has two then)."""
    skip_without_cluster_support()
    with ClusterSetup(tmp_path / "cluster", replicas=1 + min_replicas) as cluster:
        run_failover(start_server, cluster, channel, tmp_path, how, min_replicas)


def run_failover(start_server, cluster, channel, tmp_path, how, min_replicas):
    # The master that goes is the node REDIS_URL names: the app must find the
    # cluster through the nodes it has seen since.
    url = cluster.url
    named = urllib.parse.urlsplit(url).port
    channel = next(
        name
        for name in (f"{channel}-{i}" for i in range(1000))
        if cluster.master_of(Keys().stream(name)) == named
    )
    server = start_server(
        REDIS_CLUSTER=1,
        REDIS_URL=url,
        STREAM_MAXLEN=5000,
        LONGPOLL_TIMEOUT_SECONDS=5,
        PUBLISH_MIN_REPLICAS=min_replicas,
        DEMO_USERS=1,
        DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )

    def after(_workers):
        # each worker's listener noticed that its master was gone and listened anew
        assert all(n >= 1 for n in hub_reconnects(server).values())
        login(server)

    try:
        result = failover_mid_stream(
            server,
            channel,
            login(server),
            tmp_path / "answers.jsonl",
            fail=lambda: getattr(cluster, how)(named),
            stream=lambda: [
                (i, fields["d"]) for i, fields in cluster.client().xrange(Keys().stream(channel))
            ],
            after=after,
        )
    finally:
        server.stop()
    assert result["lost"] == []
    print(f"{how}: {result}")
