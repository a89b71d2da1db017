"""`vidrec load`: write a bundle's items and users into Redis (layout: docs/feature_store.md).

Idempotent: every user's keys are deleted and rewritten in the same pipeline, item meta is
overwritten, so loading twice gives the same state as loading once. Loading replaces a user's
live history with the bundle's (the bundle was built from the events stream, so it is the newer
truth). Items put or deleted while serving (the overlay) are re-applied on top of the bundle's
items so a deletion survives a reload.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, TypeVar

from tqdm import tqdm

from services.feature_store.codec import OverlayItem, pack_history, pack_item, unpack_overlay
from services.feature_store.keys import Keys
from services.feature_store.profile import import_profile
from shared.bundle import Bundle
from shared.contracts import ItemMeta, UserState
from shared.redis_conn import SyncRedis, as_fields, make_redis_sync
from shared.rollout import promote_sync
from shared.settings import Settings
from shared.tags import TagClusters

ITEMS_PER_PIPELINE = 5000
USERS_PER_PIPELINE = 1000

T = TypeVar("T")


@dataclass
class LoadStats:
    bundle: str
    items: int
    users: int
    interactions: int
    overlay_items: int
    seconds: float


def _chunks(it: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(it)
    while chunk := list(islice(it, size)):
        yield chunk


def load_bundle(settings: Settings, version: str, *, progress: bool = True) -> LoadStats:
    start = time.perf_counter()
    bundle = Bundle.open(settings.artifacts_dir, version)
    keys = Keys(settings.key_prefix, settings.events_stream)
    r = make_redis_sync(settings)
    try:
        clusters = TagClusters.load(bundle.path)  # identity without tags.json
        items = with_clusters(bundle.items, clusters)
        n_overlay = write_items(r, keys, items, progress)
        users = bundle.users()
        # the tag profile counts clusters: `king glory` and `kingglory` add to one weight
        tags_of = {it["item_id"]: it.get("clusters") or it.get("tags") or [] for it in items}
        interactions = write_users(r, keys, users, tags_of, settings.history_cap, progress)
        stats = LoadStats(bundle.version, len(items), len(users), interactions, n_overlay,
                          time.perf_counter() - start)
        r.hset(keys.loaded, mapping={"bundle": stats.bundle, "items": stats.items,
                                     "users": stats.users, "loaded_at": time.time()})
        # The bundle whose users and items Redis now holds is the one to serve: without this,
        # replicas would follow an older active version (shared/rollout.py) after a rebuild.
        previous = promote_sync(r, settings.key_prefix, stats.bundle)
    finally:
        r.close()
    print(f"loaded bundle {stats.bundle} into Redis prefix {settings.key_prefix!r}: "
          f"{stats.items} items, {stats.users} users, {stats.interactions} interactions, "
          f"{stats.overlay_items} live item changes re-applied, in {stats.seconds:.1f} s; "
          f"active bundle {stats.bundle}"
          + (f" (was {previous})" if previous and previous != stats.bundle else ""))
    return stats


def with_clusters(items: list[dict[str, Any]], clusters: TagClusters) -> list[dict[str, Any]]:
    """The bundle's items with their tag clusters (unchanged when the bundle has none)."""
    if not clusters.enabled:
        return items
    return [{**it, "clusters": clusters.clusters(it.get("tags") or [])} for it in items]


def _bundle_meta(it: dict[str, Any]) -> ItemMeta:
    return ItemMeta(item_id=it["item_id"], title=it.get("title") or "",
                    tags=it.get("tags") or [], available=it.get("available", True),
                    clusters=it.get("clusters") or [])


def _overlay_meta(o: OverlayItem, by_id: dict[str, dict[str, Any]]) -> ItemMeta | None:
    """What a live change makes of an item's meta; None for a tombstone of an item that is
    in neither Redis nor the bundle."""
    if o.meta.available or o.meta.title:
        return o.meta
    it = by_id.get(o.meta.item_id)
    return None if it is None else replace(_bundle_meta(it), available=False)


def write_items(r: SyncRedis, keys: Keys, items: list[dict[str, Any]],
                progress: bool = True) -> int:
    """Item meta for the catalog, then the overlay on top. Returns the overlay's size."""
    with tqdm(total=len(items), desc="items", unit="item", disable=not progress) as bar:
        for part in _chunks(items, ITEMS_PER_PIPELINE):
            pipe = r.pipeline(transaction=False)
            for it in part:
                pipe.set(keys.item(it["item_id"]), pack_item(_bundle_meta(it)))
            pipe.execute()
            bar.update(len(part))
    overlay = [unpack_overlay(v) for v in r.hgetall(keys.overlay).values()]
    by_id = {it["item_id"]: it for it in items}
    metas = [m for o in overlay if (m := _overlay_meta(o, by_id)) is not None]
    for chunk in _chunks(metas, ITEMS_PER_PIPELINE):
        pipe = r.pipeline(transaction=False)
        for meta in chunk:
            pipe.set(keys.item(meta.item_id), pack_item(meta))
        pipe.execute()
    return len(overlay)


def imported_user(user_id: str, seq: list[str], tags_of: Mapping[str, Sequence[str]],
                  history_len: int) -> UserState:
    """What hydrate answers for a user right after `write_users` imported `seq` (its tag
    profile before any decay): the newest `history_len` items, the profile, everything seen.
    The offline two-stage evaluation asks retrieval with this, as the gateway would."""
    return UserState(user_id=user_id, known=bool(seq), history=seq[-history_len:],
                     tag_profile=import_profile(tags_of.get(i, ()) for i in seq),
                     seen=list(dict.fromkeys(seq)))


def write_users(r: SyncRedis, keys: Keys, users: dict[str, list[str]],
                tags_of: Mapping[str, Sequence[str]], history_cap: int,
                progress: bool = True) -> int:
    """Each user's history (last history_cap), seen set and tag profile. Returns the number
    of interactions read."""
    now = repr(time.time())
    interactions = 0
    with tqdm(total=len(users), desc="users", unit="user", disable=not progress) as bar:
        for chunk in _chunks(users.items(), USERS_PER_PIPELINE):
            pipe = r.pipeline(transaction=False)
            for user_id, seq in chunk:
                interactions += len(seq)
                hist, tags, tagref, seen = keys.user_keys(user_id)
                # one DEL of four keys in one slot (the user's hash tag)
                pipe.execute_command("DEL", hist, tags, tagref, seen)
                if not seq:
                    continue
                pipe.rpush(hist, *[pack_history(i) for i in seq[-history_cap:]])
                pipe.sadd(seen, *seq)
                profile = import_profile(tags_of.get(i, ()) for i in seq)
                if profile:
                    pipe.hset(tags, mapping=as_fields(profile))
                    pipe.set(tagref, now)
            pipe.execute()
            bar.update(len(chunk))
    return interactions
