"""`make run` under supervisord (workers/supervise.py): one system of web server,
job workers and embedded Redis, started and stopped together; job workers
restarted, and given up after fast failures; logs with rotation; `flask procs`.

Real `python -m workers.supervise` processes, as `make run` runs them, each with
its own instance directory and port.
"""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from redis import Redis
from rq import Worker

from core import procs
from core.embedded_redis import free_port
from tests.clients import alive, children, descendants, one_line_saying, wait_until
from tests.servers import ROOT

pytestmark = [pytest.mark.integration]

ADMIN_PASSWORD = "supervised-admin-pw"


class Supervised:
    """`python -m workers.supervise` (what `make run` runs) in its own instance
    directory, on a free port."""

    def __init__(self, base_env, folder, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.instance = Path(folder) / "instance"
        self.log_path = Path(folder) / "supervise.log"
        self.env = {
            **base_env,
            "REDIS_URL": "",  # the embedded Redis, unless a test gives one
            "INSTANCE_DIR": str(self.instance),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "2",
            "JOB_WORKERS": "2",
            "JOB_MIN_UPTIME_SECONDS": "1",
            "DEMO_USERS": "1",
            "DEMO_ADMIN_PASSWORD": ADMIN_PASSWORD,
            **{k: str(v) for k, v in settings.items()},
        }
        self.process = None
        self.token = None

    def start(self, jobs_running=2, timeout=40, command=None):
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command or [sys.executable, "-m", "workers.supervise"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"make run exited early:\n{self.log()}"
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            self.stop()
            raise AssertionError(f"make run did not become healthy:\n{self.log()}")
        self.rpc = procs.connect(instance=str(self.instance), timeout=60)
        if jobs_running:
            rows = procs.wait_for_state(self.rpc, {"RUNNING"}, "jobs", jobs_running, timeout=20)
            assert [r["state"] for r in rows] == ["RUNNING"] * jobs_running, rows
        return self

    def log(self):
        return self.log_path.read_text(errors="replace")[-6000:]

    def programs(self):
        return {row["name"]: row for row in procs.programs(self.rpc)}

    def procs(self, *args):
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", "procs", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    def admin_token(self):
        if self.token is None:

            def login():
                response = requests.post(
                    self.url + "/auth/token",
                    data={"username": "admin", "password": ADMIN_PASSWORD},
                    timeout=10,
                )
                return response if response.ok else None

            response = wait_until(login, timeout=15)
            assert response, "the demo admin should log in"
            self.token = response.json()["token"]
        return self.token

    def processes(self, token=None):
        response = requests.get(
            self.url + "/admin/processes",
            headers={"Authorization": f"Bearer {token or self.admin_token()}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self, timeout=60):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def system(base_env, tmp_path_factory):
    """One `make run` with its embedded Redis, two job workers, access logs in
    its web log and small log files (they rotate)."""
    supervised = Supervised(
        base_env,
        tmp_path_factory.mktemp("sv"),
        ACCESS_LOG="-",
        LOG_MAX_BYTES=8000,
        LOG_BACKUPS=2,
    ).start()
    yield supervised
    supervised.stop()


def test_make_run_starts_web_jobs_and_redis_as_one_system(system):
    assert requests.get(system.url + "/healthz", timeout=5).json()["status"] == "ok"
    rows = system.programs()
    assert {name: row["state"] for name, row in rows.items()} == {
        "events": "RUNNING",
        "web": "RUNNING",
        "jobs_0": "RUNNING",
        "jobs_1": "RUNNING",
    }
    # the job workers are RQ workers on the embedded Redis, the one in redis.url
    redis_url = (system.instance / "redis.url").read_text().strip()
    rq_pids = {w.pid for w in Worker.all(connection=Redis.from_url(redis_url))}
    assert rq_pids == {rows["jobs_0"]["pid"], rows["jobs_1"]["pid"]}
    # the terminal shows where to go and where the admin's password is
    assert wait_until(lambda: "Serving on http://localhost:" in system.log())
    assert "Administrator: user admin" in system.log()
    # each program's log file under the instance directory
    logs = system.instance / "proclogs"
    assert {"web.log", "jobs_0.log", "jobs_1.log", "events.log"} <= {p.name for p in logs.iterdir()}
    assert wait_until(lambda: "Listening on" in (logs / "jobs_0.log").read_text())


def test_admin_processes_and_procs_list_show_the_job_workers(system):
    rows = system.programs()
    job_pids = {rows["jobs_0"]["pid"], rows["jobs_1"]["pid"]}

    def reported():
        data = system.processes()
        jobs = {p["pid"]: p for p in data["processes"] if p["role"] == "jobs"}
        supervisor = [p for p in data["processes"] if p["role"] == "supervisor"]
        return (jobs, supervisor) if set(jobs) == job_pids and supervisor else None

    found = wait_until(reported, timeout=15)
    assert found, system.processes()
    jobs, supervisor = found
    report = jobs[rows["jobs_0"]["pid"]]
    assert report["name"] == "jobs_0"
    assert report["rss"] > 0 and report["uptime"] >= 0 and report["cpu"] >= 0
    assert {"job", "restarts"} <= set(report)
    states = {p["name"]: p["state"] for p in supervisor[0]["programs"]}
    assert states == {"web": "RUNNING", "jobs_0": "RUNNING", "jobs_1": "RUNNING"}

    listed = system.procs("list")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert lines["web"][1:3] == [str(rows["web"]["pid"]), "RUNNING"]
    assert lines["jobs_0"][1:3] == [str(rows["jobs_0"]["pid"]), "RUNNING"]
    assert "worker" in lines  # gunicorn's workers under web


def test_a_killed_job_worker_is_restarted_and_its_restart_counted(system):
    victim = system.programs()["jobs_0"]["pid"]
    os.kill(victim, signal.SIGKILL)
    row = wait_until(
        lambda: (
            (r := system.programs()["jobs_0"])["pid"] not in (None, victim)
            and r["state"] == "RUNNING"
            and r
        ),
        timeout=20,
    )
    assert row, system.programs()
    listed = system.procs("list").stdout
    jobs_0 = next(line.split() for line in listed.splitlines() if line.startswith("jobs_0"))
    assert jobs_0[1] == str(row["pid"]) and int(jobs_0[4]) >= 1, listed
    exits = system.processes()["restarts"]
    assert any(e["pid"] == victim and "exited unexpectedly" in e["cause"] for e in exits), exits


@pytest.mark.slow
def test_procs_restart_jobs_gives_new_job_workers(system):
    before = {name: row["pid"] for name, row in system.programs().items()}
    result = system.procs("restart", "jobs")
    assert result.returncode == 0, result.stdout + result.stderr
    after = system.programs()
    for name in ("jobs_0", "jobs_1"):
        assert after[name]["state"] == "RUNNING"
        assert after[name]["pid"] != before[name]
    assert after["web"]["pid"] == before["web"]  # only the job workers


def test_procs_reload_web_replaces_gunicorn_workers_and_keeps_the_master(system):
    master = system.programs()["web"]["pid"]
    old = children(master)
    assert len(old) == 2
    result = system.procs("reload", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_until(lambda: len(children(master)) == 2 and not children(master) & old, 30)
    assert system.programs()["web"]["pid"] == master
    assert requests.get(system.url + "/healthz", timeout=5).status_code == 200


def test_process_logs_rotate_past_log_max_bytes(system):
    logs = system.instance / "proclogs"
    session = requests.Session()
    for _ in range(300):  # an access-log line each (ACCESS_LOG=-), ~30 KB
        session.get(system.url + "/healthz", timeout=5)
    assert wait_until(lambda: (logs / "web.log.2").exists(), timeout=10)
    assert not (logs / "web.log.3").exists()  # LOG_BACKUPS=2
    for name in ("web.log", "web.log.1", "web.log.2"):
        assert (logs / name).stat().st_size <= 8000 + 2000  # one write past the limit at most


def test_a_second_make_run_on_the_same_instance_directory_refuses(system):
    redis_url = (system.instance / "redis.url").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "workers.supervise"],
        cwd=ROOT,
        env={**system.env, "PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    line = one_line_saying(result, "is in use by another `make run`")
    assert f"(pid {system.process.pid})" in line
    assert (system.instance / "redis.url").read_text() == redis_url


def test_a_taken_port_stops_make_run_at_once_with_one_line(base_env, tmp_path):
    with socket_held() as port:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "workers.supervise"],
            cwd=ROOT,
            env={
                **base_env,
                "REDIS_URL": "",
                "INSTANCE_DIR": str(tmp_path / "instance"),
                "PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode != 0
    assert "Address already in use" in one_line_saying(result, "cannot listen on")
    assert time.monotonic() - started < 15
    assert not (tmp_path / "instance" / "redis.url").exists()
    assert not (tmp_path / "instance" / "supervisord.conf").exists()  # nothing started


def test_a_bad_setting_stops_make_run_with_one_line(base_env, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "workers.supervise"],
        cwd=ROOT,
        env={**base_env, "INSTANCE_DIR": str(tmp_path), "JOB_MAX_RESTARTS": "many"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    line = one_line_saying(result, "configuration error")
    assert line == "configuration error: JOB_MAX_RESTARTS='many': expected int"


class socket_held:
    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


@pytest.mark.slow
def test_a_job_worker_failing_fast_is_given_up_and_shown(base_env, tmp_path, admin_token):
    # A real misconfiguration: a job worker command that exits at once (here a
    # module that does not exist). The tests' Redis, so the tests' admin token works.
    # A minimum uptime far above how long Python takes to fail an import: on a
    # busy machine that took over the default 3 s, supervisord counted such a
    # start as a success that later exited, and restarted it beyond the limit.
    supervised = Supervised(
        base_env,
        tmp_path,
        REDIS_URL=base_env["REDIS_URL"],
        JOB_WORKERS=1,
        JOB_WORKER_COMMAND=f"{sys.executable} -m workers.no_such_module",
        JOB_MAX_RESTARTS=2,
        JOB_MIN_UPTIME_SECONDS=60,
    ).start(jobs_running=0)
    try:
        rows = procs.wait_for_state(supervised.rpc, {"FATAL"}, "jobs", 1, timeout=30)
        assert rows[0]["state"] == "FATAL", rows
        # a first attempt, then retries after 1 s and 2 s of back-off
        assert time.monotonic() - supervised.started_at >= 3
        log = (supervised.instance / "proclogs" / "jobs_0.log").read_text()
        assert log.count("No module named workers.no_such_module") == 3, log

        listed = supervised.procs("list").stdout
        assert any(line.split()[:3] == ["jobs_0", "-", "FATAL"] for line in listed.splitlines())

        def shown():
            data = supervised.processes(admin_token)
            mine = [
                p
                for p in data["processes"]
                if p["role"] == "supervisor" and p["pid"] == supervised.rpc.supervisor.getPID()
            ]
            states = {p["name"]: p["state"] for p in mine[0]["programs"]} if mine else {}
            return (mine, data) if states.get("jobs_0") == "FATAL" else None

        found = wait_until(shown, timeout=15)
        assert found
        report, data = found
        jobs_0 = next(p for p in report[0]["programs"] if p["name"] == "jobs_0")
        assert jobs_0["restarts"] == 2  # three starts
        assert any(
            e.get("program") == "jobs:jobs_0" and "gave up" in e["cause"] for e in data["restarts"]
        )
        assert requests.get(supervised.url + "/healthz", timeout=5).status_code == 200
    finally:
        supervised.stop()


@pytest.mark.slow
def test_sigterm_stops_every_process_and_removes_the_redis_url(system):
    # (last: it ends the module's system)
    pids = descendants(system.process.pid)
    programs = system.programs()
    assert {row["pid"] for row in programs.values()} <= pids
    assert len(pids) >= 8  # Redis, supervisord, events, web and its 2 workers, 2 job workers
    system.process.terminate()
    assert system.process.wait(60) == 0, system.log()
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=10), [
        p for p in pids if alive(p)
    ]
    assert not (system.instance / "redis.url").exists()
    assert "stopped: web" in system.log()


def test_make_killed_stops_every_process_and_removes_the_redis_url(base_env, tmp_path):
    """`make run`'s own process SIGKILLed (a closed terminal, `kill -9` of
    make): the supervisor under it stops everything as on Ctrl-C."""
    supervised = Supervised(base_env, tmp_path, JOB_WORKERS=1)
    # a shell that stays between, as make's would without `exec` (`; :` keeps it)
    parent = [
        "sh",
        "-c",
        f"{shlex.quote(sys.executable)} -m workers.supervise; :",
    ]
    supervised.start(jobs_running=1, command=parent)
    pids = descendants(supervised.process.pid)
    try:
        assert len(pids) >= 6, pids  # supervise, Redis, supervisord, events, web (+2), jobs
        supervised.process.kill()
        supervised.process.wait()
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=60), [
            p for p in pids if alive(p)
        ]
        assert not (supervised.instance / "redis.url").exists()
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
