"""Settings: dev fills in secrets, production insists on them."""

import os
import subprocess
import sys

import pytest

from core.config import SETTINGS, ConfigError, load_settings
from tests.servers import ROOT


def test_dev_generates_secrets_once_and_keeps_them(tmp_path):
    env = {"INSTANCE_DIR": str(tmp_path)}
    first = load_settings(env)
    second = load_settings(env)
    assert len(first["SECRET_KEY"]) >= 32
    assert first["SECRET_KEY"] == second["SECRET_KEY"]
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("missing", ["SECRET_KEY", "REDIS_URL"])
def test_production_refuses_to_start_without_secrets(tmp_path, missing):
    env = {"APP_ENV": "production", "INSTANCE_DIR": str(tmp_path), "SECRET_KEY": "s" * 40,
           "REDIS_URL": "redis://localhost"}
    del env[missing]
    with pytest.raises(ConfigError, match=missing):
        load_settings(env)
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize("name, value", [("STREAM_MAXLEN", "lots"), ("STREAM_MAXLEN", "-5"),
                                         ("APP_ENV", "staging"), ("SERVED_BY_HEADER", "maybe")])
def test_malformed_settings_name_the_culprit(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({"INSTANCE_DIR": str(tmp_path), name: value})


@pytest.mark.parametrize("value", ["h1", "h1:26379,", "h1:port", "h1:0", ":26379", "h1:70000"])
def test_malformed_sentinel_list_is_one_configuration_error(tmp_path, value):
    with pytest.raises(ConfigError, match=r"REDIS_SENTINELS=.*expected host:port"):
        load_settings({"INSTANCE_DIR": str(tmp_path), "REDIS_SENTINELS": value})


def test_sentinel_settings_are_parsed_and_stand_in_for_redis_url(tmp_path):
    env = {"APP_ENV": "production", "SECRET_KEY": "s", "INSTANCE_DIR": str(tmp_path),
           "REDIS_SENTINELS": "s1.internal:26379, [::1]:26380", "REDIS_PASSWORD": "pw"}
    settings = load_settings(env)
    assert settings["REDIS_SENTINELS"] == [("s1.internal", 26379), ("::1", 26380)]
    assert settings["REDIS_SENTINEL_SERVICE"] == "mymaster"
    assert settings["REDIS_URL"] is None
    # dev: a leftover instance/redis.url of `make run` is not mixed in
    (tmp_path / "redis.url").write_text("redis://127.0.0.1:1/0\n")
    assert load_settings({**env, "APP_ENV": "dev"})["REDIS_URL"] is None


@pytest.mark.parametrize("extra, culprit", [
    ({"REDIS_SENTINELS": "h:26379"}, "REDIS_URL and REDIS_SENTINELS are both set"),
    ({"REDIS_PASSWORD": "pw"}, "REDIS_PASSWORD: only with REDIS_SENTINELS"),
    ({"REDIS_TLS": "1"}, "REDIS_TLS: only with REDIS_SENTINELS"),
])
def test_redis_url_mixed_with_sentinel_settings_is_refused(tmp_path, extra, culprit):
    with pytest.raises(ConfigError, match=culprit):
        load_settings({"INSTANCE_DIR": str(tmp_path), "REDIS_URL": "redis://x", **extra})


def test_production_defaults_hide_the_worker_and_never_seed_demo_users(tmp_path):
    env = {"APP_ENV": "production", "SECRET_KEY": "s", "DEMO_USERS": "1",
           "REDIS_URL": "redis://x", "INSTANCE_DIR": str(tmp_path)}
    assert load_settings(env)["SERVED_BY_HEADER"] is False
    assert load_settings(env)["DEMO_USERS"] is False  # never seeded in production
    assert load_settings({"INSTANCE_DIR": str(tmp_path)})["SERVED_BY_HEADER"] is True


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in SETTINGS if f"| `{name}` |" not in readme]
    assert missing == []


@pytest.mark.parametrize("env", [{"REDIS_SENTINELS": "sentinel-without-port"},
                                 {"REDIS_SENTINELS": "h:26379", "REDIS_URL": "redis://x"}])
def test_gunicorn_stops_at_a_bad_redis_setting_with_one_line(tmp_path, env):
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "INSTANCE_DIR": str(tmp_path), "REDIS_URL": "", "BIND": "127.0.0.1:0",
             **env})
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if "REDIS_SENTINELS" in line]
    assert len(errors) == 1 and errors[0].startswith("configuration error: "), result.stderr
    assert "Traceback" not in result.stderr


def test_redis_pool_size_bounds_each_workers_pool(app):
    from app import create_app

    assert app.extensions["redis"].connection_pool.max_connections == 64
    small = create_app({"TESTING": True, "REDIS_POOL_SIZE": 3})
    assert small.extensions["redis"].connection_pool.max_connections == 3
