"""The child-process lab (blueprints/lab.py, core/children.py): real children
of real gunicorn workers, real signals, over the page's WebSocket."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
import websocket

from tests.clients import close_of, parent_of, wait_until, worker_pids
from tests.pages import wait_for
from tests.servers import ROOT


class Lab:
    """The lab's WebSocket, as the page uses it: every frame is kept, with
    the time it arrived."""

    def __init__(self, server, token):
        self.ws = websocket.create_connection(
            f"{server.ws_url}/admin/lab/ws?access_token={token}", timeout=15
        )
        self.frames = []
        self.hello = self.next("hello")

    def send(self, **frame):
        self.ws.send(json.dumps(frame))

    def next(self, kind, run=None, timeout=15):
        """The first frame of `kind` (and `run`) not yet taken, reading on as needed."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames:
                if (
                    not frame.get("taken")
                    and frame["type"] == kind
                    and run in (None, frame.get("run"))
                ):
                    frame["taken"] = True
                    return frame
            self.ws.settimeout(max(deadline - time.monotonic(), 0.01))
            self.frames.append({**json.loads(self.ws.recv()), "at": time.monotonic()})

    def start(self, **frame):
        self.send(**frame)
        return self.next("started")

    def of(self, run):
        return [f for f in self.frames if f.get("run") == run]

    def close(self):
        self.ws.close()


def children_of_workers(server):
    """{pid: command line} of every process whose parent is one of the server's workers."""
    found = {}
    for worker in worker_pids(server):
        out = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(worker)], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            found[int(pid)] = args
    return found


@pytest.fixture
def lab(server, admin_token):
    lab = Lab(server, admin_token)
    yield lab
    lab.close()
    assert wait_until(lambda: not children_of_workers(server), timeout=10), (
        f"children left running: {children_of_workers(server)}"
    )


# -- spawn ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_spawn_streams_lines_as_they_come_then_the_exit_status(lab):
    started = lab.start(type="spawn", command="count", arg=6)
    assert started["kind"] == "spawn" and started["argv"][-2:] == ["workers.lab_count", "6"]
    exit_ = lab.next("exit", started["run"])
    assert (exit_["code"], exit_["signal"]) == (0, None)
    lines = [f for f in lab.of(started["run"]) if f["type"] == "output"]
    assert [f["line"].split(" (")[0] for f in lines] == [f"line {n} of 6" for n in range(1, 7)]
    # stderr lines are marked as such (every third line goes there)
    assert [f["stream"] for f in lines] == ["stdout", "stdout", "stderr"] * 2
    # streamed, not collected: the first line came about 1 s (5 pauses) before the end
    assert exit_["at"] - lines[0]["at"] > 0.6


@pytest.mark.integration
def test_spawn_runs_the_fixed_commands(lab):
    ls = lab.start(type="spawn", command="ls")
    assert lab.next("exit", ls["run"])["code"] == 0
    listed = " ".join(f["line"] for f in lab.of(ls["run"]) if f["type"] == "output")
    assert "lab.html" in listed and "monitor.html" in listed
    uname = lab.start(type="spawn", command="uname")
    assert lab.next("exit", uname["run"])["code"] == 0
    assert (
        lab.next("output", uname["run"])["line"]
        == subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    )


@pytest.mark.integration
def test_killing_a_spawned_command_shows_the_signal(lab, server):
    sleep = lab.start(type="spawn", command="sleep", arg=10)
    assert children_of_workers(server)[sleep["pid"]] == "sleep 10"
    lab.send(type="kill", run=sleep["run"])
    exit_ = lab.next("exit", sleep["run"], timeout=5)
    assert (exit_["code"], exit_["signal"]) == (None, "SIGTERM")


# -- exec vs execFile -------------------------------------------------------------------------


@pytest.mark.integration
def test_exec_goes_through_a_shell_and_exec_file_does_not(lab):
    def whole(kind, line):
        run = lab.start(type=kind, line=line)["run"]
        result, exit_ = lab.next("result", run), lab.next("exit", run)
        return result["stdout"].strip(), result["stderr"], exit_["code"]

    home, _, code = whole("exec", "echo $HOME")
    assert code == 0 and home.startswith("/") and home == os.environ.get("HOME", "/")
    assert whole("execFile", "echo $HOME")[:1] == ("$HOME",)  # no shell: no expansion
    assert whole("exec", "echo $((6 * 7))")[0] == "42"
    assert whole("execFile", "echo $((6 * 7))")[0] == "$((6 * 7))"
    count, _, code = whole("exec", "ls static | wc -l")
    assert code == 0 and int(count) == len(os.listdir(ROOT / "static"))
    # without a shell "|" is a file name to ls, which does not exist
    _, stderr, code = whole("execFile", "ls static | wc -l")
    assert code == 2 and "'|'" in stderr


