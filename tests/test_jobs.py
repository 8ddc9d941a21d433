"""Background jobs (blueprints/jobs.py, workers/jobs.py): real RQ workers
(workers/job_workers.py), real work-horses and child processes, real signals,
and the page in Chromium."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from core.keys import Keys
from tests.clients import SSEClient, alive, parent_of, raw_request, read_until, wait_until
from tests.pages import wait_for
from tests.servers import ROOT
from workers import logproc

pytestmark = [pytest.mark.integration]

RATE = 400_000  # bytes/s each job child reads (JOBS_READ_BYTES_PER_SECOND): jobs last seconds
GRACE = 1.0


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logs")
    logproc.generate(folder / "access.log", 2 * 2**20, seed=1)
    logproc.generate(folder / "small.log", 200 * 2**10, seed=2)
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.log"
    outside.write_text("not for you\n")
    (folder / "outside.log").symlink_to(outside)
    (folder / "inside-link.log").symlink_to(folder / "small.log")
    (folder / "sub").mkdir()
    return folder


@pytest.fixture(scope="module")
def jobs_server(start_server, log_dir):
    return start_server(
        workers=2,
        JOBS_LOG_DIR=log_dir,
        JOBS_READ_BYTES_PER_SECOND=RATE,
        JOBS_CANCEL_GRACE_SECONDS=GRACE,
        JOBS_UPLOAD_MAX_BYTES=300_000,
    )


class JobWorkers:
    """`python -m workers.job_workers` processes, as `make run` starts them."""

    def __init__(self, env, log_path):
        self.env, self.log_path, self.processes = env, log_path, []

    def ensure(self, n):
        self.processes = [p for p in self.processes if p.poll() is None]
        while len(self.processes) < n:
            with open(self.log_path, "ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "workers.job_workers"],
                        cwd=ROOT,
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

    def log(self):
        return Path(self.log_path).read_text(errors="replace")[-4000:]

    def stop(self):
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def worker_pool(base_env, tmp_path_factory):
    pool = JobWorkers(base_env, tmp_path_factory.mktemp("rq") / "workers.log")
    yield pool
    pool.stop()


@pytest.fixture
def job_workers(worker_pool, jobs_server):
    worker_pool.ensure(2)  # a test may have killed one
    return worker_pool


@pytest.fixture(autouse=True)
def no_job_left_behind(request):
    """After each test, cancel its jobs still queued or running, so the next
    test finds the workers idle (a slow job left running made the next one
    wait in the queue past its timeout)."""
    yield
    if "jobs_server" not in request.fixturenames:
        return
    server = request.getfixturevalue("jobs_server")
    token = request.getfixturevalue("admin_token")
    listed = requests.get(f"{server.url}/admin/jobs", headers=auth(token), timeout=10).json()
    left = [j["id"] for j in listed["jobs"] if j["state"] in ("queued", "running")]
    for job_id in left:
        requests.delete(f"{server.url}/admin/jobs/{job_id}", headers=auth(token), timeout=10)
    for job_id in left:
        wait_state(server, token, job_id, ("cancelled", "failed", "done"), timeout=GRACE + 15)


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def start_job(server, token, file="access.log", procs=2):
    response = requests.post(
        f"{server.url}/admin/jobs",
        json={"file": file, "procs": procs},
        headers=auth(token),
        timeout=10,
    )
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/admin/jobs/{response.json()['id']}"
    return response.json()["id"], response


def job(server, token, job_id):
    for _ in range(3):  # a connection queued on a worker a test killed is reset: again
        try:
            response = requests.get(
                f"{server.url}/admin/jobs/{job_id}", headers=auth(token), timeout=10
            )
            break
        except requests.ConnectionError:
            time.sleep(0.2)
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(server, token, job_id, states, timeout=30):
    got = wait_until(
        lambda: (j := job(server, token, job_id))["state"] in states and j,
        timeout=timeout,
        step=0.2,
    )
    assert got, f"job {job_id} still {job(server, token, job_id)} after {timeout} s"
    return got


def running_with_children(server, token, job_id):
    return wait_until(
        lambda: (j := job(server, token, job_id)).get("pids") and j["state"] == "running" and j,
        timeout=30,
        step=0.1,
    )


def cli_result(path, procs):
    out = subprocess.run(
        [sys.executable, "-m", "workers.logproc", str(path), "--json", "--procs", str(procs)],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    summary.pop("seconds")
    return summary


# -- a job, from start to result ----------------------------------------------------------


def test_a_job_streams_its_progress_then_the_result_the_cli_reports(
    jobs_server, job_workers, admin_token, log_dir
):
    job_id, _ = start_job(jobs_server, admin_token, procs=2)
    events = SSEClient(f"{jobs_server.url}/admin/jobs/{job_id}/stream", headers=auth(admin_token))
    assert events.status == 200
    assert events.wait_for(lambda items: any(i["event"] == "result" for i in items), timeout=60), (
        events.items,
        job_workers.log(),
    )
    events.close()
    assert events.items[0]["event"] == "job"  # the state first
    progress = [json.loads(i["data"])["progress"] for i in events.items if i["event"] == "progress"]
    assert len(progress) >= 3 and progress == sorted(progress) and 0 < progress[0] < 1
    result = json.loads(events.items[-1]["data"])
    assert result["state"] == "done"
    summary = result["result"]
    assert summary.pop("seconds") > 0
    assert summary == cli_result(log_dir / "access.log", 2)
    done = job(jobs_server, admin_token, job_id)
    assert done["state"] == "done" and done["progress"] == 1 and done["result"]["lines"] > 0
    assert len(done["pids"]) == 2 and not any(alive(pid) for pid in done["pids"])
    # a late page: the stream opens with the whole state, result included
    late = SSEClient(f"{jobs_server.url}/admin/jobs/{job_id}/stream", headers=auth(admin_token))
    assert late.wait_count(1)
    late.close()
    assert late.items[0]["event"] == "job" and json.loads(late.items[0]["data"])["state"] == "done"
    # ... and one resuming from an event id gets what came after it, once
    first_progress = next(i for i in events.items if i["event"] == "progress")
    resumed = SSEClient(
        f"{jobs_server.url}/admin/jobs/{job_id}/stream",
        last_event_id=first_progress["id"],
        headers=auth(admin_token),
    )
    assert resumed.wait_for(lambda items: any(i["event"] == "result" for i in items))
    resumed.close()
    assert [i["id"] for i in resumed.items[1:]] == [
        i["id"] for i in events.items[events.items.index(first_progress) + 1 :]
    ]
    listing = requests.get(
        f"{jobs_server.url}/admin/jobs", headers=auth(admin_token), timeout=10
    ).json()
    assert listing["jobs"][0]["id"] == job_id and "result" not in listing["jobs"][0]
    assert {"access.log", "small.log", "inside-link.log"} <= {f["name"] for f in listing["files"]}
    assert "outside.log" not in {f["name"] for f in listing["files"]}
    assert listing["workers"] >= 1 and listing["limits"]["procs"] == 4


def test_every_key_a_job_creates_expires(jobs_server, job_workers, admin_token, rdb):
    job_id, _ = start_job(jobs_server, admin_token, file="small.log", procs=1)
    wait_state(jobs_server, admin_token, job_id, ("done",))

    def ttls():  # RQ sets its own keys' TTLs once the job function has returned
        return {k: rdb.ttl(k) for k in rdb.scan_iter(match=f"*{job_id}*")}

    assert wait_until(lambda: all(0 < ttl <= 24 * 3600 for ttl in ttls().values()), timeout=10), (
        ttls()
    )
    keys = Keys()
    assert {keys.job(job_id), keys.stream(Keys.job_channel(job_id)), f"rq:job:{job_id}"} <= set(
        ttls()
    )
    assert 0 < rdb.ttl(keys.jobs_recent()) <= 24 * 3600


# -- what is refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../etc/passwd", "plain file name"),
        ("/etc/passwd", "absolute path"),
        ("outside.log", "outside the log directory"),
        ("sub/../access.log", "plain file name"),
        ("missing.log", "no file"),
        ("sub", "not a regular file"),
        ("", "required"),
        (7, "required"),
    ],
)
def test_a_file_outside_the_log_directory_is_a_400(jobs_server, admin_token, name, reason):
    response = requests.post(
        f"{jobs_server.url}/admin/jobs",
        json={"file": name, "procs": 1},
        headers=auth(admin_token),
        timeout=10,
    )
    assert response.status_code == 400 and reason in response.json()["error"], response.text


@pytest.mark.parametrize("procs", [0, 5, -1, "x", 1.5, True, None])
def test_procs_out_of_range_is_a_400(jobs_server, admin_token, procs):
    response = requests.post(
        f"{jobs_server.url}/admin/jobs",
        json={"file": "small.log", "procs": procs},
        headers=auth(admin_token),
        timeout=10,
    )
    assert response.status_code == 400 and "procs" in response.json()["error"]


def test_an_upload_runs_and_an_oversized_one_is_a_413(
    jobs_server, job_workers, admin_token, log_dir, base_env
):
    data = (log_dir / "small.log").read_bytes()
    response = requests.post(
        f"{jobs_server.url}/admin/jobs/upload",
        headers=auth(admin_token),
        files={"upload": ("my access.log", data)},
        data={"procs": "2"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    done = wait_state(jobs_server, admin_token, job_id, ("done", "failed"))
    assert done["state"] == "done" and done["file"] == "my_access.log", done
    assert done["result"]["lines"] == cli_result(log_dir / "small.log", 2)["lines"]
    uploads = Path(base_env["INSTANCE_DIR"]) / "job-uploads"
    assert not (uploads / f"{job_id}.log").exists()  # gone with its job
    # refused from its Content-Length, before a byte of it is read (a raw socket: a
    # client still sending when the server closes may see a reset instead of the answer)
    for path, length, limit in (
        ("/admin/jobs/upload", 300_001, 300_000),
        ("/admin/jobs", 70_000, 65536),
    ):  # the others keep theirs
        sock = raw_request(
            jobs_server,
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin_token}"
                f"\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ),
        )
        answer = read_until(sock, f"larger than {limit} bytes".encode())
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413 "), answer


@pytest.mark.parametrize("who", ["anonymous", "alice", "bad token"])
def test_only_an_administrator_may_send_a_large_upload(jobs_server, alice_token, who):
    """The upload's larger limit is decided from the credentials before a byte
    of the body is read: anyone else keeps the small one (65,536 bytes), so an
    anonymous client cannot make the server spool megabytes to disk."""
    credentials = {
        "anonymous": "",
        "alice": f"Authorization: Bearer {alice_token}\r\n",
        "bad token": "Authorization: Bearer not-a-token\r\n",
    }[who]
    sock = raw_request(
        jobs_server,
        (
            f"POST /admin/jobs/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n{credentials}"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 300000\r\n\r\n"
        ),
    )
    answer = read_until(sock, b"larger than 65536 bytes")
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer


def test_jobs_are_for_administrators_only(jobs_server, admin_token, alice_token):
    job_id, _ = start_job(jobs_server, admin_token, file="small.log", procs=1)
    calls = [
        ("GET", "/admin/jobs", None),
        ("POST", "/admin/jobs", {"file": "small.log"}),
        ("GET", f"/admin/jobs/{job_id}", None),
        ("DELETE", f"/admin/jobs/{job_id}", None),
        ("GET", f"/admin/jobs/{job_id}/stream", None),
    ]
    for method, path, body in calls:
        for headers, status in (({}, 401), (auth(alice_token), 403)):
            response = requests.request(
                method, jobs_server.url + path, json=body, headers=headers, timeout=10
            )
            assert response.status_code == status, (method, path, response.text)
    html = {"Accept": "text/html"}
    assert (
        requests.get(f"{jobs_server.url}/admin/jobs", headers=html, timeout=10).status_code == 401
    )
    page = requests.get(
        f"{jobs_server.url}/admin/jobs", headers={**html, **auth(admin_token)}, timeout=10
    )
    assert page.status_code == 200 and "jobs.js" in page.text
    assert (
        requests.get(
            f"{jobs_server.url}/admin/jobs/{'0' * 32}", headers=auth(admin_token), timeout=10
        ).status_code
        == 404
    )


# -- cancel -------------------------------------------------------------------------------


def test_cancel_kills_the_children_and_says_so(jobs_server, job_workers, admin_token):
    job_id, _ = start_job(jobs_server, admin_token, procs=2)
    events = SSEClient(f"{jobs_server.url}/admin/jobs/{job_id}/stream", headers=auth(admin_token))
    running = running_with_children(jobs_server, admin_token, job_id)
    assert running, (json.dumps(job(jobs_server, admin_token, job_id)), job_workers.log())
    pids = running["pids"]
    assert all(alive(pid) for pid in pids) and {parent_of(p) for p in pids} == {running["horse"]}
    response = requests.delete(
        f"{jobs_server.url}/admin/jobs/{job_id}", headers=auth(admin_token), timeout=10
    )
    assert response.status_code == 202 and response.json()["cancel"] == "test-admin"
    cancelled = wait_state(
        jobs_server, admin_token, job_id, ("cancelled", "failed", "done"), timeout=GRACE + 5
    )
    assert cancelled["state"] == "cancelled", cancelled
    assert "cancelled by test-admin" in cancelled["reason"] and "SIGTERM" in cancelled["reason"]
    assert not any(alive(pid) for pid in pids)
    assert events.wait_for(lambda items: any(i["event"] == "cancelled" for i in items))
    events.close()
    again = requests.delete(
        f"{jobs_server.url}/admin/jobs/{job_id}", headers=auth(admin_token), timeout=10
    )
    assert again.status_code == 409


def test_a_queued_job_is_cancelled_before_it_starts(jobs_server, worker_pool, admin_token):
    worker_pool.ensure(2)
    busy = [start_job(jobs_server, admin_token, procs=1)[0] for _ in range(2)]
    for job_id in busy:  # both workers busy
        assert running_with_children(jobs_server, admin_token, job_id)
    waiting, _ = start_job(jobs_server, admin_token, file="small.log", procs=1)
    time.sleep(0.5)
    assert job(jobs_server, admin_token, waiting)["state"] == "queued"
    response = requests.delete(
        f"{jobs_server.url}/admin/jobs/{waiting}", headers=auth(admin_token), timeout=10
    )
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    assert "before it started" in response.json()["reason"]
    for job_id in busy:
        requests.delete(
            f"{jobs_server.url}/admin/jobs/{job_id}", headers=auth(admin_token), timeout=10
        )
        wait_state(jobs_server, admin_token, job_id, ("cancelled",), timeout=GRACE + 5)
    time.sleep(1)
    assert job(jobs_server, admin_token, waiting)["state"] == "cancelled"  # never ran


@pytest.mark.integration
def test_a_stubborn_child_gets_sigkill_after_the_grace_period():
    """The parent's stop on its own: a child that ignores SIGTERM."""
    import multiprocessing

    from workers.jobs import _Run

    def stubborn():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(30)

    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=stubborn)
    child.start()
    time.sleep(0.3)
    run = _Run(None, "x", "/dev/null", 1, {"grace": 0.5})
    run.children = [(child, None)]
    began = time.monotonic()
    text = run._stop_children()
    assert 0.5 <= time.monotonic() - began < 3
    assert "1 still running after 0.5 s got SIGKILL" in text and child.exitcode == -signal.SIGKILL


