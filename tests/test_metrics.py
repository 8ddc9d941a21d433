"""Prometheus metrics (core/metrics.py, GET /metrics) of real gunicorn servers
with 2 gevent workers: who may scrape, what the counters and gauges add up
to over the workers (prometheus_client's multiprocess mode), what a killed
worker leaves behind, and the Grafana dashboard in deploy/ against a scrape.
"""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from core import metrics
from core.config import ConfigError
from core.hub import Hub
from core.stream_log import START, parse_id
from tests.clients import SSEClient, wait_until, worker_pids
from tests.servers import GunicornServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
TOKEN = "metrics-scraper-token-0123456789abcdef"
# No scrape of these tests comes from there: 127.0.0.1 needs credentials.
ELSEWHERE = "192.0.2.0/24"


@pytest.fixture(scope="module")
def metrics_server(start_server):
    return start_server(METRICS_TOKEN=TOKEN, METRICS_ALLOW_NETWORKS=ELSEWHERE)


def get_metrics(server, headers=None):
    for _attempt in range(20):
        try:
            return requests.get(server.url + "/metrics", headers=headers or {}, timeout=10)
        except requests.ConnectionError:  # a killed worker's socket resets its queue
            time.sleep(0.2)
    return requests.get(server.url + "/metrics", headers=headers or {}, timeout=10)


