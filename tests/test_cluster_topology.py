"""The Redis Cluster harness (tests/redis_topologies.py, ClusterSetup): what a
test built on it relies on, seen through redis-py's public API only.

Real servers: 3 masters with a replica each, all with a password. The tests
check the layout (slots, replicas), that keys and sharded pub/sub reach
several masters, and that after `fail_over()` clients old and new read what
was written before and write again.
"""

import time

import pytest
import redis

from tests.redis_topologies import CLUSTER_SLOTS, ClusterSetup, skip_without_cluster_support

# slow: each test starts a cluster of its own (6 redis-server processes, about 3 s)
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path):
    skip_without_cluster_support()
    with ClusterSetup(tmp_path / "cluster") as setup:
        yield setup


def tag_on_other_master(cluster, port, prefix="ch"):
    """A hash-tagged name whose slot is held by a master other than `port`."""
    for i in range(1000):
        name = f"{prefix}{{{i}}}"
        if cluster.master_of(name) != port:
            return name
    raise AssertionError(f"no name found off master {port}")


def retry(action, timeout, what):
    """action()'s value once it stops raising redis errors, within `timeout` s;
    the time it took."""
    start = time.monotonic()
    while True:
        try:
            return action(), time.monotonic() - start
        except redis.RedisError as error:
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"{what}: still failing after {timeout} s: {error!r}"
                ) from error
            time.sleep(0.2)


def test_slots_replicas_keys_and_sharded_pubsub(cluster):
    masters = cluster.masters()
    assert len(masters) == 3
    counts = [sum(last - first + 1 for first, last in ranges) for _, ranges in masters]
    assert sum(counts) == CLUSTER_SLOTS
    assert all(abs(count - CLUSTER_SLOTS / 3) <= 1 for count in counts), counts

    client = cluster.client()
    try:
        assert {node.port for node in client.get_primaries()} == {port for port, _ in masters}
        followers = set()
        for master, _ in masters:
            replicas = cluster.replicas_of(master)
            assert len(replicas) == 1, (master, replicas)
            followers.update(replicas)
            with redis.Redis(
                port=replicas[0], password=cluster.password, decode_responses=True
            ) as replica:
                info = replica.info("replication")
            assert info["role"] == "slave"
            assert info["master_port"] == master
            assert info["master_link_status"] == "up"
        assert {node.port for node in client.get_replicas()} == followers  # as CLUSTER SLOTS says

        keys = [f"{{{tag}}}:key" for tag in "abcdefgh"]
        for key in keys:
            client.set(key, f"value of {key}")
        holders = {key: cluster.master_of(key) for key in keys}
        assert len(set(holders.values())) >= 2, holders
        for key, port in holders.items():
            assert client.get(key) == f"value of {key}"
            with redis.Redis(port=port, password=cluster.password, decode_responses=True) as holder:
                assert holder.exists(key) == 1, (key, port)  # really there

        first = "ch{a}"
        second = tag_on_other_master(cluster, cluster.master_of(first))
        pubsub = client.pubsub()
        try:
            pubsub.ssubscribe(first, second)
            received = {}
            deadline = time.monotonic() + 10
            published = False
            while len(received) < 2 and time.monotonic() < deadline:
                message = pubsub.get_sharded_message(timeout=0.5)
                if message and message["type"] == "ssubscribe":
                    received.setdefault("subscribed", set()).add(message["channel"])
                if not published and received.get("subscribed") == {first, second}:
                    received.clear()
                    assert client.spublish(first, "to first") == 1
                    assert client.spublish(second, "to second") == 1
                    published = True
                if message and message["type"] == "smessage":
                    received[message["channel"]] = message["data"]
            assert received == {first: "to first", second: "to second"}
        finally:
            pubsub.close()
    finally:
        client.close()


def test_fail_over_keeps_the_data_and_clients_write_again(cluster):
    key = "{x}:written-before"
    old_master = cluster.master_of(key)
    old = cluster.client()
    try:
        with redis.Redis(
            port=old_master, password=cluster.password, decode_responses=True
        ) as master:
            master.set(key, "before")
            assert master.wait(1, 1000) == 1  # the replica has it
        assert old.get(key) == "before"  # `old` knows the slot map of before

        new_master = cluster.fail_over(old_master)
        assert new_master != old_master
        assert cluster.master_of(key) == new_master
        assert old_master not in [port for port, _ in cluster.masters()]

        new = cluster.client()
        try:
            assert new.get(key) == "before"
            _, took = retry(lambda: new.set("{x}:new", "1"), 10, "a new client's write")
            assert took < 10
        finally:
            new.close()

        value, _ = retry(lambda: old.get(key), 10, "the old client's read")
        assert value == "before"
        _, took = retry(lambda: old.set("{x}:after", "written"), 10, "the old client's write")
        assert took < 10
        assert old.get_node_from_key(key).port == new_master  # its slot map is the new one
        with redis.Redis(
            port=new_master, password=cluster.password, decode_responses=True
        ) as master:
            assert master.get("{x}:after") == "written"
    finally:
        old.close()
