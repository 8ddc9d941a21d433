"""The hub's listening connection on a Redis Cluster.

It has the methods of redis-py's PubSub that the hub's listener uses
(subscribe, unsubscribe, get_message, ping, close), over one connection to
each master: a channel's notifications are published with SPUBLISH on the
master of their slot (sharded pub/sub: they reach that shard only), so each
is SSUBSCRIBEd on that master. Other channels (the worker's control
channel) use plain SUBSCRIBE on the first master, which hears PUBLISHes made
on any node. One reader per connection (a greenlet under gevent) passes
what it reads to get_message, in the order each connection delivers it.

Any trouble on any connection ends the whole listener, as losing the one
connection of a single Redis does: get_message raises ConnectionError on a
connection error, on an SUNSUBSCRIBE nobody asked for (the master gave the
slot away, or was demoted in a failover), on an SSUBSCRIBE answered by a
node that does not hold the slot (MOVED), or when a master leaves a PING
unanswered. The hub then listens anew, reading the slot map again, and
every local subscriber catches up from the streams: nothing is lost.

redis-py's ClusterPubSub is not used for this: measured against a real
cluster (tests/redis_topologies.py), it polls its connections one after
another with the whole timeout each, re-subscribes by itself after some
failovers and not after others, and either way does not tell its reader
that messages were lost meanwhile.
"""

from __future__ import annotations

import functools
import queue
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from redis.crc import key_slot

from core.offload import spawn

# A reader's wait for its connection's next message: how soon it notices close().
READ_WAIT = 1.0


