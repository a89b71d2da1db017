"""`vidrec retrain`: a candidate bundle from the base dataset + the event log + the items
upserted while serving, then the promotion gate (offline/promotion.py).

What counts as an interaction (docs/learning_loop.md): an event whose type enters the online
history (`profile.enters_history`: view, like, complete) — the same sequence the ranker reads
while serving. Skips and dislikes are not positives (their online tag-profile weight is 0 or
negative); they are kept in the log for other uses. The sequence model has no per-interaction
weight, so a complete and a view are one step of the sequence each; the tag profile weighs them
(complete 3, like 2, view 0.5 + 0.5 × watch fraction).

Held out: per user, the newest positive event received after the serving bundle was built. It
is the user's last interaction in the assembled data, so the build's chronological split keeps it
out of training (the test item); the gate compares both bundles on it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from services.archiver.eventlog import EVENTS, EventLog
from services.feature_store.profile import enters_history
from shared.bundle import Bundle, resolve_bundle
from shared.data import Dataset, Item, load_dataset
from shared.settings import Settings


@dataclass
class LogFacts:
    events: int = 0
    positives: int = 0
    users_with_events: int = 0
    new_users: int = 0
    unknown_items: int = 0
    held_out: int = 0
    upserted_items: int = 0
    upserted_items_with_events: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RetrainData:
    dataset: Dataset
    holdout: dict[str, str]  # user -> held-out item
    facts: LogFacts


def upserted_items(settings: Settings) -> list[Item]:
    """Items put through the API while serving (the Redis overlay), available ones."""
    from services.feature_store.codec import unpack_overlay
    from services.feature_store.keys import Keys
    from shared.redis_conn import make_redis_sync

    client = make_redis_sync(settings)
    try:
        raw = client.hgetall(Keys(settings.key_prefix).overlay)
    finally:
        client.close()
    items = []
    for packed in raw.values():
        o = unpack_overlay(packed)
        if o.meta.available:
            items.append(Item(o.meta.item_id, o.meta.title, tuple(o.meta.tags)))
    return sorted(items, key=lambda it: it.item_id)


def assemble(base: Dataset, eventlog: EventLog, new_items: list[Item],
             holdout_after: float | None) -> RetrainData:
    facts = LogFacts()
    t0 = time.perf_counter()
    table = eventlog.read(EVENTS, ["user_id", "item_id", "type", "timestamp", "received_at"])
    facts.events = table.num_rows
    items = list(base.items)
    known = {it.item_id for it in items}
    for it in new_items:
        if it.item_id not in known:
            items.append(it)
            known.add(it.item_id)
    facts.upserted_items = len(new_items)
    new_ids = {it.item_id for it in new_items}
    per_user: dict[str, list[tuple[float, str, float]]] = defaultdict(list)
    cols = table.to_pydict()
    for user, item, type_, ts, received in zip(cols["user_id"], cols["item_id"], cols["type"],
                                               cols["timestamp"], cols["received_at"],
                                               strict=True):
        if not enters_history(type_):
            continue
        if item not in known:
            facts.unknown_items += 1
            continue
        facts.positives += 1
        per_user[user].append((ts, item, _seconds(received)))
    holdout: dict[str, str] = {}
    sequences = {u: list(s) for u, s in base.sequences.items()}
    timestamps = {u: list(t) for u, t in base.timestamps.items()}
    with_events: set[str] = set()
    for user, events in per_user.items():
        events.sort()  # by the event's own time; the log keeps arrival order
        if holdout_after is not None and events[-1][2] > holdout_after:
            # the newest: it becomes the user's last interaction, which the build's
            # chronological split keeps out of training (its test item) - the candidate never
            # trains on it, and the serving bundle was built before it arrived
            holdout[user] = events[-1][1]
        if user not in sequences:
            facts.new_users += 1
            sequences[user], timestamps[user] = [], []
        last = timestamps[user][-1] if timestamps[user] else float("-inf")
        for ts, item, _ in events:
            sequences[user].append(item)
            last = max(last, ts)  # keep the base's order: log events come after it
            timestamps[user].append(last)
            with_events.add(item)
    facts.users_with_events = len(per_user)
    facts.held_out = len(holdout)
    facts.upserted_items_with_events = len(new_ids & with_events)
    sequences = {u: s for u, s in sequences.items() if s}
    ds = Dataset(f"{base.name}+log", items, sequences,
                 {u: timestamps[u] for u in sequences}, None, base.source_files)
    facts.seconds["assemble"] = round(time.perf_counter() - t0, 2)
    return RetrainData(ds, holdout, facts)


def _seconds(received) -> float:
    return received.timestamp() if isinstance(received, datetime) else float(received) / 1000


def run_retrain(settings: Settings, dataset: str, serving: str | None = None,
                warm_start: bool = True, epochs: int | None = None,
                train_minutes: float | None = None, version: str | None = None,
                tolerance: float | None = None, promote: bool = False) -> Path:
    from offline.build import run_build
    from offline.promotion import gate

    started = time.perf_counter()
    serving_path = resolve_bundle(settings.artifacts_dir, serving or _active(settings))
    serving_bundle = Bundle(serving_path)
    built_at = datetime.fromisoformat(serving_bundle.manifest["built_at"]).timestamp()
    print(f"[retrain] serving bundle {serving_bundle.version}; reading {settings.event_log}",
          flush=True)
    base = load_dataset(dataset, settings.data_dir)
    data = assemble(base, EventLog(settings.event_log), upserted_items(settings), built_at)
    print(f"[retrain] event log: {data.facts.__dict__}", flush=True)
    version = version or f"retrain-{datetime.now().strftime('%Y%m%dT%H%M%S')}"
    path = run_build(settings, data.dataset, epochs=epochs, train_minutes=train_minutes,
                     version=version, warm_start=serving_bundle if warm_start else None,
                     extra_manifest={"retrain": {"base_dataset": dataset,
                                                 "serving": serving_bundle.version,
                                                 "event_log": settings.event_log,
                                                 "log": data.facts.__dict__}},
                     point_latest_link=False)
    decision = gate(settings, Bundle(path), serving_bundle, data, tolerance)
    print(f"[retrain] {(path / 'promotion.md').read_text()}", flush=True)
    print(f"[retrain] done in {time.perf_counter() - started:.0f} s: {path}", flush=True)
    if promote and decision["promote"]:
        from shared.rollout_cli import promote_command

        promote_command(settings, str(path))
    return path


def _active(settings: Settings) -> str:
    """The active bundle from Redis (docs/learning_loop.md), else settings.bundle."""
    import asyncio

    from shared.redis_conn import make_redis
    from shared.rollout import active_version

    async def read() -> str | None:
        redis = make_redis(settings)
        try:
            return await active_version(redis, settings.key_prefix)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(read()) or settings.bundle
    except Exception:  # Redis away: the configured bundle
        return settings.bundle

