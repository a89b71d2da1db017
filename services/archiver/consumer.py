"""One stream -> the event log, exactly once per record id, through a Redis consumer group.

A batch goes through these steps (docs/learning_loop.md):
1. Read: first this consumer's own pending entries (a batch it read before a crash), then
   entries other consumers left pending longer than `archive_claim_idle_s` (XAUTOCLAIM),
   then new ones (XREADGROUP >, blocking; a read short of a full batch waits
   `archive_linger_ms` once and takes what arrived meanwhile).
2. Claim each record id with a marker in Redis, `SET <marker> <file> NX GET`: the marker names
   the file that holds (or will hold) the record. A record whose marker names another file
   that exists is a duplicate (the events stream holds an event twice when a client retried
   after a failure between its XADD and the dedupe marker) and is left out; a marker naming a
   file that was never written (a crash before the write, then a different batch) is taken
   over. A batch entry of events written "once" (by the script that also marked its events
   "done", so no other entry holds them) is claimed with one marker for the entry.
3. Write the file (its name is derived from the entries it covers: a replayed batch maps to
   the same name, and a file that exists is never written twice), durably.
4. XACK, only now.
A crash anywhere replays the batch; steps 2-3 make the replay write nothing twice. Entries the
stream trimmed before they were archived are counted, logged and acknowledged (never silent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import ResponseError

from services.archiver.eventlog import EventLog, LogKind, Records, entry_day
from shared.redis_conn import AsyncRedis

log = logging.getLogger("vidrec.archiver")

ENTRIES = Counter("vidrec_archiver_entries_total",
                  "Records (events, impressions) handled by outcome: archived, duplicate "
                  "(record id already in the log); and lost: stream entries trimmed before they "
                  "were archived (an events entry holds one request's batch).",
                  ["stream", "outcome"])
FILES = Counter("vidrec_archiver_files_total", "Parquet files written.", ["stream"])
LAG = Gauge("vidrec_archiver_lag_entries",
            "Entries in the stream not archived yet (undelivered + pending).", ["stream"])
LAG_SECONDS = Gauge("vidrec_archiver_lag_seconds",
                    "Age of the oldest entry not archived yet (0 when caught up).", ["stream"])
ERRORS = Counter("vidrec_archiver_errors_total", "Failed batches (retried).", ["stream"])
BATCH_SECONDS = Histogram("vidrec_archiver_batch_seconds", "Time to archive one batch.",
                          ["stream"])


@dataclass(frozen=True)
class ArchiverConfig:
    group: str = "archiver"
    consumer: str = "archiver-1"
    batch: int = 20_000
    block_ms: int = 500
    linger_ms: int = 0
    claim_idle_ms: int = 60_000
    marker_ttl_s: int = 7 * 86_400
    pause_before_ack_s: float = 0.0  # failure tests only: a window to kill the process in


Entry = tuple[str, dict[str, str] | None]
MAX_ENTRY_RECORDS = 1000  # a batch entry holds one POST /v1/events: at most 1,000 events


class StreamArchiver:
    def __init__(self, redis: AsyncRedis, eventlog: EventLog, kind: LogKind, stream: str,
                 marker_key: Callable[[dict[str, str]], str], cfg: ArchiverConfig,
                 entry_marker: Callable[[str], str] | None = None) -> None:
        self.redis = redis
        self.log = eventlog
        self.kind = kind
        self.stream = stream
        self.marker_key = marker_key  # a record's marker, from its fields
        # the marker of a whole batch entry written "once" (services/feature_store/codec.py)
        self.entry_marker = entry_marker or (lambda sid: f"{stream}:arch:entry:{sid}")
        self.cfg = cfg
        # records per entry as last read; until then the most a batch entry holds
        self._per_entry = float(MAX_ENTRY_RECORDS)
        self.label = kind.name
        self.last_error: str | None = None
        self.last_batch_at: float | None = None
        self._claim_cursor = "0-0"
        for outcome in ("archived", "duplicate", "lost"):
            ENTRIES.labels(self.label, outcome)

    # ---- reading -------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        """Create the consumer group at the start of the stream (the whole stream is archived
        on the first deployment); an existing group keeps its position."""
        try:
            await self.redis.xgroup_create(self.stream, self.cfg.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _count(self) -> int:
        """Entries per read: about `batch` records, whether an entry holds one record or a
        whole batch of events."""
        return max(1, min(self.cfg.batch, round(self.cfg.batch / self._per_entry)))

    async def _read(self) -> list[Entry]:
        c = self.cfg
        own = await self.redis.xreadgroup(c.group, c.consumer, {self.stream: "0"},
                                          count=self._count())
        entries = _entries(own)
        if entries:
            return entries
        claimed = await self.redis.xautoclaim(self.stream, c.group, c.consumer,
                                              min_idle_time=c.claim_idle_ms,
                                              start_id=self._claim_cursor, count=self._count())
        self._claim_cursor = claimed[0] or "0-0"
        entries = [(i, f) for i, f in claimed[1]]
        deleted = list(claimed[2]) if len(claimed) > 2 else []
        if deleted:  # pending entries the stream no longer holds: lost, say so
            await self._lost(deleted, "pending entries trimmed from the stream")
            await self.redis.xack(self.stream, c.group, *deleted)
        if entries:
            return entries
        await self.check_trim()
        count = self._count()
        new = _entries(await self.redis.xreadgroup(c.group, c.consumer, {self.stream: ">"},
                                                   count=count, block=c.block_ms))
        if new and len(new) < count and c.linger_ms:
            # a short read: let more arrive before writing, so that a steady flow of small
            # batches makes a few big files rather than many small ones (and costs less CPU)
            await asyncio.sleep(c.linger_ms / 1000)
            new += _entries(await self.redis.xreadgroup(
                c.group, c.consumer, {self.stream: ">"}, count=count - len(new)))
        return new

    # ---- one batch -----------------------------------------------------------------------
    async def step(self) -> int:
        """Archive one batch; returns how many entries it handled (0: nothing to do)."""
        entries = await self._read()
        if not entries:
            await self.update_lag()
            return 0
        start = time.perf_counter()
        gone = [i for i, f in entries if not f]
        if gone:
            await self._lost(gone, "pending entries trimmed from the stream")
        live = [(i, f) for i, f in entries if f]
        archived, duplicates = await self._archive(live)
        if live:  # records per entry: the next read asks for about `batch` records
            self._per_entry = max(1.0, (archived + duplicates) / len(live))
        if self.cfg.pause_before_ack_s:
            log.warning("archiver %s: batch of %d written; acknowledging in %.1f s",
                        self.label, len(entries), self.cfg.pause_before_ack_s)
            await asyncio.sleep(self.cfg.pause_before_ack_s)
        await self.redis.xack(self.stream, self.cfg.group, *(i for i, _ in entries))
        ENTRIES.labels(self.label, "archived").inc(archived)
        ENTRIES.labels(self.label, "duplicate").inc(duplicates)
        BATCH_SECONDS.labels(self.label).observe(time.perf_counter() - start)
        self.last_batch_at = time.time()
        return len(entries)

    async def _archive(self, entries: list[tuple[str, dict[str, str]]]) -> tuple[int, int]:
        groups = [g for sid, fields in entries
                  for g in self.kind.split(sid, fields, self.marker_key, self.entry_marker)]
        # the same record twice in one batch: the first one stands
        firsts: dict[str, Records] = {}
        for g in groups:
            firsts.setdefault(g.marker, g)
        duplicates = sum(map(len, groups)) - sum(map(len, firsts.values()))
        by_day: dict[str, list[Records]] = {}
        for g in firsts.values():
            by_day.setdefault(entry_day(g.entry), []).append(g)
        archived = 0
        for day, day_groups in sorted(by_day.items()):
            # named after every entry of the batch that falls on this day (before dedupe), so
            # that a replay of the same entries finds the same name
            day_ids = [sid for sid, _ in entries if entry_day(sid) == day]
            path = self.log.part_path(self.kind, day, day_ids[0], day_ids[-1])
            keep = await self._claim(day_groups, path)
            kept = sum(map(len, keep))
            duplicates += sum(map(len, day_groups)) - kept
            if keep and not await asyncio.to_thread(self.log.exists, path):
                await asyncio.to_thread(self._write, path, keep)
                FILES.labels(self.label).inc()
            archived += kept
        return archived, duplicates

    def _write(self, path: str, groups: list[Records]) -> None:
        self.log.write(self.kind, path, self.kind.table(groups))

    async def _claim(self, groups: list[Records], path: str) -> list[Records]:
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            pipe.set(g.marker, path, nx=True, get=True, ex=self.cfg.marker_ttl_s)
        owners = await pipe.execute()
        keep, takeover = [], []
        exists: dict[str, bool] = {}
        for g, owner in zip(groups, owners, strict=True):
            if owner is None or owner == path:
                keep.append(g)
                continue
            if owner not in exists:
                exists[owner] = await asyncio.to_thread(self.log.exists, owner)
            if not exists[owner]:  # claimed by a batch that never wrote its file
                keep.append(g)
                takeover.append(g.marker)
        if takeover:
            pipe = self.redis.pipeline(transaction=False)
            for marker in takeover:
                pipe.set(marker, path, ex=self.cfg.marker_ttl_s)
            await pipe.execute()
        return keep

    # ---- loss and lag --------------------------------------------------------------------
    async def _lost(self, ids: list[str], why: str) -> None:
        ENTRIES.labels(self.label, "lost").inc(len(ids))
        log.error("archiver %s: %d entries LOST (%s), first %s: raise events_stream_maxlen or "
                  "run more archivers", self.label, len(ids), why, ids[0] if ids else "-")

    async def check_trim(self) -> int:
        """Entries trimmed from the stream before the group read them: counted and logged."""
        info = await self.redis.xinfo_stream(self.stream)
        group = await self._group_info()
        if group is None:
            return 0
        first = info.get("first-entry")
        last_delivered = group.get("last-delivered-id", "0-0")
        if not first or _id_key(first[0]) <= _id_key(last_delivered):
            return 0
        added, read = info.get("entries-added"), group.get("entries-read")
        if read is None and last_delivered == "0-0" and added is not None:
            read = 0  # the group (created at the stream's start) never read anything
        if added is None or read is None:
            lost = 1  # Redis cannot count this gap: report that there is one
        else:
            lost = int(added) - int(read) - int(info.get("length", 0))
        if lost > 0:
            ENTRIES.labels(self.label, "lost").inc(lost)
            log.error("archiver %s: %d entries LOST: the stream was trimmed below the archiver's "
                      "backlog (oldest entry %s, archived up to %s); raise the stream's maxlen "
                      "or run more archivers", self.label, lost, first[0], last_delivered)
        return max(0, lost)

    async def _group_info(self) -> dict[str, Any] | None:
        for g in await self.redis.xinfo_groups(self.stream):
            if g.get("name") == self.cfg.group:
                return g
        return None

    async def update_lag(self) -> None:
        group = await self._group_info()
        if group is None:
            return
        lag = group.get("lag")
        if lag is None:  # Redis cannot tell after a trim: count what is after the cursor
            lag = len(await self.redis.xrange(self.stream, f"({group['last-delivered-id']}",
                                              "+", count=100_000) or ())
        pending = int(group.get("pending", 0))
        LAG.labels(self.label).set(int(lag) + pending)
        oldest = None
        if pending:
            summary = await self.redis.xpending(self.stream, self.cfg.group)
            oldest = summary.get("min")
        elif int(lag):
            nxt = await self.redis.xrange(self.stream, f"({group['last-delivered-id']}", "+",
                                          count=1)
            oldest = nxt[0][0] if nxt else None
        LAG_SECONDS.labels(self.label).set(
            max(0.0, time.time() - int(oldest.split("-")[0]) / 1000) if oldest else 0.0)

    async def run(self, stop: asyncio.Event) -> None:
        await self._retrying(self.ensure_group, stop)
        lag_at = 0.0
        while not stop.is_set():
            try:
                n = await self.step()
                if n and time.monotonic() - lag_at > 1.0:
                    await self.update_lag()
                    lag_at = time.monotonic()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or storage down: keep the batch, retry
                ERRORS.labels(self.label).inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("archiver %s: batch failed, retrying: %s", self.label,
                            self.last_error)
                if "NOGROUP" in str(exc):  # the stream was deleted (or Redis lost it)
                    await self._retrying(self.ensure_group, stop)
                await _sleep(stop, 0.5)

    async def _retrying(self, call: Callable[[], Awaitable[object]],
                        stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await call()
                return
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("archiver %s: %s; retrying", self.label, self.last_error)
                await _sleep(stop, 0.5)


def _entries(reply: Any) -> list[Entry]:
    """XREADGROUP's reply [[stream, [(id, fields), ...]]] -> [(id, fields)]; fields are None for
    a pending entry the stream no longer holds."""
    return [(i, f) for _, msgs in reply or [] for i, f in msgs]


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
