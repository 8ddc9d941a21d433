"""The Lua scripts of lua/: each one compiles in a real Redis with what it
declares it uses, and uses nothing it does not declare."""

import re

import pytest

from core import scripts

pytestmark = pytest.mark.integration

NAMES = sorted(path.stem for path in scripts.LUA_DIR.glob("*.lua"))
LIBRARIES = {path.stem: path.read_text() for path in (scripts.LUA_DIR / "lib").glob("*.lua")}
SETTINGS = {"maxlen": 1000, "ttl_ms": 60000, "publish": "PUBLISH"}


@pytest.mark.parametrize("name", NAMES)
def test_each_script_compiles_with_what_it_uses(rdb, name):
    text = scripts.source(name, SETTINGS)
    assert rdb.script_load(text) == rdb.script_load(text)  # compiled, and stable
    own = (scripts.LUA_DIR / f"{name}.lua").read_text()
    uses = re.match(r"--\s*uses:\s*(.+)", own)
    declared = {u.strip() for u in uses[1].split(",")} if uses else set()
    assert declared <= set(LIBRARIES), f"{name} uses an unknown library"
    for library, code in LIBRARIES.items():
        defined = re.findall(r"local function (\w+)", code)
        called = any(re.search(rf"\b{f}\(", own) for f in defined)
        assert called == (library in declared), (
            f"{name}: calls {defined} without `-- uses: {library}`, or declares it unused"
        )


def test_every_script_is_loaded_once_by_the_hub(rdb):
    from core.stream_log import StreamLog

    log = StreamLog(rdb, "tscripts:")
    assert sorted(log.scripts) == NAMES
    assert log._publish is log.scripts["publish"]
