"""Log analyses as background jobs on RQ, in child processes (chapter 7, issue 16).

blueprints/jobs.py enqueues `analyse(job_id, path, procs, options)` on the RQ
queue `<REDIS_PREFIX>jobs`. An RQ worker (workers/job_workers.py) forks a
work-horse per job, which runs it:

    RQ worker ── fork ──> work-horse: analyse() ── fork ──> N children, one byte
                          (the job's parent)                 range each (workers/logproc.py)

Each child counts its line-aligned range with logproc's `count_stream` and
reports over its own pipe, as Node's `process.send`: ("progress", bytes) per
block read, then ("result", counts). The parent adds them up, publishes
progress (at most PUBLISH_EVERY) and then the result on the job's hub channel
`jobs:<id>` (the same publish script as every channel: resumable with
Last-Event-ID), and keeps state, progress and result in the job's hash
(core/keys.py `job`); every key expires JOBS_TTL_SECONDS after its last change.

Who notices what:
- cancel: DELETE sets the hash's `cancel`; the parent looks every CANCEL_POLL,
  SIGTERMs its children, SIGKILLs those left after JOBS_CANCEL_GRACE_SECONDS, and
  records "cancelled" with what it killed. A queued job is cancelled through RQ.
- a child dying: its pipe ends without a result: the job fails, saying which
  child and how it exited.
- the work-horse dying: its children die with it (PR_SET_PDEATHSIG), the RQ worker
  records the failure (RQ's FAILED status and exc_string), and the heartbeat key
  expires; `JobStore.refresh` (every read) turns "running" into "failed" with RQ's
  reason, or "its process stopped reporting".
- the RQ worker dying: the horse dies with it (PR_SET_PDEATHSIG again: nothing
  would supervise it any more), then as above, within ALIVE_TTL of the death.
- an exception or RQ's timeout in the parent: children stopped, "failed" with the
  reason, re-raised for RQ's own records. RQ's on_failure callback (`on_failure`)
  covers what RQ finds abandoned in its registries.
Every transition is one Lua script (lua/job_update.lua) that changes the hash only
from the states it expects, and publishes the event in the same step: a late
report from a job already failed or cancelled changes nothing.
"""

import gzip
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from contextlib import suppress

from core.keys import Keys
from core.parent_death import die_with_parent
from workers import logproc

TERMINAL = ("done", "failed", "cancelled")
STATES = ("queued", "running", *TERMINAL)
HEARTBEAT_EVERY = 1.0  # seconds between the parent's heartbeats...
ALIVE_TTL = 4  # ...and how long one lasts: no heartbeat this long means it died
PUBLISH_EVERY = 0.1  # at most 10 progress events a second
CANCEL_POLL = 0.2  # how often the parent looks for a cancel request
STARTING_TIMEOUT = 15  # an RQ job started this long ago whose function never began: failed
CHUNK = 1 << 20  # bytes a child reads (and reports) at a time
TOP = 10


# -- the state in Redis: both sides ------------------------------------------------------


