"""The app's Lua scripts: one file each under lua/, registered once per hub.

A script's first line may be `-- uses: name, name`: the functions in those
files of lua/lib/ are put before it (`hub_publish`, which appends a message to
a channel and announces it, is filled in with the hub's stream settings).
`load(redis_client, settings)` reads and registers every script when the app
starts; requests only call them (redis-py sends EVALSHA, and loads a script
once more on a Redis that has not seen it, after a restart or a failover).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"
_USES = re.compile(r"--\s*uses:\s*(.+)")


def source(name: str, settings: Mapping[str, object]) -> str:
    """The full text of lua/<name>.lua, with what it uses before it."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    uses = _USES.match(text.split("\n", 1)[0])
    parts = [_library(used.strip(), settings) for used in uses[1].split(",")] if uses else []
    return "\n".join([*parts, text])


def _library(name: str, settings: Mapping[str, object]) -> str:
    text = (LUA_DIR / "lib" / f"{name}.lua").read_text()
    # only hub_publish has placeholders; Lua itself has no use for `$`
    return Template(text).substitute(settings) if name == "hub_publish" else text


def load(redis_client: redis.Redis, settings: Mapping[str, object]) -> dict[str, Script]:
    """{name: registered script} for every lua/*.lua. `settings`: the
    hub_publish placeholders (maxlen, ttl_ms, publish: PUBLISH or SPUBLISH)."""
    return {
        path.stem: redis_client.register_script(source(path.stem, settings))
        for path in sorted(LUA_DIR.glob("*.lua"))
    }
