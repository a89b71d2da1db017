"""`vidrec load` on the real small bundle (ml-latest-small, built by the `small_bundle` fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from services.feature_store.codec import pack_history
from services.feature_store.keys import Keys
from services.feature_store.loader import load_bundle
from services.feature_store.profile import import_profile
from services.feature_store.store import FeatureStore
from shared.contracts import Event, ItemMeta
from shared.redis_conn import make_redis
from shared.settings import Settings
from shared.tags import TagClusters

REPO = Path(__file__).resolve().parents[2]
CAP = 50


@pytest.fixture
def load_settings(settings: Settings, small_bundle: Path) -> Settings:
    return settings.model_copy(update={"history_cap": CAP})


def user_state(r: redis.Redis, keys: Keys, user_id: str) -> tuple:
    return (r.lrange(keys.hist(user_id), 0, -1), r.smembers(keys.seen(user_id)),
            {k: float(v) for k, v in r.hgetall(keys.tags(user_id)).items()})


def test_load_writes_every_item_and_user(load_settings: Settings, small_bundle: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    items = json.loads((small_bundle / "items.json").read_text())
    users = json.loads((small_bundle / "users.json").read_text())
    stats = load_bundle(load_settings, str(small_bundle), progress=False)
    assert (stats.items, stats.users) == (len(items), len(users))
    assert stats.interactions == sum(len(s) for s in users.values())
    printed = capsys.readouterr().out
    assert f"{len(items)} items, {len(users)} users" in printed and " s" in printed

    keys = Keys(load_settings.key_prefix)
    clusters = TagClusters.load(small_bundle)
    assert clusters.enabled  # the build writes tags.json
    # the profile counts tag clusters, each once per interaction
    tags_of = {it["item_id"]: clusters.clusters(it["tags"]) for it in items}
    r = redis.Redis.from_url(load_settings.redis_url, decode_responses=True)
    try:
        assert any(len(seq) > CAP for seq in users.values())  # the cap is exercised
        for user_id, seq in users.items():
            hist, seen, profile = user_state(r, keys, user_id)
            assert hist == [pack_history(i) for i in seq[-CAP:]]  # oldest first, newest last
            assert seen == set(seq)
            assert profile == import_profile(tags_of[i] for i in seq)
        packed = r.mget([keys.item(it["item_id"]) for it in items])
        for it, raw in zip(items, packed, strict=True):
            expect = {"title": it["title"], "tags": it["tags"], "available": True}
            if it["tags"]:
                expect["clusters"] = clusters.clusters(it["tags"])
            assert json.loads(raw) == expect
        loaded = r.hgetall(keys.loaded)
        assert loaded["bundle"] == small_bundle.name and int(loaded["users"]) == len(users)
    finally:
        r.close()


@pytest.mark.anyio
async def test_reload_replaces_and_keeps_live_item_changes(load_settings: Settings,
                                                           small_bundle: Path) -> None:
    items = json.loads((small_bundle / "items.json").read_text())
    users = json.loads((small_bundle / "users.json").read_text())
    user_id, seq = next(iter(users.items()))
    load_bundle(load_settings, str(small_bundle), progress=False)

    store = FeatureStore(make_redis(load_settings), load_settings)
    try:
        first = await store.hydrate(user_id, CAP)
        assert first.known and first.history == seq[-CAP:]
        assert sorted(first.seen) == sorted(set(seq))
        await store.record_events([Event(event_id="live", user_id=user_id, item_id=items[0]
                                         ["item_id"], type="like", timestamp=time.time())])
        removed = items[1]["item_id"]
        await store.delete_item(removed)
        await store.put_item(ItemMeta(item_id="live-new", title="Live", tags=["x"]), [0.0] * 4)

        load_bundle(load_settings, str(small_bundle), progress=False)  # same bundle again

        again = await store.hydrate(user_id, CAP)
        assert again.history == first.history and sorted(again.seen) == sorted(first.seen)
        assert again.tag_profile == pytest.approx(first.tag_profile, rel=1e-6)  # not doubled
        assert await store.redis.llen(store.keys.hist(user_id)) == min(CAP, len(seq))
        meta = await store.item_meta([removed, "live-new", items[2]["item_id"]])
        assert meta[removed].available is False  # a deletion survives the reload
        assert meta["live-new"].title == "Live" and meta[items[2]["item_id"]].available
    finally:
        await store.aclose()


def test_vidrec_load_command(load_settings: Settings, small_bundle: Path) -> None:
    env = dict(os.environ, VIDREC_REDIS_URL=load_settings.redis_url,
               VIDREC_KEY_PREFIX=load_settings.key_prefix, VIDREC_HISTORY_CAP=str(CAP))
    done = subprocess.run([sys.executable, "-m", "vidrec_cli", "load", "--bundle",
                           str(small_bundle)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "users" in done.stdout and "items" in done.stdout
    r = redis.Redis.from_url(load_settings.redis_url, decode_responses=True)
    try:
        users = json.loads((small_bundle / "users.json").read_text())
        keys = Keys(load_settings.key_prefix)
        assert all(r.exists(keys.hist(u)) for u in list(users)[:20])
    finally:
        r.close()


def test_a_bundle_without_tag_clusters_loads_as_before(load_settings: Settings,
                                                       small_bundle: Path,
                                                       tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in small_bundle.iterdir():
        if f.name not in ("tags.json", "tag_leaders.npy", "tags.md"):
            (plain / f.name).symlink_to(f.resolve())
    load_bundle(load_settings, str(plain), progress=False)
    items = json.loads((small_bundle / "items.json").read_text())
    users = json.loads((small_bundle / "users.json").read_text())
    tags_of = {it["item_id"]: it["tags"] for it in items}
    keys = Keys(load_settings.key_prefix)
    r = redis.Redis.from_url(load_settings.redis_url, decode_responses=True)
    try:
        for user_id, seq in list(users.items())[:20]:
            assert user_state(r, keys, user_id)[2] == import_profile(tags_of[i] for i in seq)
        it = next(i for i in items if i["tags"])
        assert json.loads(r.get(keys.item(it["item_id"]))) == {
            "title": it["title"], "tags": it["tags"], "available": True}  # no clusters
    finally:
        r.close()


def test_load_makes_the_loaded_bundle_the_active_one(load_settings: Settings,
                                                     small_bundle: Path) -> None:
    """After a rebuild, `vidrec load` must not leave the replicas following the older active
    version (shared/rollout.py): the bundle whose users Redis holds is the one served."""
    from shared.rollout import RolloutKeys

    keys = RolloutKeys(load_settings.key_prefix)
    r = redis.Redis.from_url(load_settings.redis_url, decode_responses=True)
    try:
        r.set(keys.active, "an-older-build")
        stats = load_bundle(load_settings, str(small_bundle), progress=False)
        assert r.get(keys.active) == stats.bundle
        assert r.lrange(keys.history, 0, -1) == ["an-older-build"]  # `vidrec rollback` target
        load_bundle(load_settings, str(small_bundle), progress=False)  # same again: no entry
        assert r.lrange(keys.history, 0, -1) == ["an-older-build"]
    finally:
        r.close()
