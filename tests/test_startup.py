"""Starting and stopping `make run`'s server as a new user would: a taken
port, a second server on the same instance directory, a reload (HUP), a stop.

Real gunicorn masters (`gunicorn -c gunicorn.conf.py 'app:create_app()'`, what `make run`
runs) with their embedded redis-server.
"""

import os
import signal
import socket
import subprocess
import time

import pytest
import requests

from core.embedded_redis import free_port
from tests.clients import one_line_saying, wait_until, worker_pids
from tests.servers import ROOT, GunicornServer, gunicorn_command

pytestmark = pytest.mark.integration


def run_to_exit(env, timeout=30):
    """Start a server that is expected to refuse to start; its exit."""
    return subprocess.run(
        gunicorn_command(),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def dev_env(base_env, tmp_path):
    """`make run`'s environment: no REDIS_URL (the server starts its own)."""
    return {**base_env, "REDIS_URL": "", "INSTANCE_DIR": str(tmp_path / "instance")}


def redis_alive(url):
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def first(dev_env, tmp_path):
    """A `make run` server with its embedded Redis (`first.redis_url`)."""
    server = GunicornServer(dev_env, tmp_path / "first.log").start()
    server.url_file = tmp_path / "instance" / "redis.url"
    server.redis_url = server.url_file.read_text().strip()
    yield server
    server.stop()


def test_a_second_server_on_the_same_port_stops_at_once_and_leaves_the_first_alone(first):
    pids = worker_pids(first)
    second = run_to_exit({**first.env})
    assert second.returncode != 0
    assert one_line_saying(second, "cannot listen on").endswith(
        f"127.0.0.1:{first.port}: Address already in use (another server there? stop it, "
        "or choose another PORT)"
    )
    # the first one still serves every request, with its own workers and Redis
    served_by = {
        requests.get(f"{first.url}/healthz", timeout=5).headers["X-Served-By"] for _ in range(20)
    }
    assert {int(s.split("/")[1]) for s in served_by} <= pids
    assert first.url_file.read_text().strip() == first.redis_url
    assert redis_alive(first.redis_url)
    assert any(p.name.startswith("gunicorn-") for p in first.url_file.parent.iterdir())


def test_a_port_held_by_another_program_stops_the_server_with_one_line(dev_env):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        started = time.monotonic()
        result = run_to_exit({**dev_env, "BIND": f"127.0.0.1:{port}"})
    assert result.returncode != 0
    assert "Address already in use" in one_line_saying(result, "cannot listen on")
    assert "Serving on" not in result.stdout + result.stderr
    assert time.monotonic() - started < 15  # at once, not after retries
    assert not (os.path.exists(os.path.join(dev_env["INSTANCE_DIR"], "redis.url")))


@pytest.mark.slow
def test_a_second_server_on_the_same_instance_directory_refuses_its_embedded_redis(first, tmp_path):
    other_port = {**first.env, "BIND": f"127.0.0.1:{free_port()}"}
    second = run_to_exit(other_port)
    assert second.returncode != 0
    line = one_line_saying(second, "is in use by another server")
    assert f"(pid {first.process.pid})" in line
    assert first.url_file.read_text().strip() == first.redis_url
    assert redis_alive(first.redis_url)
    # a server with a Redis of its own may share the directory (its secrets)
    shared = GunicornServer(
        {**other_port, "REDIS_URL": first.redis_url}, tmp_path / "shared.log"
    ).start()
    shared.stop()
    assert first.url_file.read_text().strip() == first.redis_url
    assert requests.get(f"{first.url}/healthz", timeout=5).status_code == 200


@pytest.mark.slow
def test_after_a_reload_and_a_stop_the_redis_url_file_and_redis_are_gone(dev_env, tmp_path):
    server = GunicornServer(dev_env, tmp_path / "server.log").start()
    url_file = tmp_path / "instance" / "redis.url"
    redis_url = url_file.read_text().strip()
    old = worker_pids(server)  # the master's children: 2 workers and the Redis
    os.kill(server.process.pid, signal.SIGHUP)  # gunicorn re-reads gunicorn.conf.py
    # both workers replaced, the Redis kept
    assert wait_until(
        lambda: len(old - worker_pids(server)) == 2 and len(worker_pids(server) - old) == 2,
        timeout=30,
    )
    assert url_file.read_text().strip() == redis_url and redis_alive(redis_url)
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    server.stop()
    assert server.process.returncode == 0
    assert not url_file.exists()
    assert wait_until(lambda: not redis_alive(redis_url), timeout=10)


@pytest.mark.slow
def test_web_concurrency_0_starts_one_worker_per_core(base_env, tmp_path):
    server = GunicornServer(base_env, tmp_path / "server.log", workers=0).start()
    try:
        # (the master's children: its workers; this server uses the tests' Redis)
        assert wait_until(lambda: len(worker_pids(server)) == len(os.sched_getaffinity(0)))
    finally:
        server.stop()
