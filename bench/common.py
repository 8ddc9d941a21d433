"""What the benchmarks share: a private redis-server and gunicorn to measure."""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import SETTINGS
from core.embedded_redis import EmbeddedRedis, free_port
from tests.servers import GunicornServer

# A load generator is one client address with thousands of clients: the
# per-address quotas (core/quotas.py) would refuse it, so benchmarks lift them.
UNLIMITED = {
    "CONNECTIONS_PER_ADDRESS": "100000000",
    **{name: "100000000 per minute" for name in SETTINGS if name.endswith("_RATE_LIMIT")},
}


@contextlib.contextmanager
def redis_server():
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        yield server


@contextlib.contextmanager
def gunicorn_server(redis_url, workers=2, **env_overrides):
    """gunicorn with the shipped gunicorn.conf.py (the tests' launcher, with
    the quotas lifted and a private instance directory); yields (url, master
    pid, its environment)."""
    with tempfile.TemporaryDirectory() as instance:
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "INSTANCE_DIR": instance,
            "LOG_LEVEL": "warning",
            "JOB_WORKERS": "0",  # the master's children are its web workers alone
            **UNLIMITED,
        }
        server = GunicornServer(
            env, Path(instance) / "gunicorn.log", workers=workers, **env_overrides
        ).start(timeout=60)
        try:
            yield server.url, server.process.pid, server.env
        finally:
            server.stop()


def rss_kb(pid):
    """Resident memory of one process, in KB."""
    return proc_status(pid).get("VmRSS", 0)


def worker_pids(master_pid):
    """The gunicorn master's worker processes."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master_pid)], capture_output=True, text=True
    ).stdout.split()
    return [int(p) for p in out]


def cpu_seconds(pids):
    """User + system CPU the processes have used so far."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_for(seconds, threads, stop):
    """Start `threads`, let them run `seconds`, then set `stop` and join them."""
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()


def machine():
    import platform

    return f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}"


def proc_status(pid):
    """The numeric fields of /proc/<pid>/status ({"VmRSS": KB, "VmSize": KB,
    "Threads": n, ...}); {} once the process is gone."""
    fields = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0])
    return fields


# -- the Node.js peer (bench/peers/node) --------------------------------------------

NODE_PEER = ROOT / "bench" / "peers" / "node"


def node_peer_ready():
    """None when the Node.js peer can run (after `npm ci` if its node_modules
    is missing), else why it cannot."""
    import shutil

    if not shutil.which("node"):
        return "node is not installed (no `node` on PATH)"
    if not (NODE_PEER / "node_modules").is_dir():
        if not shutil.which("npm"):
            return "npm is not installed, and bench/peers/node/node_modules is missing"
        print("installing the Node.js peer: npm ci in bench/peers/node", flush=True)
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_PEER)
        if done.returncode:
            return f"`npm ci` in bench/peers/node failed (exit {done.returncode})"
    return None


def node_version():
    out = subprocess.run(["node", "--version"], capture_output=True, text=True)
    return out.stdout.strip()


@contextlib.contextmanager
def node_peer_server(redis_url, workers=2, **env_overrides):
    """bench/peers/node/server.js (a cluster of `workers`); yields (url, primary pid)
    once every worker listens and has its Redis subscription."""
    import select

    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PORT": str(port),
        "WORKERS": str(workers),
        **{k: str(v) for k, v in env_overrides.items()},
    }
    server = subprocess.Popen(
        ["node", "server.js"], cwd=NODE_PEER, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 30
        while True:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("the Node.js peer did not start")
            if select.select([server.stdout], [], [], 0.5)[0]:
                line = server.stdout.readline()
                if line.startswith("listening"):
                    break
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        children = worker_pids(server.pid)
        server.terminate()
        server.wait()
        for pid in children:  # the primary SIGTERMs them; make sure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
