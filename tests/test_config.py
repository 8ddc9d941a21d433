"""Settings: dev fills in secrets, production insists on them."""

import json
import os
import subprocess
import sys

import pytest

from core.config import SETTINGS, ConfigError, load_settings
from tests.servers import ROOT, gunicorn_command


@pytest.mark.unit
def test_dev_generates_secrets_once_and_keeps_them(tmp_path):
    env = {"INSTANCE_DIR": str(tmp_path)}
    first = load_settings(env)
    second = load_settings(env)
    assert len(first["SECRET_KEY"]) >= 32
    assert first["SECRET_KEY"] == second["SECRET_KEY"]
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


@pytest.mark.unit
@pytest.mark.parametrize("missing", ["SECRET_KEY", "REDIS_URL"])
def test_production_refuses_to_start_without_secrets(tmp_path, missing):
    env = {
        "APP_ENV": "production",
        "INSTANCE_DIR": str(tmp_path),
        "SECRET_KEY": "s" * 40,
        "REDIS_URL": "redis://localhost",
    }
    del env[missing]
    with pytest.raises(ConfigError, match=missing):
        load_settings(env)
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, value",
    [
        ("STREAM_MAXLEN", "lots"),
        ("STREAM_MAXLEN", "-5"),
        ("APP_ENV", "staging"),
        ("SERVED_BY_HEADER", "maybe"),
    ],
)
def test_malformed_settings_name_the_culprit(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({"INSTANCE_DIR": str(tmp_path), name: value})


@pytest.mark.unit
@pytest.mark.parametrize("value", ["h1", "h1:26379,", "h1:port", "h1:0", ":26379", "h1:70000"])
def test_malformed_sentinel_list_is_one_configuration_error(tmp_path, value):
    with pytest.raises(ConfigError, match=r"REDIS_SENTINELS=.*expected host:port"):
        load_settings({"INSTANCE_DIR": str(tmp_path), "REDIS_SENTINELS": value})


@pytest.mark.unit
def test_sentinel_settings_are_parsed_and_stand_in_for_redis_url(tmp_path):
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": "s",
        "INSTANCE_DIR": str(tmp_path),
        "REDIS_SENTINELS": "s1.internal:26379, [::1]:26380",
        "REDIS_PASSWORD": "pw",
    }
    settings = load_settings(env)
    assert settings["REDIS_SENTINELS"] == [("s1.internal", 26379), ("::1", 26380)]
    assert settings["REDIS_SENTINEL_SERVICE"] == "mymaster"
    assert settings["REDIS_URL"] is None
    # dev: a leftover instance/redis.url of `make run` is not mixed in
    (tmp_path / "redis.url").write_text("redis://127.0.0.1:1/0\n")
    assert load_settings({**env, "APP_ENV": "dev"})["REDIS_URL"] is None


@pytest.mark.unit
@pytest.mark.parametrize(
    "extra, culprit",
    [
        ({"REDIS_SENTINELS": "h:26379"}, "REDIS_URL and REDIS_SENTINELS are both set"),
        ({"REDIS_PASSWORD": "pw"}, "REDIS_PASSWORD: only with REDIS_SENTINELS"),
        ({"REDIS_TLS": "1"}, "REDIS_TLS: only with REDIS_SENTINELS"),
    ],
)
def test_redis_url_mixed_with_sentinel_settings_is_refused(tmp_path, extra, culprit):
    with pytest.raises(ConfigError, match=culprit):
        load_settings({"INSTANCE_DIR": str(tmp_path), "REDIS_URL": "redis://x", **extra})


@pytest.mark.unit
def test_production_defaults_hide_the_worker_and_never_seed_demo_users(tmp_path):
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": "s",
        "DEMO_USERS": "1",
        "REDIS_URL": "redis://x",
        "INSTANCE_DIR": str(tmp_path),
    }
    assert load_settings(env)["SERVED_BY_HEADER"] is False
    assert load_settings(env)["DEMO_USERS"] is False  # never seeded in production
    assert load_settings({"INSTANCE_DIR": str(tmp_path)})["SERVED_BY_HEADER"] is True


@pytest.mark.unit
def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in SETTINGS if f"| `{name}` |" not in readme]
    assert missing == []