# -- fork ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_forked_child_talks_both_ways_and_is_killed_with_sigterm(lab, server):
    started = lab.start(type="fork")
    run, pid = started["run"], started["pid"]
    assert lab.next("message", run)["data"] == {"type": "ready", "pid": pid}
    assert parent_of(pid) in worker_pids(server)  # a live child of a worker
    assert lab.next("message", run)["data"] == {"type": "count", "count": 1}
    lab.send(type="send", run=run, text="hello ✓")
    assert lab.next("message", run)["data"] == {"type": "reply", "text": "✓ olleh"}
    lab.send(type="send", run=run, text="reset")
    while lab.next("message", run)["data"] != {"type": "reset"}:
        pass  # a count on the way
    assert lab.next("message", run)["data"] == {"type": "count", "count": 1}
    lab.send(type="kill", run=run)
    exit_ = lab.next("exit", run, timeout=5)
    assert (exit_["code"], exit_["signal"]) == (None, "SIGTERM")
    assert wait_until(lambda: pid not in children_of_workers(server), timeout=5)
    lab.send(type="send", run=run, text="anyone?")  # a run that has ended: refused, socket open
    assert lab.next("refused")["reason"] == f"run {run} has ended"


@pytest.mark.integration
def test_a_disconnected_child_exits_by_itself_with_code_0(lab, server):
    started = lab.start(type="fork")
    run = started["run"]
    assert lab.next("message", run)["data"]["type"] == "ready"
    lab.send(type="disconnect", run=run)
    exit_ = lab.next("exit", run, timeout=5)
    assert (exit_["code"], exit_["signal"]) == (0, None)
    assert started["pid"] not in children_of_workers(server)


@pytest.mark.integration
def test_disconnect_needs_a_channel(lab):
    sleep = lab.start(type="spawn", command="sleep", arg=3)
    lab.send(type="disconnect", run=sleep["run"])
    assert lab.next("refused")["reason"] == f"run {sleep['run']}: only a forked child has a channel"
    lab.send(type="kill", run=sleep["run"])
    lab.next("exit", sleep["run"])


@pytest.mark.integration
def test_closing_the_connection_kills_its_children(server, admin_token):
    lab = Lab(server, admin_token)
    pids = [lab.start(type="fork")["pid"], lab.start(type="spawn", command="sleep", arg=10)["pid"]]
    assert set(pids) <= set(children_of_workers(server))
    lab.ws.close()
    assert wait_until(lambda: not set(pids) & set(children_of_workers(server)), timeout=5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)  # reaped: no zombies


@pytest.mark.integration
def test_a_page_runs_at_most_four_children(lab):
    pids = [lab.start(type="fork")["pid"] for _ in range(4)]
    lab.send(type="spawn", command="sleep", arg=1)
    assert lab.next("refused")["reason"] == "you run 4 children already: kill or disconnect one"
    assert len(set(pids)) == 4


# -- the allow-list and who may use it ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (
            {"type": "spawn", "command": "rm", "arg": 1},
            "command must be one of count, sleep, ls, uname",
        ),
        (
            {"type": "spawn", "command": "sleep", "arg": 11},
            "sleep needs arg, a whole number from 1 to 10",
        ),
        (
            {"type": "spawn", "command": "sleep", "arg": "1; rm -rf /"},
            "sleep needs arg, a whole number from 1 to 10",
        ),
        ({"type": "spawn", "command": "ls", "arg": "/etc"}, "ls takes no argument"),
        (
            {"type": "exec", "line": "cat /etc/passwd"},
            "line must be one of: echo $HOME / ls static | wc -l / echo $((6 * 7))",
        ),
        ({"type": "send", "run": "1", "text": "x"}, "run must be the number of a run"),
        ({"type": "shell"}, "type must be spawn, exec, execFile, fork, send, kill or disconnect"),
    ],
)
def test_anything_outside_the_allow_list_closes_1008_and_runs_nothing(
    server, admin_token, frame, reason
):
    lab = Lab(server, admin_token)
    lab.send(**frame)
    assert close_of(lab.ws) == (1008, reason)
    assert not children_of_workers(server)


