"""Load test of every transport and demo, one Locust user class per scenario.

    make load HOST=http://127.0.0.1:8000      # 60 s headless against a running server

`make load` starts nothing: run the server first (`make run`, or any
deployment). The README's "Load testing (Locust)" section shows a run and how
to read it. Settings, from the environment:

    LOAD_CHANNEL         channel the subscribers read and the publisher feeds (chat.bench)
    LOAD_USERNAME        user for the publisher and the login flows (jack; may publish chat.*)
    LOAD_PASSWORD        its password (beanstalk)
    LOAD_ADMIN_USERNAME  administrator for the mouse-tracking dashboard (admin)
    LOAD_ADMIN_PASSWORD  its password (default DEMO_ADMIN_PASSWORD); unset: no dashboard user
    LOAD_PUBLISH_RATE    messages per second from each publisher (5)
    LOAD_HOLD_SECONDS    how long a subscriber holds a stream before it leaves and
                         resumes from its last id, as "MIN-MAX" seconds (20-40)

and `--max-fail-ratio` (LOCUST_MAX_FAIL_RATIO, default 0.01): the run exits 1
when a larger share of all requests failed.

The channel users are built on the project's Python client (realtime_client:
`publish`, `login`, `subscribe`), and report through `events.request`, so they
land in Locust's statistics beside the HTTP requests:

- request type SSE / WS / LP, name `... delivery`: the publish-to-receipt
  delivery latency, receipt time minus the `sent` stamp the publisher put in
  the message (both the load generator's clock).
- `... resumed`: a message published while the client was away, delivered
  after it subscribed again from its last id; the time is since then.
- `... reset`: a failure, the client's last id was no longer retained.
- The publisher numbers its messages; a subscriber that sees one twice, out of
  order, or misses one after a resume records a failure.

Where things live (all in loadtests/; this file is only the entry point that
Locust loads, and it imports every user class so that Locust finds them):

    _common.py    settings, --max-fail-ratio and the exit code, the browser-like
                 HttpUser base, reporting helpers, SequenceCheck
    channels.py  Publisher, and ChannelSubscriber's SSESubscriber,
                 WebSocketSubscriber and LongPollClient
    demos.py     Drawer, MouseVisitor, TrackDashboard, TickerPoller
    qa.py        QAParticipant
    logins.py    LoginVisitor and its SCRAM helpers
"""

# How the modules import each other: as top-level sibling modules (`from _common
# import ...`), never as `loadtests.<module>` nor relatively. Locust imports this
# file as the top-level module `locustfile`, with this directory first on
# sys.path while it does so, whether it was started as `locust` or `python -m
# locust` and from whatever directory; so the siblings always resolve, to these
# files. `loadtests._common` would need the project root on sys.path, and a
# relative import a package; mixing two schemes would import _common.py twice,
# under two names, and register its event listeners twice. (With `-f loadtests/`
# Locust loads every .py file here as a locustfile, but skips `_common.py`.)
# _common registers the event listeners (--max-fail-ratio, exit code) on import.
import _common  # noqa: F401

# The user classes in their definition order in the former single file, the
# order `--list` shows them in.
# isort: off
from channels import Publisher, SSESubscriber, WebSocketSubscriber, LongPollClient
from demos import Drawer, MouseVisitor, TrackDashboard, TickerPoller
from qa import QAParticipant
from logins import LoginVisitor
# isort: on

# Locust runs the User classes it finds in this module's namespace.
__all__ = [
    "Drawer",
    "LoginVisitor",
    "LongPollClient",
    "MouseVisitor",
    "Publisher",
    "QAParticipant",
    "SSESubscriber",
    "TickerPoller",
    "TrackDashboard",
    "WebSocketSubscriber",
]