class JobStore:
    """A job's hash, heartbeat and channel. `redis_client` decodes replies (str);
    `scripts` are the hub's (core/scripts.py: job_update)."""

    def __init__(self, redis_client, scripts, prefix, ttl_seconds):
        self.redis_client = redis_client
        self.keys = Keys(prefix)
        self.ttl = int(ttl_seconds)
        self._update = scripts["job_update"]

    def create(self, job_id, **fields):
        now = time.time()
        recent = self.keys.jobs_recent()
        pipe = self.redis_client.pipeline(transaction=True)
        pipe.hset(
            self.keys.job(job_id),
            mapping={"id": job_id, "state": "queued", "progress": 0, "created": now, **fields},
        )
        pipe.expire(self.keys.job(job_id), self.ttl)
        pipe.zadd(recent, {job_id: now})
        pipe.zremrangebyscore(recent, "-inf", now - self.ttl)  # their hashes are gone too
        pipe.expire(recent, self.ttl)
        pipe.execute()

    def update(self, job_id, event=None, from_states=(), **fields):
        """Set `fields` and publish `event` (a dict), only while the job's state is one of
        `from_states` (any, when empty). True when it changed."""
        args = [
            self.keys.notifications(Keys.job_channel(job_id)),
            self.ttl,
            ",".join(from_states),
            json.dumps(event, separators=(",", ":")) if event else "",
        ]
        for name, value in fields.items():
            args += [name, value if isinstance(value, str) else json.dumps(value)]
        return bool(
            self._update(
                keys=[self.keys.job(job_id), self.keys.stream(Keys.job_channel(job_id))], args=args
            )
        )

    def raw(self, job_id):
        return self.redis_client.hgetall(self.keys.job(job_id))

    def heartbeat(self, job_id):
        self.redis_client.set(self.keys.job_alive(job_id), os.getpid(), ex=ALIVE_TTL)

    def stop_heartbeat(self, job_id):
        self.redis_client.delete(self.keys.job_alive(job_id))

    def recent(self, count=50):
        return self.redis_client.zrevrange(self.keys.jobs_recent(), 0, count - 1)

    def fail(self, job_id, reason, from_states=("queued", "running")):
        return self._end(job_id, "failed", reason, from_states)

    def cancelled(self, job_id, reason, from_states=("queued", "running")):
        return self._end(job_id, "cancelled", reason, from_states)

    def _end(self, job_id, state, reason, from_states):
        return self.update(
            job_id,
            {"type": state, "state": state, "reason": reason},
            from_states,
            state=state,
            reason=reason,
            ended=time.time(),
        )

    def refresh(self, job_id, rq_connection):
        """The job as `status()` shows it, after making sure that a job whose process
        died says so: "failed" with the reason (see the module's docstring)."""
        raw = self.raw(job_id)
        if not raw:
            return None
        state = raw.get("state")
        if state == "running" and not self.redis_client.exists(self.keys.job_alive(job_id)):
            why = _rq_failure(job_id, rq_connection)
            self.fail(
                job_id,
                f"the job's process died: {why}"
                if why
                else f"the job's process stopped reporting (no heartbeat for {ALIVE_TTL} s): "
                "its work-horse or its RQ worker died",
                ("running",),
            )
            raw = self.raw(job_id)
        elif state == "queued":
            verdict = _queued_verdict(job_id, rq_connection)
            if verdict is not None:
                kind, reason = verdict
                (self.cancelled if kind == "cancelled" else self.fail)(job_id, reason, ("queued",))
                raw = self.raw(job_id)
        return status(raw)


def status(raw):
    """The public form of a job's hash: {id, state, progress, ...; result when done}."""
    if not raw:
        return None
    out = {"id": raw["id"], "state": raw["state"], "progress": float(raw.get("progress", 0))}
    for name in ("file", "source", "reason", "by", "cancel", "worker"):
        if raw.get(name):
            out[name] = raw[name]
    for name in ("procs", "size", "horse"):
        if raw.get(name):
            out[name] = int(raw[name])
    for name in ("created", "started", "ended"):
        if raw.get(name):
            out[name] = float(raw[name])
    for name in ("pids", "result", "children"):
        if raw.get(name):
            out[name] = json.loads(raw[name])
    return out


def _rq_failure(job_id, connection):
    """RQ's reason when it recorded the job as failed (its work-horse died), else None."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    try:
        job = Job.fetch(job_id, connection=connection)
        if job.get_status() not in (JobStatus.FAILED, JobStatus.STOPPED):
            return None
        result = job.latest_result()
    except NoSuchJobError:
        return None
    text = (getattr(result, "exc_string", None) or "").strip()
    return text.splitlines()[-1] if text else "RQ recorded the job as failed"


def _queued_verdict(job_id, connection):
    """For a job we think queued: ("failed"|"cancelled", reason) when RQ knows it is not."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.worker import Worker

    try:
        job = Job.fetch(job_id, connection=connection)
        rq_status = job.get_status()
    except NoSuchJobError:
        return "failed", "the job is gone from RQ's queue (Redis lost it, or it expired)"
    if rq_status == JobStatus.FAILED:
        return "failed", f"failed before it started: {_rq_failure(job_id, connection)}"
    if rq_status in (JobStatus.CANCELED, JobStatus.STOPPED):
        return "cancelled", "cancelled before it started"
    if rq_status == JobStatus.STARTED:
        started = job.started_at.timestamp() if job.started_at else time.time()
        # RQ marks a job started a moment before it records which worker took
        # it: without a name yet, only the timeout below can tell it died.
        if job.worker_name and (
            Worker.find_by_key(
                Worker.redis_worker_namespace_prefix + job.worker_name, connection=connection
            )
            is None
        ):
            return "failed", f"its RQ worker {job.worker_name} died as it took the job"
        if time.time() - started > STARTING_TIMEOUT:
            return "failed", f"RQ started it {STARTING_TIMEOUT} s ago, but it never began"
    return None


