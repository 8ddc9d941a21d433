"""Publish every line of standard input to a channel (chapter 5's stdin broadcaster).

    .venv/bin/python -m workers.broadcast [--channel broadcast]
    .venv/bin/python -m workers.broadcast --url https://example.org --token ...  # over HTTP

Open /longpoll/ in a few browsers, type lines here, watch them appear.
Uses REDIS_URL (or REDIS_SENTINELS), or in dev the embedded Redis that `make run` started.
"""

import argparse
import os
import sys

import redis

from core.config import ConfigError, load_settings
from core.hub import Hub
from core.redis_connections import RedisConnections
from core.stream_log import CHANNEL_RULE, PUBLIC_CHANNEL, NotReplicated
from realtime_client import ClientError, publish


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channel", default="broadcast", help="channel to publish to")
    parser.add_argument(
        "--url",
        help="publish over HTTP to this server (POST /pub) instead of "
        "writing to Redis; needs --token or REALTIME_TOKEN",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("REALTIME_TOKEN"),
        help="bearer token for --url (default: $REALTIME_TOKEN)",
    )
    args = parser.parse_args(argv)
    if not PUBLIC_CHANNEL.match(args.channel):
        parser.error(f"invalid channel name: {CHANNEL_RULE}")
    if args.url:
        if not args.token:
            parser.error(
                "--url needs a token: --token, or REALTIME_TOKEN (POST /auth/token gives one)"
            )
        send = _over_http(args.url, args.channel, args.token)
    else:
        send = _into_redis(parser, args.channel)
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            f"Publishing each line to channel {args.channel!r} (Ctrl-D to stop).", file=sys.stderr
        )
    try:
        for line in sys.stdin:
            text = line.rstrip("\r\n")
            if text:
                send(text, interactive)
    except redis.RedisError as exc:
        parser.exit(1, f"Redis error: {exc}\n")
    except ClientError as exc:
        parser.exit(1, f"the server refused: {exc}\n")
    except OSError as exc:
        parser.exit(1, f"cannot reach {args.url or 'Redis'}: {exc}\n")
    except KeyboardInterrupt:
        pass
    return 0


def _into_redis(parser, channel):
    try:
        settings = load_settings()
    except ConfigError as exc:
        parser.exit(2, f"configuration error: {exc}\n")
    if not settings["REDIS_URL"] and not settings["REDIS_SENTINELS"]:
        parser.exit(
            2,
            "no Redis: start the server with `make run` first, set REDIS_URL "
            "(or REDIS_SENTINELS), or publish with --url\n",
        )
    connections = RedisConnections.from_settings(settings)
    hub = Hub(
        connections.client(max_connections=2),
        connections,
        prefix=settings["REDIS_PREFIX"],
        maxlen=settings["STREAM_MAXLEN"],
        ttl_seconds=settings["STREAM_TTL_SECONDS"],
        min_replicas=settings["PUBLISH_MIN_REPLICAS"],
        replica_timeout_ms=settings["PUBLISH_REPLICA_TIMEOUT_MS"],
    )

    def send(text, interactive):
        try:
            msg_id = hub.publish_replicated(channel, text)
        except NotReplicated as exc:  # sent; a failover now could lose it
            print(f"  sent {exc.id}, but {exc}", file=sys.stderr)
            return
        if interactive:
            print(f"  sent {msg_id}", file=sys.stderr)

    return send


def _over_http(url, channel, token):
    def send(text, interactive):
        try:
            msg_id = publish(url, channel, text, token=token)
        except ClientError as exc:
            if exc.status in (401, 403):
                raise  # every later line would be refused too
            print(f"  not sent: {exc}", file=sys.stderr)
            return
        if interactive:
            print(f"  sent {msg_id}", file=sys.stderr)

    return send


if __name__ == "__main__":
    sys.exit(main())
