"""Slow consumers: do clients that stop reading delay everyone else?

    .venv/bin/python bench/slow_consumers.py [--clients 100] [--stalled 20] [--broadcasts 100]

Per transport (SSE, WebSocket, long-poll), 2 gevent workers serve `--clients`
healthy subscribers (bench/fanout.py's load generator) while a burst of
`--broadcasts` messages of 60 KB goes out, 0.05 s apart (6 MB: more than a
socket's send buffer takes), once alone and once
with `--stalled` more subscribers that connected and then never read again
(a 4 KB receive window). Reports the healthy subscribers' delivery p50/p99
in both runs, how many stalled ones were cut off, and loss. The subscriber
queue is SUBSCRIBER_QUEUE_SIZE=20 here, so the burst reaches each stalled
client's bound, and LONGPOLL_WRITE_SECONDS=2 gives a stalled long-poll the
same 2 s as a dropped stream. Writes docs/bench-slow-consumers.md.
"""

import argparse
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import CHANNEL, ORIGIN, PATHS, marker_text, run_level

PAYLOAD = "x" * 60_000
QUEUE_SIZE = 20
WRITE_SECONDS = 2


def stall(port, transport, count):
    """`count` subscribers that send their request and then never read."""
    requests = {
        "sse": f"GET {PATHS['sse']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n",
        "ws": f"GET {PATHS['ws']} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n",
        # A long-poll that never reads its answer (the next 60 KB message).
        "longpoll": f"GET {PATHS['longpoll']} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    }
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(requests[transport].encode())
        socks.append(sock)
    return socks


def cut_off(socks):
    """How many stalled connections the server has closed (reset or EOF)."""
    closed = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        sock.close()
    return closed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--stalled", type=int, default=20)
    parser.add_argument("--broadcasts", type=int, default=100)
    args = parser.parse_args()

    import redis

    from bench.common import gunicorn_server, machine, redis_server
    from core.hub import Hub

    rows = []
    with redis_server() as rs:
        client = redis.Redis.from_url(rs.url, decode_responses=True)
        for n, (transport, stalled) in enumerate(
            (t, s) for t in ("sse", "ws", "longpoll") for s in (0, args.stalled)
        ):
            prefix = f"slow{n}:"
            hub = Hub(client, rs.url, prefix=prefix)
            hub.publish(CHANNEL, "primer")
            with gunicorn_server(
                rs.url,
                REDIS_PREFIX=prefix,
                ALLOWED_ORIGINS=ORIGIN,
                SUBSCRIBER_QUEUE_SIZE=QUEUE_SIZE,
                LONGPOLL_WRITE_SECONDS=WRITE_SECONDS,
            ) as (url, pid, _env):
                port = int(url.rsplit(":", 1)[1])
                socks = stall(port, transport, stalled)
                time.sleep(1)
                row = run_level(
                    port,
                    pid,
                    lambda k, hub=hub: hub.publish(CHANNEL, marker_text(k) + PAYLOAD),
                    {transport: args.clients},
                    args.broadcasts,
                    PATHS["sse"],
                    gap=0.05,
                    settle=5.0 if transport == "longpoll" else 2.0,
                )
                # Past the 2 s after which a dropped or stuck socket is shut; a
                # long-poll answer that fit in the socket buffers is closed
                # by gunicorn's KEEPALIVE (15 s) instead.
                time.sleep(16 if transport == "longpoll" else 3)
                row.update(transport=transport, stalled=stalled, cut_off=cut_off(socks))
            rows.append(row)
            print(row, flush=True)

    lines = [
        "| transport | healthy clients | stalled clients | stalled ones cut off "
        "| healthy delivery p50 (ms) | healthy delivery p99 (ms) | lost |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        lines.append(
            f"| {r['transport']} | {r['held']:,} | {r['stalled']} | {r['cut_off']} "
            f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['lost']} |"
        )
    table = "\n".join(lines)
    print(table)
    (ROOT / "docs" / "bench-slow-consumers.md").write_text(f"""# Slow consumers

Measured {time.strftime("%Y-%m-%d")} on {machine()}; 2 gevent workers, the load
generator and the stalled clients on the same machine. Command:

    .venv/bin/python bench/slow_consumers.py --clients {args.clients} --stalled {args.stalled} --broadcasts {args.broadcasts}

{table}

- Each run: {args.broadcasts} messages of 60 KB, 0.05 s apart, with
  SUBSCRIBER_QUEUE_SIZE={QUEUE_SIZE}. *Stalled* clients connected and then
  never read (4 KB receive window).
- A stalled SSE or WebSocket client is dropped once {QUEUE_SIZE} messages wait
  for it, and its socket is shut 2 s later; its writes never hold up the
  others, because each subscriber has its own greenlet and queue, and the
  listener's direct writes never block.
- A stalled long-poll is cut off when its answer is not wholly written
  {WRITE_SECONDS} s after it started (LONGPOLL_WRITE_SECONDS={WRITE_SECONDS}; 10 by
  default); until then it holds only that one answer and its greenlet. An
  answer that fits in the socket buffers (here one 60 KB message) frees the
  greenlet at once, and gunicorn's KEEPALIVE (15 s) closes the idle
  connection: the bench waits 16 s before counting long-polls cut off.
- Compare the healthy p99 with and without stalled clients on each transport,
  within this run: the machine is shared and noisy.
""")
    return 0 if all(r["lost"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