# -- crashes ------------------------------------------------------------------------------


@pytest.mark.chaos
def test_a_job_survives_the_web_worker_that_started_it(jobs_server, job_workers, admin_token):
    job_id, response = start_job(jobs_server, admin_token, procs=2)
    web_worker = int(response.headers["X-Served-By"].rsplit("/", 1)[1])
    os.kill(web_worker, signal.SIGKILL)
    done = wait_state(jobs_server, admin_token, job_id, ("done", "failed"), timeout=60)
    assert done["state"] == "done", done


@pytest.mark.chaos
def test_a_killed_work_horse_fails_the_job_with_a_reason(jobs_server, job_workers, admin_token):
    job_id, _ = start_job(jobs_server, admin_token, procs=2)
    running = running_with_children(jobs_server, admin_token, job_id)
    os.kill(running["horse"], signal.SIGKILL)
    began = time.monotonic()
    failed = wait_state(jobs_server, admin_token, job_id, ("failed", "done"), timeout=15)
    assert failed["state"] == "failed" and "died" in failed["reason"], failed
    assert time.monotonic() - began < 10
    assert wait_until(lambda: not any(alive(pid) for pid in running["pids"]), timeout=5)


@pytest.mark.chaos
def test_a_killed_rq_worker_fails_its_job_with_a_reason(jobs_server, job_workers, admin_token):
    job_id, _ = start_job(jobs_server, admin_token, procs=2)
    events = SSEClient(f"{jobs_server.url}/admin/jobs/{job_id}/stream", headers=auth(admin_token))
    running = running_with_children(jobs_server, admin_token, job_id)
    rq_worker = parent_of(running["horse"])
    assert rq_worker in {p.pid for p in job_workers.processes}
    os.kill(rq_worker, signal.SIGKILL)
    began = time.monotonic()
    # nobody reads the job's state: the open stream notices by itself
    assert events.wait_for(lambda items: any(i["event"] == "failed" for i in items), timeout=15)
    events.close()
    assert time.monotonic() - began < 10
    failed = job(jobs_server, admin_token, job_id)
    assert failed["state"] == "failed" and "stopped reporting" in failed["reason"], failed
    assert wait_until(
        lambda: not any(alive(pid) for pid in [running["horse"], *running["pids"]]), timeout=5
    )


