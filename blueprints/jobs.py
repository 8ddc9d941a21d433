"""Background jobs: log analyses in child processes, on RQ (administrators; issue 16).

    GET    /admin/jobs              the page (a browser's Accept: text/html), else JSON:
                                    {"jobs": [...recent, newest first], "files": [{name, size}],
                                     "limits": {...}, "workers": live RQ workers}
    POST   /admin/jobs              {"file": "<name in JOBS_LOG_DIR>", "procs": N}
                                    -> 202 {"id", "state": "queued"} (+ Location)
    POST   /admin/jobs/upload       multipart: `upload` (the log), `procs` -> 202 as above;
                                    413 past JOBS_UPLOAD_MAX_BYTES
    GET    /admin/jobs/<id>         {"id", "state", "progress": 0..1, "result" when done,
                                     "reason" when failed or cancelled, ...}
    GET    /admin/jobs/<id>/stream  SSE: `job` (the whole state, first and after a reset),
                                    then `state`, `progress`, and last `result`, `failed` or
                                    `cancelled`; ids resume with Last-Event-ID
    DELETE /admin/jobs/<id>         cancel -> 202 (the job says "cancelled" when its children
                                    are gone); 409 once it has ended

The job itself runs in an RQ worker's work-horse (workers/jobs.py); this side
only validates, enqueues (one Redis call), reads and subscribes: nothing here
blocks the worker. A read also checks that a running job's process is alive
(JobStore.refresh), so a job whose worker died shows "failed", never "running"
for ever; an open stream checks the same every few seconds while it is quiet.
"""

import functools
import json
import os
import re
import secrets
import time
from pathlib import Path

import redis
from flask import Blueprint, current_app, jsonify, request

from core import bodies
from core.errors import abort_json, wants_html
from core.keys import Keys
from core.security import admin_page, admin_required, administrator_asks, current_user
from core.stream_log import InvalidId, format_id, parse_id
from core.transports import sse
from core.web import get_hub, get_redis, no_store
from workers import jobs

bp = Blueprint("jobs", __name__)
bp.after_request(no_store)

JOB_ID = re.compile(r"[0-9a-f]{32}\Z")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")  # a file name, nothing more
UPLOAD_PATH = "/admin/jobs/upload"
STREAM_CHECK_SECONDS = 2.0  # a quiet stream checks its job's process this often
LISTED = 50


@bp.record_once
def _allow_uploads(state):
    """The upload route takes bodies up to JOBS_UPLOAD_MAX_BYTES; every other route
    keeps MAX_CONTENT_LENGTH (core/bodies.py allow_larger)."""
    bodies.allow_larger(
        state.app,
        "POST",
        UPLOAD_PATH,
        state.app.config["JOBS_UPLOAD_MAX_BYTES"],
        functools.partial(administrator_asks, state.app),  # nobody else sends a large body
    )


NO_JOBS_ON_A_CLUSTER = (
    "background jobs are off on a Redis Cluster: their queue, RQ, needs a single Redis "
    "(or Sentinel)"
)


def _rq():
    """RQ's connection: a plain redis-py client with bytes replies (RQ needs them),
    from the app's own Redis location; one per worker."""
    client = current_app.extensions.get("jobs_rq")
    if client is None:
        connections = current_app.extensions["redis_connections"]
        if connections.cluster:
            abort_json(503, NO_JOBS_ON_A_CLUSTER)
        pool = connections.pool(max_connections=16, timeout=5)
        client = current_app.extensions["jobs_rq"] = redis.Redis(connection_pool=pool)
    return client


def _store():
    hub = get_hub()
    return jobs.JobStore(
        get_redis(),
        hub.scripts,
        current_app.config["REDIS_PREFIX"],
        current_app.config["JOBS_TTL_SECONDS"],
    )


def _queue():
    from rq import Queue

    return Queue(Keys(current_app.config["REDIS_PREFIX"]).jobs_queue(), connection=_rq())


def log_dir():
    config = current_app.config
    return Path(config["JOBS_LOG_DIR"] or Path(config["INSTANCE_DIR"]) / "logs")


