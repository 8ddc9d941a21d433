"""Publish every line of standard input to a channel (chapter 5's stdin broadcaster).

    .venv/bin/python -m workers.broadcast [--channel broadcast]

Open /longpoll/ in a few browsers, type lines here, watch them appear.
Uses REDIS_URL (or REDIS_SENTINELS), or in dev the embedded Redis that `make run` started.
"""

import argparse
import sys

import redis

from core.config import ConfigError, load_settings
from core.hub import Hub
from core.redis_connections import RedisConnections
from core.stream_log import CHANNEL_RULE, PUBLIC_CHANNEL, NotReplicated


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channel", default="broadcast", help="channel to publish to")
    args = parser.parse_args(argv)
    if not PUBLIC_CHANNEL.match(args.channel):
        parser.error(f"invalid channel name: {CHANNEL_RULE}")
    try:
        settings = load_settings()
    except ConfigError as exc:
        parser.exit(2, f"configuration error: {exc}\n")
    if not settings["REDIS_URL"] and not settings["REDIS_SENTINELS"]:
        parser.exit(2, "no Redis: start the server with `make run` first, or set REDIS_URL "
                    "(or REDIS_SENTINELS)\n")
    connections = RedisConnections.from_settings(settings)
    hub = Hub(connections.client(max_connections=2), connections,
              prefix=settings["REDIS_PREFIX"], maxlen=settings["STREAM_MAXLEN"],
              ttl_seconds=settings["STREAM_TTL_SECONDS"],
              min_replicas=settings["PUBLISH_MIN_REPLICAS"],
              replica_timeout_ms=settings["PUBLISH_REPLICA_TIMEOUT_MS"])
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Publishing each line to channel {args.channel!r} (Ctrl-D to stop).",
              file=sys.stderr)
    try:
        for line in sys.stdin:
            text = line.rstrip("\r\n")
            if not text:
                continue
            try:
                msg_id = hub.publish_replicated(args.channel, text)
            except NotReplicated as exc:  # sent; a failover now could lose it
                print(f"  sent {exc.id}, but {exc}", file=sys.stderr)
                continue
            if interactive:
                print(f"  sent {msg_id}", file=sys.stderr)
    except redis.RedisError as exc:
        parser.exit(1, f"Redis error: {exc}\n")
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
