"""A batch of events in one Lua call (`profile.RECORD_BATCH_LUA`) instead of one per event.

On a single Redis the call also appends the batch's new (or still "pending") events to the
stream as one entry and marks them "done", so a batch is one round trip, one script run and one
stream entry. States are applied first and the stream appended after: an append that fails
leaves the markers "pending", and the caller's error + retry appends them, exactly as with the
per-event script. On a cluster the events are grouped by the slot of their user (every key of a
user shares it), one call per slot, pipelined; the stream (its own slot) is appended by the
caller afterwards, as with the per-event script. Idempotency is unchanged: the dedupe marker is
checked and set inside the script.

The events travel as two arguments (their state changes as one JSON array, and the stream
entry's value) rather than a dozen each: packing tens of thousands of arguments was most of
the gateway's CPU per event, and parsing them a good part of Redis's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from redis.crc import key_slot

from services.feature_store.codec import pack_stream_events
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
        changes = []
        for i in positions:
            e = events[i]
            keys += rec.event_keys(e)
            changes.append(rec.state_change(e, metas[e.item_id], now))
        args: list[Any] = ["0" if cluster else "1", s.event_dedupe_ttl_s, s.history_cap,
                      repr(rec.half_life_s), s.events_stream_maxlen, orjson.dumps(changes)]
        if not cluster:
            keys.append(rec.keys.events)
            args.append(pack_stream_events(events))
        calls.append((keys, args))
    replies = await eval_pipelined(rec.redis, RECORD_BATCH_LUA, _BATCH_SHA, calls)
    states: list[str | None] = [None] * len(events)
    for positions, reply in zip(groups.values(), replies, strict=True):
        for i, state in zip(positions, reply, strict=True):
            states[i] = state or None
    unstreamed = [] if not cluster else [e for e, st in zip(events, states, strict=True)
                                         if st != "done"]
    return states, unstreamed