def upload_dir():
    return Path(current_app.config["INSTANCE_DIR"]) / "job-uploads"


# -- the page and the listing -------------------------------------------------------------


@bp.get("/admin/jobs")
def index():
    if wants_html():
        return admin_page("jobs.html")
    return _listing()


@admin_required
def _listing():
    store = _store()
    listed = []
    for job_id in store.recent(LISTED):
        job = store.refresh(job_id, _rq())
        if job is not None:
            job.pop("result", None)  # GET /admin/jobs/<id> has it
            listed.append(job)
    from rq import Worker

    config = current_app.config
    return jsonify(
        {
            "jobs": listed,
            "files": _files(),
            "workers": Worker.count(connection=_rq(), queue=_queue()),
            "limits": {
                "procs": config["JOBS_MAX_PROCS"],
                "upload_bytes": config["JOBS_UPLOAD_MAX_BYTES"],
                "ttl_seconds": config["JOBS_TTL_SECONDS"],
            },
        }
    )


def _files():
    try:
        entries = sorted(os.scandir(log_dir()), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [
        {"name": e.name, "size": e.stat().st_size}
        for e in entries
        if NAME.match(e.name) and _inside(Path(e.path)) and e.is_file()
    ]


def _inside(path):
    try:
        return path.resolve(strict=True).is_relative_to(log_dir().resolve())
    except (OSError, RuntimeError):  # gone, or a symlink loop
        return False


# -- starting a job -----------------------------------------------------------------------


@bp.post("/admin/jobs")
@admin_required
def start():
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict):
        abort_json(400, 'expected a JSON object {"file": "<name>", "procs": N}')
    path = _log_file(body.get("file"))
    return _enqueue(path, body.get("file"), _procs(body.get("procs", 1)), source="dir")


@bp.post(UPLOAD_PATH)
@admin_required
def upload():
    limit = current_app.config["JOBS_UPLOAD_MAX_BYTES"]
    request.max_content_length = limit  # this route's own limit (Flask's check, after ours)
    sent = request.files.get("upload")
    if sent is None or not sent.filename:
        abort_json(400, "expected multipart/form-data with the log file as `upload`")
    procs = _procs(request.form.get("procs", "1"))
    folder = upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _sweep(folder)
    job_id = secrets.token_hex(16)
    path = folder / f"{job_id}.log"
    sent.save(path)
    shown = re.sub(r"[^A-Za-z0-9._-]", "_", Path(sent.filename).name)[:100] or "upload"
    return _enqueue(path, shown, procs, source="upload", job_id=job_id)


def _sweep(folder):
    """Uploads outlive their job only by accident (a job that never ran): past the
    jobs' TTL they go, like the job's keys."""
    cutoff = time.time() - current_app.config["JOBS_TTL_SECONDS"]
    for entry in os.scandir(folder):
        if entry.is_file() and entry.stat().st_mtime < cutoff:
            Path(entry.path).unlink(missing_ok=True)


def _log_file(name):
    """The file `name` in JOBS_LOG_DIR, resolved; 400 with the reason otherwise."""
    if not isinstance(name, str) or not name:
        abort_json(400, '"file" is required: the name of a file in the log directory')
    if name.startswith("/") or Path(name).is_absolute():
        abort_json(400, '"file" must be a name in the log directory, not an absolute path')
    if "/" in name or "\\" in name or name in (".", "..") or not NAME.match(name):
        abort_json(
            400,
            '"file" must be a plain file name in the log directory (letters, '
            'digits, . _ -; no directories, no "..")',
        )
    folder = log_dir().resolve()
    candidate = folder / name
    try:
        path = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        abort_json(400, f"no file {name!r} in the log directory")
    if not path.is_relative_to(folder):
        abort_json(400, f"{name!r} leads outside the log directory (a symlink): refused")
    if not path.is_file():
        abort_json(400, f"{name!r} is not a regular file")
    return path


def _procs(value):
    top = current_app.config["JOBS_MAX_PROCS"]
    try:
        procs = (
            int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
        )
    except ValueError:
        procs = None
    if procs is None or not 1 <= procs <= top:
        abort_json(400, f'"procs" must be a whole number from 1 to {top}')
    return procs