# -- the page, in Chromium ----------------------------------------------------------------


@pytest.mark.browser
def test_the_page_starts_watches_and_cancels_jobs(jobs_server, job_workers, page):
    page.goto(jobs_server.url + "/auth/")
    login = page.evaluate("""async () => (await fetch('/auth/login', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(
        {username: 'test-admin', password: 'test-admin-password'})})).status""")
    assert login == 200
    page.goto(jobs_server.url + "/admin/jobs")
    page.locator("#file option[value='access.log']").wait_for(state="attached", timeout=10_000)
    page.select_option("#file", "access.log")
    page.fill("#procs", "2")
    page.click("#start")
    current = page.locator("article.job").first
    current.locator("progress").wait_for(timeout=10_000)
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and current.get_attribute("data-state") != "done":
        seen.add(current.locator("progress").get_attribute("value"))
        page.wait_for_timeout(100)
    assert current.get_attribute("data-state") == "done", current.text_content()
    assert len(seen - {None, "0"}) >= 2, seen  # it moved
    current.locator("table.status td", has_text="200").first.wait_for()
    current.locator("table.paths td", has_text="/").first.wait_for()
    assert current.locator("svg.chart").count() == 1
    assert "requests per minute" in current.locator("svg.chart").text_content()

    # Cancel, with the DELETE's answer (the job still "running", the flag set) held back
    # until the stream has said "cancelled": a late answer must not undo the end.
    held = []
    page.click("#start")
    second = page.locator("article.job").first
    wait_for(
        page,
        "() => document.querySelector('article.job').dataset.state === 'running'",
        timeout=15_000,
    )
    page.route(
        "**/admin/jobs/*",
        lambda route: (
            held.append((route, route.fetch()))
            if route.request.method == "DELETE"
            else route.fallback()
        ),
    )
    second.get_by_role("button", name="cancel").click()
    second.locator(".reason", has_text="cancelled by test-admin").wait_for(timeout=10_000)
    assert second.get_attribute("data-state") == "cancelled"
    route, answer = held[-1]
    assert answer.status == 202 and answer.json()["state"] == "running", answer.json()
    route.fulfill(response=answer)
    page.wait_for_timeout(500)
    assert second.get_attribute("data-state") == "cancelled"
    assert second.locator(".reason").text_content().startswith("cancelled by test-admin")
