"""gunicorn as cluster and PM2: reloads that hand streams over, the memory
limit, and process monitoring."""

import json
import os
import signal
import time

import pytest
import requests

from core.hub import Hub
from core.keys import Keys
from tests.clients import LongPoller, SSEClient, WSClient, wait_until, worker_pids

pytestmark = pytest.mark.integration


def test_reload_hands_every_stream_over_without_loss(start_server, redis_server, rdb, channel):
    server = start_server()
    publisher = Hub(rdb, redis_server.url)
    sse = SSEClient(f"{server.url}/sub/{channel}")
    ws = WSClient(f"{server.ws_url}/sub/{channel}/ws")
    poller = LongPoller(f"{server.url}/sub/{channel}", cursor="0")
    clock = SSEClient(f"{server.url}/sse/clock")  # a stream the hub does not feed
    publisher.publish(channel, "before")
    for client in (sse, ws, poller, clock):
        assert client.wait_count(1)
    old = worker_pids(server)

    began = time.monotonic()
    os.kill(server.process.pid, signal.SIGHUP)  # graceful reload
    assert sse.closed.wait(10) and ws.closed.wait(10) and clock.closed.wait(10)
    for stream in (sse, clock):  # told to reconnect
        assert any(i["event"] == "close" for i in stream.items), stream.items[-3:]
    assert ws.close_code == 1012  # service restart
    assert wait_until(lambda: not (worker_pids(server) & old), timeout=15)
    drained = time.monotonic() - began
    assert drained < 10, f"old workers took {drained:.1f} s to go (graceful timeout is 30 s)"

    during = [f"after reload {i}" for i in range(5)]
    for text in during:
        publisher.publish(channel, text)
    # Clients resume from their last id, as EventSource and our pages do.
    sse2 = SSEClient(
        f"{server.url}/sub/{channel}",
        last_event_id=[i for i in sse.items if i["event"] == "message"][-1]["id"],
    )
    ws2 = WSClient(f"{server.ws_url}/sub/{channel}/ws?last_event_id={ws.items[-1]['id']}")
    for client in (sse2, ws2):
        assert client.wait_count(len(during))
        assert [i["data"] for i in client.items if "data" in i][:5] == during
    assert poller.wait_for(lambda items: len(items) >= 6)
    assert [i["data"] for i in poller.items] == ["before", *during]
    for client in (sse2, ws2, poller):
        client.close()


def test_a_worker_over_the_memory_limit_is_replaced_and_service_goes_on(start_server, rdb):
    server = start_server(MAX_WORKER_MEMORY_MB=1, REDIS_PREFIX="memlimit:")  # every worker is over
    first = worker_pids(server)
    assert wait_until(lambda: worker_pids(server) - first, timeout=20)  # fresh workers came
    restarts = [json.loads(e) for e in rdb.lrange(Keys("memlimit:").process_restarts(), 0, -1)]
    assert any(r["cause"].startswith("memory limit") and r["pid"] in first for r in restarts)
    answered = 0
    for _ in range(20):  # meanwhile requests are still served (a retry may be needed)
        for _attempt in range(30):
            try:
                if requests.get(server.url + "/whoami?format=json", timeout=5).ok:
                    answered += 1
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
    assert answered == 20


def processes(server, token):
    for _attempt in range(20):
        try:
            response = requests.get(
                f"{server.url}/admin/processes",
                timeout=5,
                headers={"Authorization": f"Bearer {token}"},
            )
            break
        except requests.ConnectionError:  # the killed worker's socket resets its queue
            time.sleep(0.2)
    assert response.status_code == 200
    return response.json()


def test_admin_processes_lists_the_live_workers_and_counts_restarts(start_server, admin_token):
    server = start_server()

    def reported():
        data = processes(server, admin_token)
        workers = {
            p["pid"]
            for p in data["processes"]
            if p["role"] == "worker" and p["ppid"] == server.process.pid
        }
        masters = [p for p in data["processes"] if p["pid"] == server.process.pid]
        return data if workers == worker_pids(server) and masters else None

    data = wait_until(reported, timeout=10)
    assert data, "every live worker and the master should report"
    worker = next(
        p for p in data["processes"] if p["role"] == "worker" and p["ppid"] == server.process.pid
    )
    assert {"rss", "cpu", "uptime", "connections", "requests", "host"} <= set(worker)
    assert set(worker["connections"]) == {"sse", "longpoll", "websocket"}

    victim = worker["pid"]
    os.kill(victim, signal.SIGKILL)
    restarted = wait_until(
        lambda: [r for r in processes(server, admin_token)["restarts"] if r["pid"] == victim],
        timeout=10,
    )
    assert restarted and restarted[0]["cause"] == "died (crash or killed)"
    assert wait_until(reported, timeout=10), "the replacement reports, the dead one is gone"


def test_processes_and_metrics_are_for_administrators(server, admin_token, alice_token):
    for path in ("/admin/processes", "/metrics", "/admin/monitor/stream"):
        assert requests.get(server.url + path, timeout=5).status_code == 401
        plain = requests.get(
            server.url + path, timeout=5, headers={"Authorization": f"Bearer {alice_token}"}
        )
        assert plain.status_code == 403

    def scrape():  # this server's workers (tests/test_metrics.py has the rest)
        body = requests.get(
            server.url + "/metrics", timeout=5, headers={"Authorization": f"Bearer {admin_token}"}
        ).text
        pids = {
            int(line.split('pid="')[1].split('"')[0])
            for line in body.splitlines()
            if line.startswith("realtime_worker_resident_memory_bytes{")
        }
        return body if worker_pids(server) <= pids else None

    text = wait_until(scrape)
    assert text, "every worker's memory, from the workers' shared metrics"
    assert "# TYPE realtime_worker_resident_memory_bytes gauge" in text
    assert 'realtime_open_connections{transport="websocket"}' in text