class ShardedPubSub:
    def __init__(
        self,
        url: str,
        seeds: list[tuple[str, int]],
        is_sharded: Callable[[str], bool],
        ping_timeout: float,
        **options: Any,
    ) -> None:
        """`url`: a node of the cluster, and how to connect to any (scheme,
        credentials); `seeds`: other nodes to ask for the slot map when that
        one does not answer (it may be the master that just died);
        `is_sharded(name)`: whether channel `name` is a shard channel (else
        plain pub/sub); `options`: for each connection (redis.Redis's).
        `nodes`: every node the slot map named, masters and replicas."""
        self._is_sharded = is_sharded
        self._ping_timeout = ping_timeout
        self._inbox: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._closed = False
        self._leaving: Counter[str] = Counter()  # SUNSUBSCRIBEs sent, not yet confirmed
        self._pings: dict[Any, float] = {}  # connection -> when its unanswered PING went
        reply = _slot_map(url, seeds, options)
        self._slots = _masters_by_slot(reply)
        self.nodes = [_address(node) for _first, _last, *nodes in reply for node in nodes]
        self._pubsubs = {
            address: redis.Redis.from_url(_url_of(url, address), **options).pubsub()
            for address in sorted({address for _, _, address in self._slots})
        }
        self._plain = self._pubsubs[self._slots[0][2]]
        self._readers = [spawn(functools.partial(self._read, ps)) for ps in self._pubsubs.values()]

    # -- the hub's side ---------------------------------------------------------------

    def subscribe(self, *names: str) -> None:
        plain = [name for name in names if not self._is_sharded(name)]
        if plain:
            self._plain.subscribe(*plain)
        for pubsub, shard_names in self._by_slot(names):
            pubsub.ssubscribe(*shard_names)

    def unsubscribe(self, *names: str) -> None:
        plain = [name for name in names if not self._is_sharded(name)]
        if plain:
            self._plain.unsubscribe(*plain)
        for pubsub, shard_names in self._by_slot(names):
            self._leaving.update(shard_names)  # (counted: one confirmation each)
            pubsub.sunsubscribe(*shard_names)

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message of any connection (as redis-py's PubSub gives
        it, with `ssubscribe` and `smessage` as `subscribe` and `message`),
        or None after `timeout` seconds; raises on trouble (see above)."""
        self._check_pings()
        try:
            pubsub, item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            self._check_pings()
            return None
        if isinstance(item, BaseException):
            raise redis.ConnectionError(f"Redis Cluster listener: {item}") from item
        kind = item["type"]
        if kind == "pong":
            self._pings.pop(pubsub, None)
        elif kind == "ssubscribe":
            item["type"] = "subscribe"
        elif kind == "smessage":
            item["type"] = "message"
        elif kind == "sunsubscribe":
            if self._leaving[item["channel"]] <= 0:
                raise redis.ConnectionError(
                    f"Redis Cluster: {item['channel']} unsubscribed by the server "
                    "(its slot moved, or its master failed over)"
                )
            self._leaving[item["channel"]] -= 1
            item["type"] = "unsubscribe"
        return item

    def ping(self) -> None:
        """PING every connection: each one must answer within ping_timeout."""
        now = time.monotonic()
        for pubsub in self._pubsubs.values():
            if pubsub.subscribed and pubsub not in self._pings:
                pubsub.ping()
                self._pings[pubsub] = now

    def close(self) -> None:
        self._closed = True
        for pubsub in self._pubsubs.values():
            pubsub.close()

    # -- inside ---------------------------------------------------------------------

    def _by_slot(self, names: tuple[str, ...]) -> list[tuple[Any, list[str]]]:
        """The shard channels of `names` in groups of one slot each (one
        SSUBSCRIBE names channels of one slot only), with their master's
        connection."""
        grouped: dict[int, list[str]] = {}
        for name in names:
            if self._is_sharded(name):
                grouped.setdefault(key_slot(name.encode()), []).append(name)
        return [(self._pubsubs[self._master_of(slot)], group) for slot, group in grouped.items()]

    def _master_of(self, slot: int) -> tuple[str, int]:
        for first, last, address in self._slots:
            if first <= slot <= last:
                return address
        raise redis.ConnectionError(f"Redis Cluster: no master holds slot {slot}")

    def _check_pings(self) -> None:
        now = time.monotonic()
        if any(now - sent > self._ping_timeout for sent in self._pings.values()):
            raise redis.ConnectionError("Redis Cluster: a master did not answer PING")

    def _read(self, pubsub: Any) -> None:
        """One connection's reader: what it reads goes to get_message, and
        so does the error that ends it."""
        while not self._closed:
            try:
                message = pubsub.get_message(timeout=READ_WAIT)
            except Exception as exc:  # noqa: BLE001 (any: a reader must not die unheard)
                # Closed under a read in progress, redis-py may raise anything
                # (an AttributeError from the parser it just let go of).
                if not self._closed:
                    self._inbox.put((pubsub, exc))
                return
            if message is not None:
                self._inbox.put((pubsub, message))


def _slot_map(url: str, seeds: list[tuple[str, int]], options: dict[str, Any]) -> list[Any]:
    """CLUSTER SLOTS from the first node that answers: `url`'s, then `seeds`."""
    first = urllib.parse.urlsplit(url)
    tried = [(first.hostname or "localhost", first.port or 6379)]
    tried += [seed for seed in seeds if seed not in tried]
    error: Exception | None = None
    for address in tried:
        try:
            with redis.Redis.from_url(_url_of(url, address), **options) as node:
                return list(node.execute_command("CLUSTER SLOTS"))
        except (redis.RedisError, OSError) as exc:
            error = exc
    raise redis.ConnectionError(f"Redis Cluster: no node answered ({error})")


def _address(node: list[Any]) -> tuple[str, int]:
    host = node[0].decode() if isinstance(node[0], bytes) else node[0]
    return host, int(node[1])


def _masters_by_slot(reply: list[Any]) -> list[tuple[int, int, tuple[str, int]]]:
    """CLUSTER SLOTS -> [(first slot, last slot, (host, port) of its master)]."""
    ranges = [(int(first), int(last), _address(master)) for first, last, master, *_ in reply]
    if not ranges:
        raise redis.ConnectionError("Redis Cluster: CLUSTER SLOTS lists no master")
    return sorted(ranges)


def _url_of(url: str, address: tuple[str, int]) -> str:
    """`url` (its scheme, credentials and options) pointed at `address`."""
    parts = urllib.parse.urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    netloc = f"{credentials}@{host}:{address[1]}" if credentials else f"{host}:{address[1]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
