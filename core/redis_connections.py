"""Where Redis is, and the clients each part of a worker uses: in one place.

Redis is named either by REDIS_URL (one server, or with REDIS_CLUSTER any
node of a Redis Cluster) or by REDIS_SENTINELS and REDIS_SENTINEL_SERVICE
(the Sentinels that know which server is the master now). A cluster client
(redis-py's RedisCluster) reads the slot map from the node it is given,
sends each command to the master of its key's slot, and reads the map again
when a slot has moved (MOVED) or a master has failed; the hub listens to
each master itself (core/sharded_pubsub.py). With Sentinel, every connection asks them for the master's address
when it connects, and a connection that finds its server demoted (READONLY)
is dropped and made again to the new master, so after a failover the pools,
the hub's listener, the rate limiter and the sessions follow by themselves
(redis-py's SentinelManagedConnection). While there is no master, commands
fail with a ConnectionError (a 503, core/errors.py).

The gunicorn master uses it too, for its own reports (core/monitor.py). The
workers fork from the master after it imported redis-py, so they keep the
names redis-py bound at import unpatched by gevent: among them redis.retry's
`sleep`. Hence no client made here retries with a backoff (redis-py sleeps
only between such retries): a blocking sleep would stall a whole worker.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from limits.storage import RedisClusterStorage, RedisStorage, Storage
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from core.config import redis_location
from core.sharded_pubsub import ShardedPubSub


class _SentinelBlockingPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (connections to whichever server is the master) with
    the blocking pool's bound: when every connection is busy, a caller waits
    for one instead of opening another."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# How long a new cluster client waits for a cluster none of whose nodes answers
# (a failover takes a few seconds; gunicorn's worker timeout is 30 s).
CLUSTER_WAIT = 15.0


class ClusterNotReady(RuntimeError):
    """REDIS_CLUSTER names no cluster that can serve every slot (one line)."""


class _NodePool(redis.BlockingConnectionPool):
    """A cluster node's pool: bounded, and a caller waits up to 5 s for a free
    connection. (A fixed wait: RedisCluster passes its options to each
    node's Redis too, which takes no `timeout`.)"""

    def __init__(self, **options: Any) -> None:
        super().__init__(timeout=5, **options)


def _cluster_options(max_connections: int) -> dict[str, Any]:
    """A RedisCluster's options, ours and the rate limiter's alike: a bounded
    pool per node, commands retried at once after a slot moved or a master
    failed over (no backoff sleep, see above), the usual socket timeouts."""
    return {
        "connection_pool_class": _NodePool,
        "max_connections": max_connections,
        "retry": Retry(NoBackoff(), 3),
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }


class RedisConnections:
    """Makes the clients of one process, for one Redis deployment."""

    def __init__(
        self,
        url: str | None = None,
        sentinels: Iterable[tuple[str, int]] | None = None,
        cluster: bool = False,
        service: str = "mymaster",
        username: str | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: bool = False,
        tls_ca_file: str | None = None,
    ) -> None:
        if bool(url) == bool(sentinels):
            raise ValueError("give either a Redis URL or Sentinel addresses")
        if cluster and not url:
            raise ValueError("a Redis Cluster is named by the URL of one of its nodes")
        self.url = url
        self.cluster = cluster
        self._cluster_nodes: list[tuple[str, int]] = []  # the cluster's, as last seen
        self.sentinels = list(sentinels or ())
        self.service = service
        # connection options of the data servers (master, replicas)...
        self._server_options: dict[str, Any] = {"username": username, "password": password}
        if tls:
            self._server_options.update(ssl=True, ssl_ca_certs=tls_ca_file)
        # ...and of the Sentinels themselves: no retries (redis-py's default
        # retries a Sentinel that is down for seconds before asking the next)
        sentinel_options: dict[str, Any] = {
            "password": sentinel_password,
            "socket_connect_timeout": 2,
            "socket_timeout": 2,
            "retry": Retry(NoBackoff(), 0),
        }
        if tls:
            sentinel_options.update(ssl=True, ssl_ca_certs=tls_ca_file)
        self._sentinel = (
            Sentinel(self.sentinels, sentinel_kwargs=sentinel_options) if sentinels else None
        )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RedisConnections:
        return cls(**redis_location(settings))

    @classmethod
    def from_url(cls, url: str) -> RedisConnections:
        return cls(url=url)

    def pool(
        self, max_connections: int = 64, timeout: float = 5, **options: Any
    ) -> redis.ConnectionPool:
        """A bounded pool: at most `max_connections`, a caller waits up to
        `timeout` seconds for a free one. (Not on a cluster: a pool is for one
        server; client() pools per node.)"""
        if self.cluster:
            raise ValueError("a Redis Cluster has a pool per node: use client()")
        options = {
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            "health_check_interval": 30,
            **options,
        }
        if self._sentinel is None:
            assert self.url is not None  # (__init__: a URL when no Sentinels)
            return redis.BlockingConnectionPool.from_url(
                self.url, max_connections=max_connections, timeout=timeout, **options
            )
        return _SentinelBlockingPool(
            self.service,
            self._sentinel,
            max_connections=max_connections,
            timeout=timeout,
            is_master=True,
            **self._server_options,
            **options,
        )

    def client(self, **pool_options: Any) -> redis.Redis | RedisCluster:
        """The pooled client a worker's requests share (str replies)."""
        if self.cluster:
            return self.cluster_client(**pool_options)
        return redis.Redis(connection_pool=self.pool(decode_responses=True, **pool_options))

    def cluster_client(
        self, max_connections: int = 64, timeout: float = 5, **options: Any
    ) -> RedisCluster:
        """A Redis Cluster client with a bounded pool per node (a caller waits
        up to 5 s for a free connection: `timeout` is for one server's pool),
        retrying a command at once (no backoff sleep, see above) after a slot
        moved or a master failed over, with the slot map read again."""
        assert self.url is not None  # (__init__: a cluster is named by a URL)
        options = {"decode_responses": True, **_cluster_options(max_connections), **options}
        # Made when a worker starts, and redis-py's cluster client reads the slot
        # map at once: a worker restarted during a failover would fail to boot,
        # and gunicorn stops the whole server when one does. So it waits for
        # the cluster a while (gevent's sleep, in a worker) before giving up.
        deadline = time.monotonic() + CLUSTER_WAIT
        while True:
            try:
                return RedisCluster.from_url(self.url, **options)
            except RedisClusterException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def check_cluster(self) -> None:
        """At start-up, with REDIS_CLUSTER: raise ClusterNotReady with one line
        unless REDIS_URL's node is a cluster node that answers and every slot
        has a master (each worker's cluster client would otherwise fail to
        start, with a traceback each)."""
        assert self.url is not None
        where = urllib.parse.urlsplit(self.url)
        name = f"{where.hostname}:{where.port or 6379}"
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=5) as node:
                info = node.execute_command("CLUSTER INFO")
        except redis.ResponseError as exc:
            raise ClusterNotReady(f"{name} is not a Redis Cluster node ({exc})") from None
        except (redis.RedisError, OSError) as exc:
            raise ClusterNotReady(f"cannot reach {name} ({exc})") from None
        fields = {_text(k): _text(v) for k, v in info.items()}  # (redis-py parses it)
        if fields.get("cluster_state") != "ok":
            raise ClusterNotReady(
                f"the cluster at {name} is not serving (cluster_state:"
                f"{fields.get('cluster_state')}, {fields.get('cluster_slots_ok', '?')} of "
                "16384 slots served): every slot needs a master that is up"
            )

    def rate_limit_storage(self, key_prefix: str, max_connections: int) -> Storage:
        """The `limits` library's storage for the rate limiter's counters: on
        a pool of its own (one server, or Sentinel's master: the URI only
        picks the storage kind), or on a cluster client of its own."""
        if not self.cluster:
            pool = self.pool(max_connections=max_connections)
            return RedisStorage("redis://", connection_pool=pool, key_prefix=key_prefix)
        assert self.url is not None
        parts = urllib.parse.urlsplit(self.url)
        return RedisClusterStorage(
            f"redis+cluster://{parts.netloc}",
            key_prefix=key_prefix,
            ssl=parts.scheme == "rediss",
            **_cluster_options(max_connections),
        )

    def listener(self, name: str, is_sharded: Callable[[str], bool], ping_timeout: float) -> Any:
        """The hub's listening connection: a PubSub of listener_client(name),
        or on a cluster a ShardedPubSub (one connection per master), on
        which the channels that `is_sharded` are SSUBSCRIBEd."""
        if not self.cluster:
            return self.listener_client(name).pubsub()
        assert self.url is not None
        pubsub = ShardedPubSub(
            self.url, self._cluster_nodes, is_sharded, ping_timeout, **self._listener_options(name)
        )
        self._cluster_nodes = pubsub.nodes  # asked next time when REDIS_URL's node is down
        return pubsub

    @staticmethod
    def _listener_options(name: str) -> dict[str, Any]:
        return {
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
            "socket_connect_timeout": 2,
            "socket_keepalive": True,
            "client_name": name,
        }

    def listener_client(self, name: str) -> redis.Redis:
        """A client for one long-lived pub/sub connection, named `name` in
        CLIENT LIST. No retries inside redis-py: a silent reconnect would
        skip the hub's catch-up; the hub reconnects itself."""
        options = self._listener_options(name)
        if self._sentinel is None:
            assert self.url is not None  # (__init__: a URL when no Sentinels)
            return redis.Redis.from_url(self.url, **options)
        return self._sentinel.master_for(self.service, **self._server_options, **options)
