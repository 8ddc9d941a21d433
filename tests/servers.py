"""The one gunicorn launcher of the tests and the benchmarks: the shipped
`gunicorn -c gunicorn.conf.py 'app:create_app()'` on a free port, with settings as
environment overrides, its output in a log file that a failure quotes."""

import subprocess
import sys
import time
from pathlib import Path

import requests

from core.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent


def gunicorn_command(python: str = sys.executable) -> list[str]:
    """What `make run` runs (from ROOT): also for masters a test expects to exit."""
    return [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]


class GunicornServer:
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` on a free port, with env overrides."""

    def __init__(self, env, log_path, workers=2, python=sys.executable, **settings):
        self.python = python  # another virtualenv's, to test an install
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **env,
            "BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": str(workers),
            **{k: str(v) for k, v in settings.items()},
        }
        self.process = None

    def start(self, timeout=20):
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            gunicorn_command(self.python),
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log()
                self._log.close()
                raise RuntimeError(f"gunicorn exited early:\n{log}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        log = self.log()
        self.stop()  # not left running after the test that started it
        raise RuntimeError(f"gunicorn did not become healthy:\n{log}")

    def log(self):
        return Path(self.log_path).read_text(errors="replace")[-5000:]

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    default_token = None  # set by the admin_token fixture

    def publish(self, channel, data, content_type="text/plain", token=None):
        token = token or self.default_token
        response = requests.post(
            f"{self.url}/pub/{channel}",
            data=data.encode() if isinstance(data, str) else data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        return response.json()["id"], response.headers["X-Served-By"]