def scrape(server):
    """{(sample name, frozenset of labels): value} of one scrape."""
    response = get_metrics(server, {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples, name, **labels):
    """The sum of the samples of `name` that carry `labels`."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and wanted <= sample_labels
    )


# -- who may scrape ---------------------------------------------------------------------------


def test_the_metrics_token_or_an_administrator_may_scrape(metrics_server, admin_token, alice_token):
    right = get_metrics(metrics_server, {"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200
    assert right.headers["Content-Type"].startswith("text/plain; version=")
    # requests are copied into the metrics by each worker every 2 s (core/metrics.py)
    assert wait_until(
        lambda: (
            "# TYPE realtime_http_requests_total counter"
            in get_metrics(metrics_server, {"Authorization": f"Bearer {TOKEN}"}).text
        )
    )
    # any other bearer token is a user's, checked as such
    assert get_metrics(metrics_server, {"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert get_metrics(metrics_server, {"Authorization": "Bearer"}).status_code == 401
    # nothing, from an address outside METRICS_ALLOW_NETWORKS
    assert get_metrics(metrics_server).status_code == 401
    assert (
        get_metrics(metrics_server, {"Authorization": f"Bearer {alice_token}"}).status_code == 403
    )
    assert (
        get_metrics(metrics_server, {"Authorization": f"Bearer {admin_token}"}).status_code == 200
    )


def test_a_client_in_an_allowed_network_needs_no_credentials(start_server):
    server = start_server(METRICS_ALLOW_NETWORKS="10.0.0.0/8, 127.0.0.1/32")
    response = get_metrics(server)
    assert response.status_code == 200, response.text
    assert "realtime_open_connections" in response.text


def test_a_bad_network_stops_the_server_at_start(base_env, tmp_path):
    server = GunicornServer(
        base_env,
        tmp_path / "server.log",
        workers=1,
        METRICS_ALLOW_NETWORKS="10.0.0.0/8,10.0.0.1/33",
    )
    with pytest.raises(RuntimeError, match="exited early"):
        server.start()
    assert "configuration error: METRICS_ALLOW_NETWORKS" in server.log()


def test_networks_and_tokens_are_checked_as_configured():
    with pytest.raises(ConfigError, match="METRICS_ALLOW_NETWORKS"):
        metrics.allowed_networks("10.0.0.1/8")  # host bits set: a typo, refused
    networks = metrics.allowed_networks(" 10.0.0.0/8 ,, 2001:db8::/32 ")
    assert [str(n) for n in networks] == ["10.0.0.0/8", "2001:db8::/32"]

    class NoHub:
        pass

    scraper = metrics.Metrics(NoHub(), token="secret", networks=networks)
    assert scraper.scraper_allowed("secret", None)
    assert not scraper.scraper_allowed("secreT", "127.0.0.1")
    assert scraper.scraper_allowed("", "10.1.2.3")
    assert scraper.scraper_allowed(None, "::ffff:10.1.2.3")  # a dual-stack bind's IPv4 client
    assert scraper.scraper_allowed(None, "2001:db8::1")
    assert not scraper.scraper_allowed(None, "11.0.0.1")
    assert not scraper.scraper_allowed(None, "unix-socket-peer")
    assert not metrics.Metrics(NoHub()).scraper_allowed("", "10.1.2.3")


# -- what the workers count ------------------------------------------------------------------


def test_the_hub_counts_in_plain_integers(rdb, redis_server, channel):
    """What core/metrics.py copies: published, delivered (once per subscriber
    reached), a slow consumer's cut and the messages it drops, resets."""
    hub = Hub(rdb, redis_server.url, prefix="metrics:", queue_size=2)
    try:
        hub.publish(channel, "before")
        with hub.subscribe(channel, START) as reader, hub.subscribe(channel, START) as stalled:
            assert [m.data for m in reader.wait(5)] == ["before"]  # both catch up
            assert [m.data for m in stalled.wait(5)] == ["before"]
            for i in range(3):  # `stalled` never reads again: 2 queued, the third cuts it
                hub.publish(channel, f"live {i}")
                assert [m.data for m in reader.wait(5)] == [f"live {i}"]  # keeps up
            assert wait_until(lambda: stalled.closed_reason is not None, timeout=5)
            assert wait_until(lambda: hub.delivered == 2 + 3, timeout=5), hub.delivered
        assert (hub.published, hub.slow_consumer_cuts, hub.dropped) == (4, 1, 3)
        with hub.subscribe(channel, parse_id("1-0")) as lost:  # a cursor long gone
            assert [item.is_reset for item in lost.wait(5)] == [True]
        assert (hub.resets, hub.delivered) == (1, 5)
    finally:
        hub.stop()


def test_messages_and_connections_add_up_over_the_workers(metrics_server, channel):
    subscribers = []
    # the kernel picks each connection's worker: open streams until both have some
    while len(subscribers) < 4 or len({s.served_by for s in subscribers}) < 2:
        assert len(subscribers) < 40, "every stream went to one worker"
        subscribers.append(SSEClient(f"{metrics_server.url}/sub/{channel}"))
    streams = len(subscribers)
    try:

        def sse_open():
            return (
                total(scrape(metrics_server), "realtime_open_connections", transport="sse")
                == streams
            )

        assert wait_until(sse_open, timeout=10), "both workers' streams, summed"
        before = scrape(metrics_server)
        texts = [f"message {i}" for i in range(5)]
        for text in texts:
            metrics_server.publish(channel, text)
        for subscriber in subscribers:
            assert subscriber.wait_count(len(texts))

        def counted():
            now = scrape(metrics_server)
            grown = {
                name: total(now, name) - total(before, name)
                for name in (
                    "realtime_messages_published_total",
                    "realtime_messages_delivered_total",
                )
            }
            done = grown["realtime_messages_delivered_total"] >= len(texts) * streams
            return (now, grown) if done else None

        now, grown = wait_until(counted, timeout=10) or (None, None)
        assert grown == {
            "realtime_messages_published_total": len(texts),
            "realtime_messages_delivered_total": len(texts) * streams,
        }
        assert total(now, "realtime_messages_dropped_total") == 0
        assert total(
            now, "realtime_http_requests_total", route="/pub/<channel>", method="POST", status="2xx"
        ) >= len(texts)
        assert total(
            now,
            "realtime_http_request_duration_seconds_count",
            route="/pub/<channel>",
            method="POST",
        ) >= len(texts)
        assert (
            total(
                now,
                "realtime_http_requests_total",
                route="/sub/<channel>",
                method="GET",
                status="2xx",
            )
            >= streams
        )
    finally:
        for subscriber in subscribers:
            subscriber.close()
    assert wait_until(
        lambda: total(scrape(metrics_server), "realtime_open_connections", transport="sse") == 0,
        timeout=10,
    )


def test_the_dashboard_shows_only_metrics_the_server_has(metrics_server):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    expressions = [variables["instance"]["definition"]]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["options"]["legend"]["showLegend"], panel["title"]
        for target in panel["targets"]:
            assert target["legendFormat"], panel["title"]
            expressions.append(target["expr"])

    def family(name):  # a histogram's series are named after it
        return re.sub(r"_(bucket|sum|count)$", "", name)

    used = {
        family(name) for expr in expressions for name in re.findall(r"\brealtime_[a-z0-9_]+", expr)
    }
    assert len(used) >= 10
    scraped = {family(name) for name, _ in scrape(metrics_server)}
    assert used - scraped == set()


def test_a_killed_worker_counts_as_a_restart_and_its_gauges_go(metrics_server, base_env):
    # (last in this module: it replaces one of the server's workers)
    directory = Path(
        metrics.directory_for([f"127.0.0.1:{metrics_server.port}"], base_env["INSTANCE_DIR"])
    )
    victim = min(worker_pids(metrics_server))
    assert wait_until(lambda: (directory / f"gauge_liveall_{victim}.db").exists(), timeout=10)
    assert (directory / f"counter_{victim}.db").exists()
    before = scrape(metrics_server)
    assert total(before, "realtime_worker_resident_memory_bytes", pid=str(victim)) > 0

    os.kill(victim, signal.SIGKILL)

    def restarted():
        now = scrape(metrics_server)
        return (
            now
            if total(now, "realtime_worker_restarts_total")
            == total(before, "realtime_worker_restarts_total") + 1
            else None
        )

    now = wait_until(restarted, timeout=15)
    assert now, "the master counts the exit"
    assert not list(directory.glob(f"gauge_*_{victim}.db")), "its live gauges are gone"
    assert (directory / f"counter_{victim}.db").exists(), "its counts stay in the totals"
    assert total(now, "realtime_worker_resident_memory_bytes", pid=str(victim)) == 0
    assert total(now, "realtime_http_requests_total") >= total(
        before, "realtime_http_requests_total"
    )
