"""What the benchmarks share: a private redis-server and gunicorn to measure."""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.embedded_redis import EmbeddedRedis, free_port


@contextlib.contextmanager
def redis_server():
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        yield server


@contextlib.contextmanager
def gunicorn_server(redis_url, workers=2, **env_overrides):
    """gunicorn with the shipped gunicorn.conf.py; yields (url, master pid)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as instance:
        env = {**os.environ, "REDIS_URL": redis_url, "BIND": f"127.0.0.1:{port}",
               "WEB_CONCURRENCY": str(workers), "INSTANCE_DIR": instance,
               "LOG_LEVEL": "warning", **{k: str(v) for k, v in env_overrides.items()}}
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if requests.get(url + "/healthz", timeout=1).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.1)
            yield url, server.pid, env
        finally:
            server.terminate()
            server.wait()


def machine():
    import platform

    return f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}"