@pytest.mark.unit
@pytest.mark.parametrize(
    "extra",
    [
        {"REDIS_CLUSTER": "1"},
        {"REDIS_CLUSTER": "1", "REDIS_SENTINELS": "h:26379"},
    ],
)
def test_a_cluster_needs_the_url_of_a_node_and_no_sentinels(tmp_path, extra):
    with pytest.raises(ConfigError, match="REDIS_CLUSTER: set REDIS_URL to any node"):
        load_settings({"INSTANCE_DIR": str(tmp_path), **extra})


@pytest.mark.unit
@pytest.mark.parametrize(
    "env, culprit",
    [
        ({"REDIS_SENTINELS": "sentinel-without-port"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "h:26379", "REDIS_URL": "redis://x"}, "REDIS_SENTINELS"),
        ({"REDIS_CLUSTER": "1"}, "REDIS_CLUSTER"),
        ({"REDIS_CLUSTER": "1", "REDIS_URL": "redis://127.0.0.1:1"}, "cannot reach 127.0.0.1:1"),
    ],
)
def test_gunicorn_stops_at_a_bad_redis_setting_with_one_line(tmp_path, env, culprit):
    result = subprocess.run(
        gunicorn_command(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "INSTANCE_DIR": str(tmp_path),
            "REDIS_URL": "",
            "BIND": "127.0.0.1:0",
            **env,
        },
    )
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if culprit in line]
    assert len(errors) == 1 and errors[0].startswith("configuration error: "), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, value",
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("KEEPALIVE", "-1"),
        ("REUSE_PORT", "maybe"),
        ("LOG_LEVEL", "loud"),
        ("WEB_CONCURRENCY", "auto!"),
    ],
)
def test_gunicorn_stops_at_a_bad_server_setting_with_one_line(tmp_path, name, value):
    """The server's knobs go through the same table and rule as the app's."""
    result = subprocess.run(
        gunicorn_command(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "INSTANCE_DIR": str(tmp_path), "BIND": "", name: value},
    )
    assert result.returncode != 0
    if name == "WEB_CONCURRENCY":  # gunicorn itself reads it as an int, before our config
        assert "WEB_CONCURRENCY" in result.stderr
        return
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"configuration error: {name}={value!r}: "), lines
    assert "Traceback" not in result.stderr


def _gunicorn_config(env):
    """What gunicorn.conf.py sets, read the way gunicorn reads it."""
    code = (
        "import runpy, json; c = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps({k: c[k] for k in ('bind', 'reuse_port', 'reload', 'workers', "
        "'keepalive', 'accesslog')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.unit
def test_gunicorn_config_reads_booleans_by_the_one_rule():
    """`REUSE_PORT=off` used to mean on, and `RELOAD=on` off."""
    config = _gunicorn_config({"REUSE_PORT": "off", "RELOAD": "on", "BIND": ""})
    assert config["reuse_port"] is False and config["reload"] is True
    config = _gunicorn_config(
        {
            "REUSE_PORT": "",
            "RELOAD": "",
            "HOST": "0.0.0.0",
            "PORT": "9001",
            "BIND": "",
            "ACCESS_LOG": "-",
            "WEB_CONCURRENCY": "3",
        }
    )
    assert config == {
        "bind": "0.0.0.0:9001",
        "reuse_port": True,
        "reload": False,
        "workers": 3,
        "keepalive": 15,
        "accesslog": "-",
    }


@pytest.mark.unit
def test_importing_the_app_module_does_nothing(tmp_path):
    """gunicorn calls the factory in each worker; the import reads no setting,
    writes no file and needs no Redis."""
    env = {
        **os.environ,
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "REDIS_URL": "",
        "APP_ENV": "production",
        "SECRET_KEY": "",
    }  # create_app() would refuse this
    subprocess.run(
        [sys.executable, "-c", "import app; assert callable(app.create_app)"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    assert not (tmp_path / "instance").exists()


@pytest.mark.integration
def test_redis_pool_size_bounds_each_workers_pool(app):
    from app import create_app

    assert app.extensions["redis"].connection_pool.max_connections == 64
    small = create_app({"TESTING": True, "REDIS_POOL_SIZE": 3})
    assert small.extensions["redis"].connection_pool.max_connections == 3
