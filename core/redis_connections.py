"""Where Redis is, and the clients each part of a worker uses: in one place.

Redis is named either by REDIS_URL (one server) or by REDIS_SENTINELS and
REDIS_SENTINEL_SERVICE (the Sentinels that know which server is the master
now). With Sentinel, every connection asks them for the master's address
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

from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from core.config import redis_location


class _SentinelBlockingPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (connections to whichever server is the master) with
    the blocking pool's bound: when every connection is busy, a caller waits
    for one instead of opening another."""


class RedisConnections:
    """Makes the clients of one process, for one Redis deployment."""

    def __init__(
        self,
        url: str | None = None,
        sentinels: Iterable[tuple[str, int]] | None = None,
        service: str = "mymaster",
        username: str | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: bool = False,
        tls_ca_file: str | None = None,
    ) -> None:
        if bool(url) == bool(sentinels):
            raise ValueError("give either a Redis URL or Sentinel addresses")
        self.url = url
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
        `timeout` seconds for a free one."""
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

    def client(self, **pool_options: Any) -> redis.Redis:
        """The pooled client a worker's requests share (str replies)."""
        return redis.Redis(connection_pool=self.pool(decode_responses=True, **pool_options))

    def listener_client(self, name: str) -> redis.Redis:
        """A client for one long-lived pub/sub connection, named `name` in
        CLIENT LIST. No retries inside redis-py: a silent reconnect would
        skip the hub's catch-up; the hub reconnects itself."""
        options = {
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
            "socket_connect_timeout": 2,
            "socket_keepalive": True,
            "client_name": name,
        }
        if self._sentinel is None:
            assert self.url is not None  # (__init__: a URL when no Sentinels)
            return redis.Redis.from_url(self.url, **options)
        return self._sentinel.master_for(self.service, **self._server_options, **options)
