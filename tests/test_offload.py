"""core.offload.run_blocking: the CPU_OFFLOAD setting decides where CPU work runs."""

import threading

import pytest
from flask import Flask

from core import offload

pytestmark = pytest.mark.unit


def test_run_blocking_uses_the_thread_pool_only_with_cpu_offload_on(monkeypatch):
    # As if gevent had patched the standard library (the gunicorn worker's case).
    monkeypatch.setattr(offload.monkey, "is_module_patched", lambda name: True)
    app = Flask(__name__)
    caller = threading.get_ident()
    app.config["CPU_OFFLOAD"] = False
    with app.app_context():
        assert offload.run_blocking(threading.get_ident) == caller  # on the hub's thread
    app.config["CPU_OFFLOAD"] = True
    with app.app_context():
        assert offload.run_blocking(threading.get_ident) != caller  # a pool thread
    assert offload.run_blocking(threading.get_ident) != caller  # no app: offloaded
