"""Redis over TLS (`REDIS_URL=rediss://...`), as docs/deploy.md advises
across hosts.

The bundled redis-server is built without TLS, so the tests put a TLS
terminator in front of it (certificates from trustme's throwaway CA). Every
Redis client of the app goes through it: the workers' pools, each worker's
hub listener, the rate limiter, and the gunicorn master's own reporter.
"""

import asyncio
import json
import socket
import ssl
import threading
from urllib.parse import quote

import pytest
import requests
import trustme

from core.keys import Keys
from tests.clients import SSEClient, wait_until


class TLSTerminator:
    """Accepts TLS on a free port and relays the plaintext to `target`."""

    def __init__(self, target, context):
        self.target = target
        self.context = context
        self.sessions = 0  # completed TLS handshakes
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=self.context)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _relay(self, client_reader, client_writer):
        self.sessions += 1
        redis_reader, redis_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(
            _pump(client_reader, redis_writer),
            _pump(redis_reader, client_writer),
            return_exceptions=True,
        )

    def close(self):
        async def shutdown():
            self.server.close()
            relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in relays:
                task.cancel()
            await asyncio.gather(*relays, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _pump(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def terminator(ca, redis_server):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    proxy = TLSTerminator(("127.0.0.1", redis_server.port), context)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.mark.integration
def test_the_whole_app_runs_over_rediss(start_server, terminator, ca_file, rdb, channel):
    url = (
        f"rediss://127.0.0.1:{terminator.port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca_file))}"
    )
    server = start_server(REDIS_URL=url, LOGIN_RATE_LIMIT="3 per 7 minutes")
    # publish (the workers' pools) and deliver (a hub listener)
    sse = SSEClient(f"{server.url}/sub/{channel}?last_event_id=0")
    texts = [f"over TLS {i}" for i in range(10)]
    for text in texts:
        server.publish(channel, text)
    assert sse.wait_count(len(texts)), sse.items
    assert [item["data"] for item in sse.items] == texts
    sse.close()
    # the rate limiter's storage counts attempts (a limit no other test uses)
    statuses = [
        requests.post(
            f"{server.url}/auth/token",
            timeout=10,
            json={"username": "nobody", "password": "wrong-password"},
        ).status_code
        for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    # the master's own reporter (a few raw RESP commands over TLS)
    master = Keys("rt:").process(socket.gethostname(), server.process.pid)
    assert wait_until(
        lambda: json.loads(rdb.get(master) or "{}").get("role") == "master", timeout=10
    )
    assert terminator.sessions >= 3  # two workers' listeners and the master, at least
    server.stop()  # while Redis is still reachable: it records the workers' exits
    log = open(server.log_path).read()
    assert "not reporting" not in log and "could not record" not in log, log[-3000:]


@pytest.mark.integration
@pytest.mark.slow
def test_rediss_refuses_a_server_whose_certificate_it_cannot_verify(base_env, terminator, tmp_path):
    """Without the CA, the certificate does not verify: no worker talks to
    that Redis, /healthz says so, and nothing falls back to plaintext."""
    from tests.servers import GunicornServer

    url = f"rediss://127.0.0.1:{terminator.port}/0"
    server = GunicornServer(base_env, tmp_path / "server.log", workers=1, REDIS_URL=url)
    try:
        with pytest.raises(RuntimeError, match="did not become healthy"):
            server.start(timeout=8)
    finally:
        server.stop()
    log = open(server.log_path).read()
    assert "CERTIFICATE_VERIFY_FAILED" in log, log[-3000:]


@pytest.mark.unit
def test_the_master_checks_certificates_and_host_names_by_default(ca_file):
    """The master's reporter is made like every worker's client (redis-py,
    core/redis_connections.py): a rediss:// URL checks the server's
    certificate and name unless the URL says otherwise."""
    from core.config import load_settings
    from core.monitor import _master_client
    from core.redis_connections import RedisConnections

    url = f"rediss://user:p%40ss@redis.internal:6380/2?ssl_ca_certs={quote(str(ca_file))}"
    settings = {**load_settings({"REDIS_URL": url, "SECRET_KEY": "x"}), "REDIS_URL": url}
    for client in (RedisConnections.from_settings(settings).client(), _master_client(settings)):
        connection = client.connection_pool.make_connection()  # not connected yet
        assert (connection.host, connection.port, connection.db) == ("redis.internal", 6380, 2)
        assert (connection.username, connection.password) == ("user", "p@ss")
        assert connection.cert_reqs == ssl.CERT_REQUIRED and connection.check_hostname
