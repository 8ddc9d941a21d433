"""Every Redis key and pub/sub channel name the app uses, in one place.

Each name is REDIS_PREFIX, a namespace, then its parts: `rt:stream:news`,
`rt:user:alice`, `rt:qa:answers`. One `Keys` per prefix; the app's is
`core.web.get_keys()`, the hub's `hub.keys`. Light (no redis-py): the gunicorn
master uses it too.

Keys that a script or a transaction touches together share a hash tag, the
part in braces, which alone decides a key's slot on a Redis Cluster (where a
script's keys, and the shard channel it publishes on, must share one slot):
`rt:stream:{news}` and `rt:n:{news}`, an app's state and its channels'
streams under the app's name, `rt:{qa}:answers` and `rt:stream:{qa}:events`.
`renamed()` maps the names of earlier versions to these (core/key_upgrade.py).
"""

import re

_PREFIX_SAFE = re.compile(r"[A-Za-z0-9:_.-]*\Z")


class Keys:
    def __init__(self, prefix: str = "rt:") -> None:
        if not _PREFIX_SAFE.match(prefix):
            raise ValueError(f"REDIS_PREFIX {prefix!r}: use A-Z a-z 0-9 : _ . -")
        self.prefix = prefix
        self.notifications_prefix = f"{prefix}n:"  # + channel (see notifications)

    # -- channels: the log and its notifications (core/stream_log.py, core/hub.py) --

    @staticmethod
    def tagged(channel: str) -> str:
        """`channel` with its hash tag in braces: an app's internal channels
        (`qa:events`, `editor:<doc>`) are tagged with their app, the part before
        the first colon, so the app's scripts can change its state and publish
        in one slot; a public channel (no colon: core.stream_log.PUBLIC_CHANNEL)
        is its own tag, and the channels spread over a cluster's shards."""
        app, colon, rest = channel.partition(":")
        return f"{{{app}}}{colon}{rest}"

    def stream(self, channel: str) -> str:
        """The channel's log: a capped Redis Stream."""
        return f"{self.prefix}stream:{self.tagged(channel)}"

    def notifications(self, channel: str) -> str:
        """The pub/sub channel on which each message of `channel` is announced."""
        return self.notifications_prefix + self.tagged(channel)

    def channel_of_notification(self, name: str) -> str:
        """The channel that notifications(channel) named `name` announces."""
        return name[len(self.notifications_prefix) + 1 :].replace("}", "", 1)

    def hub_control(self, host: str, pid: int) -> str:
        """A worker's own pub/sub channel (its listener's wake-ups)."""
        return f"{self.prefix}hub:{host}:{pid}"

    # -- accounts (core/users.py, core/sessions.py, core/tokens.py, blueprints/auth.py)

    def user(self, name: str) -> str:
        return f"{self.prefix}user:{name}"

    def users(self) -> str:
        """The set of every user name."""
        return f"{self.prefix}users"

    def demo_users_seeded(self) -> str:
        return f"{self.prefix}demo-users-seeded"

    def session(self, sid: str) -> str:
        return f"{self.prefix}session:{sid}"

    def revoked_token(self, jti: str) -> str:
        return f"{self.prefix}revoked-jti:{jti}"

    def challenge(self, nonce: str) -> str:
        """A challenge/response login's nonce, until it is answered."""
        return f"{self.prefix}challenge:{nonce}"

    def rate_limits(self) -> str:
        """The quotas' key prefix (the `limits` library names its keys after it)."""
        return f"{self.prefix}ratelimit"

    # -- processes (core/monitor.py, blueprints/processes.py): in one slot, so that
    # the process page reads every report with one MGET, on a cluster too -------------

    def process(self, host: str, pid: int) -> str:
        """A master's or worker's latest report."""
        return self._app("proc", host, str(pid))

    def process_pattern(self) -> str:
        """SCAN pattern of the reports (and of the two names below)."""
        return self._app("proc", "*")

    def is_process_report(self, name: str) -> bool:
        """Whether a name that process_pattern() matched is a report."""
        return not name.startswith((self._app("proc", "cause", ""), self.process_restarts()))

    def process_cause(self, host: str, pid: int) -> str:
        """Why a worker is about to exit, for the master's restart record."""
        return self._app("proc", "cause", host, str(pid))

    def process_restarts(self) -> str:
        return self._app("proc", "restarts")

    def supervisor_starts(self, host: str, pid: int) -> str:
        """Hash: how many times `make run`'s supervisord (that pid) started each
        of its programs (workers/supervise.py's event listener counts them)."""
        return f"{self.prefix}supervisor:starts:{host}:{pid}"

    # -- the apps (blueprints/): tagged with the app's name, as its channels are --------

    def _app(self, app: str, *parts: str) -> str:
        return f"{self.prefix}{{{app}}}:" + ":".join(parts)

    def qa(self, *parts: str) -> str:
        """Q&A's state; its channel is `qa:events`."""
        return self._app("qa", *parts)

    def qa_board(self) -> list[str]:
        """The Q&A board's keys, which its scripts change together."""
        return [self.qa(name) for name in ("asked", "question-index", "answers", "version")]

    def editor_document(self, doc_id: str) -> list[str]:
        """A document's text and version, its op log, its op ids: changed together
        (and published on channel `editor:<doc_id>`)."""
        base = self._app("editor", "doc", doc_id)
        return [base, f"{base}:log", f"{base}:ids"]

    def editor_documents(self) -> str:
        """The sorted set of live documents (by last use)."""
        return self._app("editor", "docs")

    def drawing(self) -> list[str]:
        """The canvas's segments, their size and version: changed together."""
        return [
            self._app("draw", name) for name in ("segments", "segments-bytes", "segments-version")
        ]

    def track_presence(self) -> str:
        return f"{self.prefix}track:presence"

    def ticker(self, *parts: str) -> str:
        return f"{self.prefix}ticker:" + ":".join(parts)

    def cities(self, suffix: str) -> str:
        """The city data, replaced together when its file changes."""
        return self._app("cities", suffix)

    def cities_country(self, country: str) -> str:
        # A namespace of its own: a country named like another key ("version")
        # must find nothing, not a string where a hash should be.
        return self.cities(f"country:{country}")

    # -- background jobs (blueprints/jobs.py, workers/jobs.py) --------------------------

    def job(self, job_id: str) -> str:
        """A job's state, progress and result: a hash, expiring JOBS_TTL_SECONDS after
        its last change (published on channel job_channel(job_id))."""
        return self._app("jobs", "job", job_id)

    def job_alive(self, job_id: str) -> str:
        """Set with a short TTL by the process running the job, while it runs: gone
        means that process died (workers/jobs.py ALIVE_TTL)."""
        return f"{self.prefix}job:{job_id}:alive"

    def jobs_recent(self) -> str:
        """Sorted set of job ids by creation time (the listing)."""
        return self._app("jobs", "recent")

    def jobs_queue(self) -> str:
        """The RQ queue's name (RQ keeps it as `rq:queue:<name>`)."""
        return f"{self.prefix}jobs"

    # -- the names of earlier versions (core/key_upgrade.py) ------------------------------

    def old_patterns(self) -> list[str]:
        """SCAN patterns that match the keys earlier versions named otherwise."""
        return [
            f"{self.prefix}{name}"
            for name in (
                "stream:*",
                "qa:*",
                "editor:*",
                "draw:*",
                "job:*",
                "jobs",
                "cities:*",
                "proc:*",
            )
        ]

    def renamed(self, old: str) -> str | None:
        """Today's name of the key an earlier version named `old` (before keys had
        hash tags); None for a name of today's, or one that kept its name."""
        if not old.startswith(self.prefix) or "{" in old:
            return None
        rest = old[len(self.prefix) :]
        namespace, _, tail = rest.partition(":")
        if rest == "jobs":
            return self.jobs_recent()
        if not tail:
            return None
        if namespace == "stream":
            return self.stream(tail)
        if namespace in ("qa", "draw", "cities", "proc"):
            return self._app(namespace, tail)
        if namespace == "editor":
            return self.editor_documents() if tail == "docs" else self._app("editor", "doc", tail)
        if namespace == "job" and not tail.endswith(":alive"):
            return self.job(tail)
        return None

    @staticmethod
    def job_channel(job_id: str) -> str:
        """The internal hub channel of a job's progress and result (its stream is
        stream(job_channel(id)))."""
        return f"jobs:{job_id}"