def _enqueue(path, shown, procs, source, job_id=None):
    from rq import Callback

    config = current_app.config
    job_id = job_id or secrets.token_hex(16)
    ttl = config["JOBS_TTL_SECONDS"]
    store = _store()
    store.create(job_id, file=shown, source=source, procs=procs, by=current_user().name)
    options = {
        "prefix": config["REDIS_PREFIX"],
        "ttl": ttl,
        "grace": config["JOBS_CANCEL_GRACE_SECONDS"],
        "stream_maxlen": config["STREAM_MAXLEN"],
        "stream_ttl": config["STREAM_TTL_SECONDS"],
        "read_rate": config["JOBS_READ_BYTES_PER_SECOND"],
        "upload": source == "upload",
    }
    _queue().enqueue(
        "workers.jobs.analyse",
        job_id,
        str(path),
        procs,
        options,
        job_id=job_id,
        ttl=ttl,
        result_ttl=ttl,
        failure_ttl=ttl,
        job_timeout=config["JOBS_TIMEOUT_SECONDS"],
        on_failure=Callback("workers.jobs.on_failure"),
        description=f"log analysis of {shown}",
    )
    response = jsonify({"id": job_id, "state": "queued"})
    response.status_code = 202
    response.headers["Location"] = f"/admin/jobs/{job_id}"
    return response


# -- one job ------------------------------------------------------------------------------


def _job_or_404(job_id):
    job = _store().refresh(job_id, _rq()) if JOB_ID.match(job_id) else None
    if job is None:
        abort_json(404, f"no job {job_id!r} (unknown, or expired)")
    return job


@bp.get("/admin/jobs/<job_id>")
@admin_required
def show(job_id):
    return jsonify(_job_or_404(job_id))


@bp.delete("/admin/jobs/<job_id>")
@admin_required
def cancel(job_id):
    job = _job_or_404(job_id)
    if job["state"] in jobs.TERMINAL:
        abort_json(409, f"the job has ended already ({job['state']})", state=job["state"])
    store = _store()
    who = current_user().name
    # the flag first: a worker taking the job now sees it before it starts children
    store.update(job_id, None, ("queued", "running"), cancel=who)
    if job["state"] == "queued":
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        try:
            Job.fetch(job_id, connection=_rq()).cancel()
        except (NoSuchJobError, InvalidJobOperation):
            pass  # started meanwhile (it sees the flag) or gone (refresh says so)
        else:
            store.cancelled(job_id, f"cancelled by {who} before it started", ("queued",))
    response = jsonify(_store().refresh(job_id, _rq()))
    response.status_code = 202
    return response


@bp.get("/admin/jobs/<job_id>/stream")
@admin_required
def stream(job_id):
    _job_or_404(job_id)
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    try:
        cursor = parse_id(raw) if raw else None
    except InvalidId:
        abort_json(400, "invalid Last-Event-ID: expected a message id like 1700000000000-0")
    config = current_app.config
    store, rq_connection = _store(), _rq()
    subscription = get_hub().subscribe(Keys.job_channel(job_id), cursor)

    def snapshot(_reset=None):  # what the job is now (first, and after missed messages)
        job = store.refresh(job_id, rq_connection)
        return sse.event(
            json.dumps(job),
            event="job",
            id=_reset.id if _reset else format_id(cursor or subscription.cursor),
        )

    def check():  # a quiet stream: is the job's process still there? (a failure is published)
        store.refresh(job_id, rq_connection)
        return sse.comment("keepalive")

    retry = sse.retry(config["SSE_RETRY_MS"])
    return sse.response(
        sse.stream(
            subscription,
            request.environ,
            first=lambda: retry + snapshot(),
            heartbeat=min(config["HEARTBEAT_SECONDS"], STREAM_CHECK_SECONDS),
            encode=_job_event,
            on_reset=snapshot,
            keepalive=check,
        )
    )


def _job_event(msg):
    return msg.encoded(_typed_event)


def _typed_event(msg):  # once per worker, whatever the number of pages watching
    return sse.event(msg.data, event=msg.value["type"], id=msg.id)
