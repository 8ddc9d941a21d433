"""The shipped deploy/nginx.conf, run in front of gunicorn instances on this
machine: for tests/test_nginx.py and bench/hostile.py --via-nginx."""

import contextlib
import os
import re
import shutil
import subprocess
import time

import requests

from core.embedded_redis import free_port
from tests.servers import ROOT

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
)
SKIP_REASON = "nginx is not installed (apt-get install nginx; .ci/run installs it)"


def render_site(upstreams, port, server_lines=""):
    """deploy/nginx.conf with these instances and listen address, and
    `server_lines` added to its server block; the rest of the shipped file is
    used as is."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    lines = "".join(f"    server 127.0.0.1:{p};\n" for p in upstreams)
    text, n = re.subn(r"(?:^    server 127\.0\.0\.1:\d+;\n)+", lines, text, flags=re.MULTILINE)
    assert n == 1, "deploy/nginx.conf: upstream server lines not found"
    text, n = re.subn(
        r"^    listen 80;\n",
        f"    listen 127.0.0.1:{port};\n{server_lines}",
        text,
        flags=re.MULTILINE,
    )
    assert n == 1, "deploy/nginx.conf: `listen 80;` not found"
    text, n = re.subn(r"^    listen \[::\]:80;\n", "", text, flags=re.MULTILINE)
    assert n == 1
    return text


MAIN_CONF = """\
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
daemon off;
events {{ worker_connections {connections}; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


class NginxFailed(RuntimeError):
    pass


@contextlib.contextmanager
def nginx_in_front(upstreams, tmp, server_lines="", connections=1024):
    """nginx (one worker process) with the shipped site in front of the
    gunicorn instances listening on `upstreams` (ports); yields its URL once it
    answers /healthz. Its files go in `tmp` (a pathlib.Path)."""
    port = free_port()
    (tmp / "site.conf").write_text(render_site(upstreams, port, server_lines))
    # As root, nginx's workers would switch to `nobody`, who cannot enter tmp.
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(MAIN_CONF.format(tmp=tmp, user=user, connections=connections))
    log = open(tmp / "stderr.log", "wb")
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf")],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise NginxFailed(
                    "nginx exited: "
                    + (tmp / "stderr.log").read_text()
                    + (tmp / "error.log").read_text()
                )
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise NginxFailed("nginx did not answer: " + (tmp / "error.log").read_text())
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
