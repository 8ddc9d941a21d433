"""Every Redis key and pub/sub channel name the app uses, in one place.

Each name is REDIS_PREFIX, a namespace, then its parts: `rt:stream:news`,
`rt:user:alice`, `rt:qa:answers`. One `Keys` per prefix; the app's is
`core.web.get_keys()`, the hub's `hub.keys`. Light (no redis-py): the gunicorn
master uses it too.

Keys that a Lua script touches together are named together here (a script's
KEYS must all live in one slot on a Redis Cluster).
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

    def stream(self, channel: str) -> str:
        """The channel's log: a capped Redis Stream."""
        return f"{self.prefix}stream:{channel}"

    def notifications(self, channel: str) -> str:
        """The pub/sub channel on which each message of `channel` is announced."""
        return self.notifications_prefix + channel

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

    # -- processes (core/monitor.py, blueprints/processes.py) ---------------------------

    def process(self, host: str, pid: int) -> str:
        """A master's or worker's latest report."""
        return f"{self.prefix}proc:{host}:{pid}"

    def process_pattern(self) -> str:
        """SCAN pattern of the reports (and of the two names below)."""
        return f"{self.prefix}proc:*"

    def is_process_report(self, name: str) -> bool:
        """Whether a name that process_pattern() matched is a report."""
        return not name.startswith((f"{self.prefix}proc:cause:", self.process_restarts()))

    def process_cause(self, host: str, pid: int) -> str:
        """Why a worker is about to exit, for the master's restart record."""
        return f"{self.prefix}proc:cause:{host}:{pid}"

    def process_restarts(self) -> str:
        return f"{self.prefix}proc:restarts"

    def supervisor_starts(self, host: str, pid: int) -> str:
        """Hash: how many times `make run`'s supervisord (that pid) started each
        of its programs (workers/supervise.py's event listener counts them)."""
        return f"{self.prefix}supervisor:starts:{host}:{pid}"

    # -- the apps (blueprints/) ---------------------------------------------------------

    def qa(self, *parts: str) -> str:
        return f"{self.prefix}qa:" + ":".join(parts)

    def qa_board(self) -> list[str]:
        """The Q&A board's keys, which its scripts change together."""
        return [self.qa(name) for name in ("asked", "question-index", "answers", "version")]

    def editor_document(self, doc_id: str) -> list[str]:
        """A document's text and version, its op log, its op ids: changed together."""
        base = f"{self.prefix}editor:{doc_id}"
        return [base, f"{base}:log", f"{base}:ids"]

    def editor_documents(self) -> str:
        """The sorted set of live documents (by last use)."""
        return f"{self.prefix}editor:docs"

    def drawing(self) -> list[str]:
        """The canvas's segments, their size and version: changed together."""
        base = f"{self.prefix}draw:"
        return [base + "segments", base + "segments-bytes", base + "segments-version"]

    def track_presence(self) -> str:
        return f"{self.prefix}track:presence"

    def ticker(self, *parts: str) -> str:
        return f"{self.prefix}ticker:" + ":".join(parts)

    def cities(self, suffix: str) -> str:
        return f"{self.prefix}cities:{suffix}"

    def cities_country(self, country: str) -> str:
        # A namespace of its own: a country named like another key ("version")
        # must find nothing, not a string where a hash should be.
        return self.cities(f"country:{country}")

    # -- background jobs (blueprints/jobs.py, workers/jobs.py) --------------------------

    def job(self, job_id: str) -> str:
        """A job's state, progress and result: a hash, expiring JOBS_TTL_SECONDS after
        its last change."""
        return f"{self.prefix}job:{job_id}"

    def job_alive(self, job_id: str) -> str:
        """Set with a short TTL by the process running the job, while it runs: gone
        means that process died (workers/jobs.py ALIVE_TTL)."""
        return f"{self.prefix}job:{job_id}:alive"

    def jobs_recent(self) -> str:
        """Sorted set of job ids by creation time (the listing)."""
        return f"{self.prefix}jobs"

    def jobs_queue(self) -> str:
        """The RQ queue's name (RQ keeps it as `rq:queue:<name>`)."""
        return f"{self.prefix}jobs"

    @staticmethod
    def job_channel(job_id: str) -> str:
        """The internal hub channel of a job's progress and result (its stream is
        stream(job_channel(id)))."""
        return f"jobs:{job_id}"