# -- the job: in RQ's work-horse -----------------------------------------------------------


def _store(options):
    """The work-horse's own clients, from its environment (the app's settings)."""
    from core.config import load_settings
    from core.redis_connections import RedisConnections
    from core.stream_log import StreamLog

    settings = load_settings()
    client = RedisConnections.from_settings(settings).client(max_connections=4, timeout=5)
    # the job's channel is kept no longer than the job: ttl_seconds is the job's TTL
    log = StreamLog(
        client,
        options["prefix"],
        maxlen=options["stream_maxlen"],
        ttl_seconds=min(options["ttl"], options["stream_ttl"]),
    )
    return JobStore(client, log.scripts, options["prefix"], options["ttl"])


def analyse(job_id, path, procs, options):
    """The job (RQ calls it in the work-horse). `options`: prefix, ttl, stream_maxlen,
    stream_ttl, grace, read_rate (bytes/s per child or None), upload (delete `path` after)."""
    die_with_parent(signal.SIGKILL, os.getppid())  # a killed RQ worker takes its job with it
    store = _store(options)
    try:
        return _Run(store, job_id, path, procs, options).run()
    finally:
        store.stop_heartbeat(job_id)
        if options.get("upload"):
            with suppress(OSError):
                os.unlink(path)


def on_failure(job, connection, exc_type, exc_value, tb):
    """RQ's on_failure callback (an exception in the job; or an abandoned job found
    by RQ's registry cleanup, in whichever worker cleans up)."""
    job_id, _path, _procs, options = job.args
    _store(options).fail(job_id, f"{exc_type.__name__}: {exc_value}".rstrip(": "))


