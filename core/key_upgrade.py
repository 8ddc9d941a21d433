"""Keys that an earlier version named otherwise get today's names, when the
server starts (gunicorn.conf.py when_ready, before any worker exists).

Keys now carry hash tags (core/keys.py: the part in braces decides a key's
slot on a Redis Cluster), so on an upgrade a channel's history, the Q&A
board, the editor's documents, the drawing, the jobs and the city data
would otherwise stay behind under their old names, and resuming clients
would get a reset instead of what they missed.

RENAMENX, never RENAME: when today's name exists already (a host running
the new version wrote it first), the old key stays where it is and the log
says so; nothing is written over. Running it again renames nothing.
"""

from __future__ import annotations

import logging

import redis

from core.keys import Keys


def rename_old_keys(redis_client: redis.Redis, keys: Keys, log: logging.Logger) -> int:
    """Rename every key of an earlier version's naming; how many were renamed."""
    renamed, kept = 0, []
    for pattern in keys.old_patterns():
        for old in redis_client.scan_iter(match=pattern, count=1000):
            new = keys.renamed(old)
            if new is None:
                continue
            try:
                if redis_client.renamenx(old, new):
                    renamed += 1
                else:
                    kept.append(old)
            except redis.ResponseError:
                continue  # gone meanwhile: another host renamed it, or it expired
    if renamed:
        log.info("Renamed %d Redis keys to this version's names (hash tags)", renamed)
    if kept:
        log.warning(
            "%d Redis keys of an earlier version were left under their old names, "
            "because their new names exist already: %s",
            len(kept),
            ", ".join(kept[:5]) + (", ..." if len(kept) > 5 else ""),
        )
    return renamed
