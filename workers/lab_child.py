"""`python -m workers.lab_child`: the lab's forked child (blueprints/lab.py),
Node's `fork()` with `process.send` / `process.on('message')`.

The channel to the parent is JSON lines: the child writes messages on
stdout, the parent writes on its stdin. The child counts up once a second
and sends each count; it answers a message {"text"} with the text reversed,
and "reset" by starting the count again. When the parent disconnects (closes
stdin) the child sees EOF and exits with 0, as a Node child with nothing
else to do exits on 'disconnect'. SIGTERM (the parent's kill) is left to its
default action, so the parent sees the signal.
"""

import json
import os
import queue
import sys
import threading
import time

TICK = 1.0
EOF = None


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def read_parent(inbox):
    """On a thread: the parent's messages, then EOF (disconnected)."""
    for line in sys.stdin:
        try:
            inbox.put(json.loads(line))
        except ValueError:
            send({"type": "error", "error": "messages are JSON lines"})
    inbox.put(EOF)


def answer(message, count):
    """The reply to one message of the parent, and the count from now on."""
    text = message.get("text") if isinstance(message, dict) else None
    if not isinstance(text, str):
        send({"type": "error", "error": 'messages are {"text": ...}'})
        return count
    if text == "reset":
        send({"type": "reset"})
        return 0
    send({"type": "reply", "text": text[::-1]})
    return count


def main():
    inbox = queue.Queue()
    threading.Thread(target=read_parent, args=(inbox,), daemon=True).start()
    send({"type": "ready", "pid": os.getpid()})
    count, next_tick = 0, time.monotonic() + TICK
    while True:
        try:  # a message does not delay the next count
            message = inbox.get(timeout=max(next_tick - time.monotonic(), 0))
        except queue.Empty:
            count += 1
            send({"type": "count", "count": count})
            next_tick += TICK
            continue
        if message is EOF:
            return 0
        count = answer(message, count)


if __name__ == "__main__":
    sys.exit(main())
