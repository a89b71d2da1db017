"""A batch of events in one Lua call (`profile.RECORD_BATCH_LUA`) instead of one per event.

On a single Redis the call also appends each new (or still "pending") event to the stream and
marks it "done", so a batch is one round trip and one script run. States are applied first and
the stream appended after: an append that fails leaves the rest "pending", and the caller's
error + retry appends them, exactly as with the per-event script. On a cluster the events are
grouped by the slot of their user (every key of a user shares it), one call per slot, pipelined;
the stream (its own slot) is appended by the caller afterwards, as with the per-event script.
Idempotency is unchanged: the dedupe marker is checked and set inside the script.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.crc import key_slot

from services.feature_store.codec import stream_fields
from services.feature_store.profile import RECORD_BATCH_LUA
from services.feature_store.scripts import eval_pipelined
from shared.contracts import Event, ItemMeta
from shared.redis_conn import is_cluster

if TYPE_CHECKING:
    from services.feature_store.events import EventRecorder

_BATCH_SHA = hashlib.sha1(RECORD_BATCH_LUA.encode()).hexdigest()


async def record_batch(rec: EventRecorder, events: Sequence[Event], metas: dict[str, ItemMeta],
                       now: float) -> tuple[list[str | None], list[Event]]:
    """Per event its marker before the call (None: new), and the events the caller must still
    append to the stream."""
    if not events:
        return [], []
    cluster = is_cluster(rec.redis)
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(events):
        slot = key_slot(rec.keys.user_tag(e.user_id).encode()) if cluster else 0
        groups.setdefault(slot, []).append(i)
    s = rec.settings
    calls = []
    for positions in groups.values():
        keys: list[str] = []
        args: list[Any] = ["0" if cluster else "1", s.event_dedupe_ttl_s, s.history_cap,
                      repr(rec.half_life_s), s.events_stream_maxlen]
        for i in positions:
            e = events[i]
            ekeys, eargs = rec._script_args(e, metas[e.item_id], now)
            keys += ekeys
            tags = eargs[7:]
            fields = [x for kv in stream_fields(e).items() for x in kv]
            args += [eargs[1], eargs[3], eargs[4], eargs[5], len(tags), *tags, len(fields),
                     *fields]
        if not cluster:
            keys.append(rec.keys.events)
        calls.append((keys, args))
    replies = await eval_pipelined(rec.redis, RECORD_BATCH_LUA, _BATCH_SHA, calls)
    states: list[str | None] = [None] * len(events)
    for positions, reply in zip(groups.values(), replies, strict=True):
        for i, state in zip(positions, reply, strict=True):
            states[i] = state or None
    unstreamed = [] if not cluster else [e for e, st in zip(events, states, strict=True)
                                         if st != "done"]
    return states, unstreamed
