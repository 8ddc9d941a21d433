"""Key names (core/keys.py): what a script or a transaction changes together
lives in one Redis Cluster slot, channels spread over slots, and keys named by
an earlier version are renamed when the server starts (core/key_upgrade.py)."""

import itertools
import logging

import pytest
import requests
from redis.crc import key_slot

from core.key_upgrade import rename_old_keys
from core.keys import Keys

KEYS = Keys("rt:")
_prefixes = itertools.count(1)


def slots(*names):
    return {key_slot(name.encode()) for name in names}


@pytest.mark.unit
def test_a_channels_stream_and_its_notifications_share_a_slot_and_channels_spread():
    for channel in ("news", "a.b-c_1", "qa:events", "editor:doc-1", "jobs:" + "f" * 32):
        assert len(slots(KEYS.stream(channel), KEYS.notifications(channel))) == 1, channel
        assert KEYS.channel_of_notification(KEYS.notifications(channel)) == channel
    public = [f"channel-{i}" for i in range(100)]
    assert len(slots(*map(KEYS.stream, public))) > 90  # not all on one shard


@pytest.mark.unit
def test_each_apps_state_shares_the_slot_of_its_channels():
    # what each app's scripts and transactions name together (blueprints/, workers/jobs.py)
    groups = {
        "Q&A": [
            *KEYS.qa_board(),
            KEYS.qa("selected", "some-client"),
            KEYS.stream("qa:events"),
            KEYS.notifications("qa:events"),
        ],
        "editor": [
            *KEYS.editor_document("doc-1"),
            *KEYS.editor_document("doc-2"),
            KEYS.editor_documents(),
            KEYS.stream("editor:doc-1"),
            KEYS.notifications("editor:doc-2"),
        ],
        "jobs": [
            KEYS.job("a" * 32),
            KEYS.jobs_recent(),
            KEYS.stream(Keys.job_channel("a" * 32)),
            KEYS.notifications(Keys.job_channel("b" * 32)),
        ],
        "drawing": [*KEYS.drawing(), KEYS.stream("draw:moves")],
        "cities": [KEYS.cities("version"), KEYS.cities_country("usa")],
        # not a script: one MGET reads every process report (blueprints/processes.py)
        "processes": [
            KEYS.process("host-a", 1),
            KEYS.process("host-b", 2),
            KEYS.process_cause("host-a", 1),
            KEYS.process_restarts(),
        ],
    }
    for app, names in groups.items():
        assert len(slots(*names)) == 1, (app, names)
        assert len(set(names)) == len(names), (app, names)  # and no two are one key


@pytest.mark.unit
def test_earlier_names_map_to_todays():
    assert KEYS.renamed("rt:stream:news") == KEYS.stream("news")
    assert KEYS.renamed("rt:stream:editor:d1") == KEYS.stream("editor:d1")
    assert KEYS.renamed("rt:qa:answers") == KEYS.qa("answers")
    assert KEYS.renamed("rt:qa:selected:c1") == KEYS.qa("selected", "c1")
    assert KEYS.renamed("rt:editor:docs") == KEYS.editor_documents()
    assert KEYS.renamed("rt:editor:d1:log") == KEYS.editor_document("d1")[1]
    assert KEYS.renamed("rt:draw:segments-bytes") == KEYS.drawing()[1]
    assert KEYS.renamed("rt:job:" + "a" * 32) == KEYS.job("a" * 32)
    assert KEYS.renamed("rt:jobs") == KEYS.jobs_recent()
    assert KEYS.renamed("rt:cities:country:usa") == KEYS.cities_country("usa")
    assert KEYS.renamed("rt:proc:restarts") == KEYS.process_restarts()
    assert KEYS.renamed("rt:proc:host-a:12") == KEYS.process("host-a", 12)
    # today's names, names that kept theirs, other apps' keys: left alone
    for name in (
        KEYS.stream("news"),
        KEYS.job_alive("a" * 32),
        KEYS.user("alice"),
        KEYS.session("s1"),
        "other:stream:news",
        "rt:stream:",
    ):
        assert KEYS.renamed(name) is None, name


@pytest.mark.integration
def test_renaming_moves_every_old_key_once_and_never_writes_over(rdb, caplog):
    prefix = f"tkeys{next(_prefixes)}:"
    keys = Keys(prefix)
    rdb.xadd(f"{prefix}stream:news", {"t": "t", "d": "one"})
    rdb.hset(f"{prefix}qa:answers", "q", "[]")
    rdb.set(f"{prefix}draw:segments-version", "v1")
    rdb.zadd(f"{prefix}editor:docs", {"d1": 1})
    rdb.set(f"{prefix}user:alice", "kept")  # not renamed: single-key, same name today
    rdb.set(f"{prefix}cities:version", "old")  # today's name is taken: left alone
    rdb.set(keys.cities("version"), "new")
    with caplog.at_level(logging.INFO):
        assert rename_old_keys(rdb, keys, logging.getLogger("test")) == 4
    assert [f["d"] for _, f in rdb.xrange(keys.stream("news"))] == ["one"]
    assert rdb.hget(keys.qa("answers"), "q") == "[]"
    assert rdb.get(keys.drawing()[2]) == "v1"
    assert rdb.zscore(keys.editor_documents(), "d1") == 1
    assert rdb.get(keys.cities("version")) == "new"
    assert sorted(rdb.scan_iter(match=f"{prefix}*")) == sorted(
        [
            keys.stream("news"),
            keys.qa("answers"),
            keys.drawing()[2],
            keys.editor_documents(),
            f"{prefix}user:alice",
            f"{prefix}cities:version",
            keys.cities("version"),
        ]
    )
    assert f"{prefix}cities:version" in caplog.text  # said why it stayed
    assert rename_old_keys(rdb, keys, logging.getLogger("test")) == 0  # once


@pytest.mark.integration
def test_after_an_upgrade_a_client_resumes_from_history_kept_under_the_old_name(rdb, start_server):
    prefix = f"tkeys{next(_prefixes)}:"
    first = rdb.xadd(f"{prefix}stream:news", {"t": "t", "d": "before the upgrade"})
    rdb.xadd(f"{prefix}stream:news", {"t": "t", "d": "missed"})
    server = start_server(workers=1, REDIS_PREFIX=prefix)
    answer = requests.get(
        f"{server.url}/sub/news",
        params={"cursor": first},
        headers={"Accept": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert [event["data"] for event in answer.json()["events"]] == ["missed"]
    assert "Renamed 1 Redis keys" in server.log()
