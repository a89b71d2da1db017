"""Recording a batch of events: validate, apply once per event_id, append to the stream.

Order of work, and why:
1. Item meta for every event (one MGET): unknown ids raise UnknownItems before any write,
   and the item's tags feed the tag profile (on a cluster the item keys live in other slots
   than the user's, so the script cannot read them itself).
2. One Lua script per event, all pipelined: checks the dedupe marker and applies history,
   seen set and tag profile atomically in the user's slot. A new event leaves the marker
   "pending".
3. XADD of one stream entry holding every new event (and every "pending" replay), then the
   markers become "done". The stream lives in its own slot, so it cannot share the script;
   instead a crash between 2 and 3 leaves "pending", the caller gets an error (never a silent
   drop), and its retry appends the event. So user state changes exactly once per event_id and
   the stream gets each accepted event at least once (consumers dedupe on event_id).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from services.feature_store.batch import record_batch
from services.feature_store.codec import pack_history, stream_entry
from services.feature_store.errors import UnknownItems
from services.feature_store.keys import Keys
from services.feature_store.profile import RECORD_EVENT_LUA, enters_history, event_weight
from services.feature_store.scripts import eval_pipelined
from shared.contracts import Event, EventOutcome, ItemMeta
from shared.redis_conn import AsyncRedis, as_fields
from shared.settings import Settings

_SCRIPT_SHA = hashlib.sha1(RECORD_EVENT_LUA.encode()).hexdigest()


class EventRecorder:
    def __init__(self, redis: AsyncRedis, keys: Keys, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.half_life_s = settings.tag_half_life_days * 86400.0

    async def record(self, events: Sequence[Event],
                     metas: dict[str, ItemMeta]) -> list[EventOutcome]:
        bad = [(i, e.item_id) for i, e in enumerate(events) if e.item_id not in metas]
        if bad:
            raise UnknownItems(bad)

        # the same event twice in one batch: only the first one runs
        status: list[Literal["accepted", "duplicate"]] = ["duplicate"] * len(events)
        firsts: dict[tuple[str, str], int] = {}
        for i, e in enumerate(events):
            firsts.setdefault((e.user_id, e.event_id), i)
        todo = sorted(firsts.values())

        now = self.clock()
        if self.settings.events_batch_script:
            states, unstreamed = await record_batch(self, [events[i] for i in todo], metas, now)
        else:  # one script per event (the path before batching; bench/event_ingest.py)
            calls = [self._script_args(events[i], metas[events[i].item_id], now) for i in todo]
            states = await self._run_scripts(calls)
            unstreamed = [events[i] for i, state in zip(todo, states, strict=True)
                          if state != "done"]
        for i, state in zip(todo, states, strict=True):
            status[i] = "accepted" if state is None else "duplicate"
        await self._append_to_stream(unstreamed)
        return [EventOutcome.model_construct(event_id=e.event_id, status=s)
                for e, s in zip(events, status, strict=True)]

    def event_keys(self, e: Event) -> list[str]:
        """The script's KEYS for one event, all in the user's slot."""
        k, user = self.keys, e.user_id
        return [k.dedupe(user, e.event_id), k.hist(user), k.seen(user), k.tags(user),
                k.tagref(user)]

    def state_change(self, e: Event, meta: ItemMeta,
                     now: float) -> tuple[str, str, float, str, list[str]]:
        """(history entry or "", item_id, weight, t, tag clusters): what a new event does."""
        entry = pack_history(e.item_id, e.type, e.timestamp) if enters_history(e.type) else ""
        # a clock from the future would push the profile's reference time ahead and make
        # every later event worth almost nothing: decay uses min(event time, now)
        t = min(e.timestamp, now) if math.isfinite(e.timestamp) else now
        # the profile counts clusters, once each (docs/tags.md)
        return (entry, e.item_id, event_weight(e.type, e.watch_fraction), repr(t),
                list(dict.fromkeys(meta.tag_keys)))

    def _script_args(self, e: Event, meta: ItemMeta, now: float) -> tuple[list[str], list[Any]]:
        entry, item_id, weight, t, tags = self.state_change(e, meta, now)
        args = [self.settings.event_dedupe_ttl_s, entry, self.settings.history_cap, item_id,
                repr(weight), t, repr(self.half_life_s), *tags]
        return self.event_keys(e), args

    async def _run_scripts(self, calls: list[tuple[list[str], list[Any]]]) -> list[str | None]:
        return await eval_pipelined(self.redis, RECORD_EVENT_LUA, _SCRIPT_SHA, calls)

    async def _append_to_stream(self, events: list[Event]) -> None:
        """One stream entry for the events, then their markers "done" (not atomic with the
        entry: a crash in between makes the retry append them again, so the entry is not
        marked "once" and the archiver checks each of its events)."""
        if not events:
            return
        await self.redis.xadd(self.keys.events, as_fields(stream_entry(events)),
                              maxlen=self.settings.events_stream_maxlen, approximate=True)
        pipe = self.redis.pipeline(transaction=False)
        for e in events:
            pipe.set(self.keys.dedupe(e.user_id, e.event_id), "done", xx=True, keepttl=True)
        await pipe.execute()
