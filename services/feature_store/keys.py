"""Every Redis key the feature store uses, in one place (the spec is docs/feature_store.md).

All keys start with the versioned prefix (settings.key_prefix, default `vidrec:v3`); a layout
change bumps the version so old and new layouts can live side by side during a migration.

Redis Cluster: every key of one user carries the hash tag `{u:<user_id>}` so one user's reads
(one pipeline) and writes (one Lua script) stay in one slot. Item keys are spread over
ITEM_BUCKETS hash tags `{i:<bucket>}` so the catalog is not pinned to one node while a batch of
item ids still needs at most ITEM_BUCKETS MGETs (one MGET on a single Redis).
"""

from __future__ import annotations

import zlib

ITEM_BUCKETS = 16  # part of the v1 layout: changing it moves every item key


def item_bucket(item_id: str) -> int:
    """Stable across processes and machines (unlike hash())."""
    return zlib.crc32(item_id.encode()) % ITEM_BUCKETS


class Keys:
    def __init__(self, prefix: str, events_stream: str = "events") -> None:
        if "{" in prefix or "}" in prefix:
            # a brace in the prefix would become the cluster hash tag of every key
            raise ValueError(f"key_prefix must not contain braces: {prefix!r}")
        self.prefix = prefix
        self.events = f"{prefix}:{events_stream}"
        self.overlay = f"{prefix}:items:overlay"
        self.loaded = f"{prefix}:loaded"

    # ---- per user (one hash tag) ------------------------------------------------------
    def user_tag(self, user_id: str) -> str:
        return f"{self.prefix}:{{u:{user_id}}}"

    def hist(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:hist"

    def tags(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:tags"

    def tagref(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:tagref"

    def seen(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:seen"

    def dedupe(self, user_id: str, event_id: str) -> str:
        return f"{self.user_tag(user_id)}:ev:{event_id}"

    def user_keys(self, user_id: str) -> list[str]:
        """The user's state keys (not the per-event dedupe markers)."""
        return [self.hist(user_id), self.tags(user_id), self.tagref(user_id), self.seen(user_id)]

    # ---- per item ---------------------------------------------------------------------
    def item(self, item_id: str) -> str:
        return f"{self.prefix}:{{i:{item_bucket(item_id):02d}}}:item:{item_id}"