@pytest.mark.integration
def test_the_lab_is_for_administrators_only(server, alice_token, admin_token):
    assert requests.get(f"{server.url}/admin/lab", timeout=10).status_code == 401
    assert (
        requests.get(
            f"{server.url}/admin/lab",
            timeout=10,
            headers={"Authorization": f"Bearer {alice_token}"},
        ).status_code
        == 403
    )
    page = requests.get(
        f"{server.url}/admin/lab", timeout=10, headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert page.status_code == 200 and "lab.js" in page.text
    for query, reason in (
        ("", "login required"),
        (f"?access_token={alice_token}", "administrators only"),
    ):
        ws = websocket.create_connection(f"{server.ws_url}/admin/lab/ws{query}", timeout=10)
        assert close_of(ws) == (1008, reason)  # before it reads a frame
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:  # another site's page
        websocket.create_connection(
            f"{server.ws_url}/admin/lab/ws?access_token={admin_token}",
            timeout=10,
            origin="https://evil.example",
        )
    assert refused.value.status_code == 403
    assert not children_of_workers(server)


@pytest.mark.integration
@pytest.mark.chaos
def test_children_end_when_their_worker_stops_or_dies(start_server, admin_token):
    server = start_server(workers=1)
    lab = Lab(server, admin_token)
    pids = [lab.start(type="fork")["pid"], lab.start(type="spawn", command="sleep", arg=10)["pid"]]
    os.kill(server.process.pid, signal.SIGHUP)  # a graceful reload: the worker stops
    assert close_of(lab.ws)[0] == 1012  # service restart: come back
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=5)
    # A worker killed outright runs no cleanup: its forked child sees EOF and goes by itself.
    lab = Lab(server, admin_token)
    fork = lab.start(type="fork")
    assert lab.next("message", fork["run"])["data"]["type"] == "ready"
    os.kill(parent_of(fork["pid"]), signal.SIGKILL)
    assert wait_until(lambda: not Path(f"/proc/{fork['pid']}").exists(), timeout=5)


@pytest.mark.unit
def test_a_child_past_its_time_limit_is_killed(monkeypatch):
    """core.children on its own (threads, no server): the limit, shortened."""
    from core import children

    monkeypatch.setattr(children, "TIME_LIMIT", 0.5)
    events = []
    began = time.monotonic()
    child = children.start(["sleep", "10"], owner="test", emit=events.append)
    assert wait_until(lambda: events, timeout=5)
    assert events == [
        {"type": "exit", "code": None, "signal": "SIGTERM", "reason": "time limit (0.5 s)"}
    ]
    assert time.monotonic() - began < 3 and child.proc.returncode == -signal.SIGTERM
    assert children.running() == 0


# -- the worker goes on serving -------------------------------------------------------------


@pytest.fixture(scope="module")
def one_worker(start_server):
    """One worker: every request below reaches the worker running the children."""
    return start_server(workers=1)


@pytest.mark.integration
def test_the_worker_answers_others_while_children_run(one_worker, admin_token):
    lab = Lab(one_worker, admin_token)
    sleep = lab.start(type="spawn", command="sleep", arg=5)
    fork = lab.start(type="fork")
    began = time.monotonic()
    while time.monotonic() - began < 3:
        asked = time.monotonic()
        assert requests.get(f"{one_worker.url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - asked < 2  # not held up by the child or its pipes
        time.sleep(0.3)
    assert (
        lab.next("message", fork["run"])["data"]["type"] == "ready"
    )  # the child streams meanwhile
    assert lab.next("exit", sleep["run"], timeout=10)["code"] == 0
    assert time.monotonic() - began >= 4  # it did run its 5 s
    lab.close()
    assert wait_until(lambda: not children_of_workers(one_worker), timeout=5)


# -- the page, in Chromium ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.browser
def test_the_page_spawns_and_forks(server, admin_token, page):
    page.goto(server.url + "/auth/")
    login = page.evaluate("""async () => (await fetch('/auth/login', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(
        {username: 'test-admin', password: 'test-admin-password'})})).status""")
    assert login == 200
    page.goto(server.url + "/admin/lab")
    page.locator("#status.ok").wait_for(timeout=15_000)

    page.select_option("#spawn-command", "count")
    page.fill("#spawn-arg", "4")
    page.click("#spawn")
    spawned = page.locator("article.run[data-kind=spawn]")
    spawned.locator("text=line 4 of 4").wait_for(timeout=10_000)
    spawned.locator("text=exited with code 0").wait_for(timeout=10_000)
    assert spawned.locator("pre .stderr").inner_text() == "line 3 of 4 (on stderr)"

    page.click("#fork")
    forked = page.locator("article.run[data-kind=fork]")
    forked.locator("pre div", has_text='"count":1}').wait_for(timeout=10_000)
    pid = int(forked.get_attribute("data-pid"))
    assert parent_of(pid) in worker_pids(server)
    forked.locator("input").fill("stressed")
    forked.get_by_role("button", name="send").click()
    forked.locator("text=desserts").wait_for(timeout=10_000)
    forked.get_by_role("button", name="kill").click()
    forked.locator("text=killed by SIGTERM").wait_for(timeout=10_000)
    wait_for(page, "() => document.querySelectorAll('article.run[data-ended]').length === 2")
    assert wait_until(lambda: not children_of_workers(server), timeout=5)