class _Run:
    def __init__(self, store, job_id, path, procs, options):
        self.store, self.id, self.path, self.procs = store, job_id, path, procs
        self.options = options
        self.children = []  # (Process, receiving end of its pipe)

    def run(self):
        if self.store.raw(self.id).get("cancel"):
            self.store.cancelled(self.id, "cancelled before it started")
            return {"state": "cancelled"}
        size = os.path.getsize(self.path)
        self.store.heartbeat(self.id)
        if not self.store.update(
            self.id,
            {"type": "state", "state": "running", "size": size},
            ("queued",),
            state="running",
            started=time.time(),
            size=size,
            horse=os.getpid(),
            worker=os.environ.get("RQ_WORKER_ID", ""),
        ):
            return {"state": "not started: no longer queued"}
        try:
            how = self._start_children(size)
            self.store.update(
                self.id,
                {"type": "state", "state": "running", "pids": [p.pid for p, _ in self.children]},
                ("running",),
                pids=[p.pid for p, _ in self.children],
            )
            results = self._collect(size)
            if results is None:
                return {"state": self.store.raw(self.id).get("state")}
            summary = logproc.report(logproc.merge(results), how, TOP)
            summary["seconds"] = round(time.time() - float(self.store.raw(self.id)["started"]), 3)
            self.store.update(
                self.id,
                {"type": "result", "state": "done", "result": summary},
                ("running",),
                state="done",
                progress=1,
                result=summary,
                ended=time.time(),
            )
            return {"state": "done"}
        except BaseException as exc:  # a child's death, RQ's timeout, anything: say so
            stopped = self._stop_children()
            self.store.fail(self.id, f"{_describe(exc)}{stopped}", ("running",))
            raise

    def _start_children(self, size):
        with open(self.path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        ctx = multiprocessing.get_context("fork")
        if gzipped:
            jobs, how = [("gzip", 0, size)], "gzip: decompressed in one stream by one process"
        else:
            ranges = logproc.line_aligned_ranges(self.path, self.procs)
            jobs = [("plain", s, e) for s, e in ranges]
            how = (
                f"{len(ranges)} processes over line-aligned byte ranges"
                if self.procs > 1 and len(ranges) > 1
                else "1 process"
            )
        for kind, start, end in jobs:
            receive, send = ctx.Pipe(duplex=False)
            child = ctx.Process(
                target=_child,
                daemon=True,
                args=(
                    kind,
                    self.path,
                    start,
                    end,
                    send,
                    os.getpid(),
                    self.options.get("read_rate"),
                ),
            )
            child.start()
            send.close()  # ours is the reading end: EOF when the child is gone
            self.children.append((child, receive))
        return how

    def _collect(self, size):
        """The children's results in range order; None when the job was cancelled or
        failed meanwhile (children stopped, state recorded)."""
        done = [0] * len(self.children)
        results = [None] * len(self.children)
        pending = {conn: i for i, (_, conn) in enumerate(self.children)}
        last = {"beat": time.monotonic(), "cancel": 0.0, "publish": 0.0, "shown": -1}
        while pending:
            for conn in multiprocessing.connection.wait(list(pending), timeout=CANCEL_POLL):
                i = pending[conn]
                try:
                    kind, value = conn.recv()
                except EOFError:
                    child = self.children[i][0]
                    child.join(1)
                    raise ChildFailed(
                        f"child {child.pid} ended without its result ({_exit_text(child.exitcode)})"
                    ) from None
                if kind == "progress":
                    done[i] += value
                elif kind == "at":
                    done[i] = value
                else:
                    results[i] = value
                    del pending[conn]
                    self.children[i][0].join(5)
            now = time.monotonic()
            if now - last["beat"] >= HEARTBEAT_EVERY:
                self.store.heartbeat(self.id)
                last["beat"] = now
            if now - last["cancel"] >= CANCEL_POLL:
                last["cancel"] = now
                raw = self.store.raw(self.id)
                if raw.get("cancel"):
                    stopped = self._stop_children()
                    self.store.cancelled(
                        self.id, f"cancelled by {raw['cancel']}{stopped}", ("running",)
                    )
                    return None
                if raw.get("state") != "running":  # failed by a reader meanwhile
                    self._stop_children()
                    return None
            progress = round(min(sum(done) / size, 1), 4) if size else 1
            if pending and progress != last["shown"] and now - last["publish"] >= PUBLISH_EVERY:
                last["publish"], last["shown"] = now, progress
                self.store.update(
                    self.id,
                    {"type": "progress", "progress": progress, "bytes": sum(done), "size": size},
                    ("running",),
                    progress=progress,
                )
        return results

    def _stop_children(self):
        """SIGTERM to the children still running, SIGKILL to those left after the grace
        period; what was done, as text for the job's reason."""
        alive = [child for child, _ in self.children if child.is_alive()]
        if not alive:
            return ": no child process was running"
        grace = float(self.options["grace"])
        for child in alive:
            with suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in alive:
            child.join(max(deadline - time.monotonic(), 0))
        stubborn = [child for child in alive if child.is_alive()]
        for child in stubborn:
            with suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            child.join()
        pids = ", ".join(str(child.pid) for child in alive)
        text = f": SIGTERM sent to {len(alive)} child process(es) (pids {pids})"
        if stubborn:
            return text + (
                f"; {len(stubborn)} still running after {grace:g} s got SIGKILL "
                f"(pids {', '.join(str(c.pid) for c in stubborn)})"
            )
        return text + f"; all ended within the {grace:g} s grace period"


class ChildFailed(Exception):
    """A child process ended without sending its result."""


def _describe(exc):
    if isinstance(exc, ChildFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _exit_text(code):
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


# -- a child: one byte range ---------------------------------------------------------------


class _Paced:
    """A file read at most `chunk` bytes at a time, and no faster than `rate` bytes/s:
    count_stream reports progress per read, so progress comes every chunk."""

    def __init__(self, stream, rate):
        self.stream, self.rate = stream, rate
        self.chunk = CHUNK if not rate else max(4096, min(CHUNK, rate // 10))
        self.began, self.read_so_far = time.monotonic(), 0

    def read(self, size=-1):
        data = self.stream.read(self.chunk if size < 0 else min(size, self.chunk))
        self.read_so_far += len(data)
        if self.rate:
            ahead = self.read_so_far / self.rate - (time.monotonic() - self.began)
            if ahead > 0:
                time.sleep(ahead)
        return data

    def tell(self):
        return self.stream.tell()


def _child(kind, path, start, end, pipe, parent, rate):
    """Count one range (or a whole gzip file), reporting to the parent over `pipe`."""
    die_with_parent(signal.SIGKILL, parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # cancel: end at once
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the RQ worker to handle
    with open(path, "rb") as raw:
        if kind == "gzip":  # progress in compressed bytes: where the decompressor is
            paced = _Paced(raw, rate)
            with gzip.GzipFile(fileobj=paced) as stream:
                result = logproc.count_stream(
                    stream, progress=lambda _n: pipe.send(("at", paced.tell()))
                )
        else:
            raw.seek(start)
            result = logproc.count_stream(
                _Paced(raw, rate), limit=end - start, progress=lambda n: pipe.send(("progress", n))
            )
    pipe.send(("result", result))
    pipe.close()
