"""How values are packed into Redis (see docs/feature_store.md for the layout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel

from shared.contracts import Event, HistoryEntry, ItemMeta

IMPORT = "import"  # history entries written by `vidrec load` (no type, no time)


# ---- history entries: "<type>|<unix seconds or empty>|<item_id>" --------------------------
# The item id goes last so it may contain any character, "|" included.
def pack_history(item_id: str, type_: str = IMPORT, timestamp: float | None = None) -> str:
    return f"{type_}|{'' if timestamp is None else repr(float(timestamp))}|{item_id}"


def history_item_id(entry: str) -> str:
    return entry.split("|", 2)[2]


def unpack_history(entry: str) -> HistoryEntry:
    type_, ts, item_id = entry.split("|", 2)
    return HistoryEntry(item_id=item_id, type=type_, timestamp=float(ts) if ts else None)


# ---- item meta: one JSON object per item, so a batch is one MGET ---------------------------
def pack_item(meta: ItemMeta) -> bytes:
    d = {"title": meta.title, "tags": meta.tags, "available": meta.available}
    if meta.clusters:  # absent for a bundle without tag clusters
        d["clusters"] = meta.clusters
    return orjson.dumps(d)


def unpack_item(item_id: str, packed: str | bytes) -> ItemMeta:
    d = orjson.loads(packed)
    return ItemMeta(item_id, d["title"], d["tags"], d["available"], d.get("clusters") or [])


# ---- overlay: items put or deleted while serving -------------------------------------------
class OverlayItem(BaseModel):
    """One live change to the catalog. `meta.available` False means deleted."""

    meta: ItemMeta
    embedding: list[float] | None = None
    updated_at: float


def pack_overlay(item: OverlayItem) -> bytes:
    return orjson.dumps(item.model_dump())


def unpack_overlay(packed: str | bytes) -> OverlayItem:
    return OverlayItem.model_validate_json(packed)


# ---- events stream entry: one per recorded batch (layout v3, docs/feature_store.md) ------
# Field "events": the batch's events as JSON columns, one list per column of STREAM_COLUMNS
# (null where a client sent no request_id / position). Field "skip" (only when some): the
# comma-separated positions of events the stream already holds (not part of the entry).
# Field "once" ("1"): written by the same Lua script that moved the markers of its events to
# "done", so none of its events is in any other entry (the archiver claims the entry, not each
# event) except those listed in "replayed": retries of events whose marker was still "pending",
# which an entry written outside a script may hold too.
STREAM_COLUMNS = ("event_id", "user_id", "item_id", "type", "timestamp", "watch_fraction",
                  "request_id", "position")


def pack_stream_events(events: Sequence[Event]) -> bytes:
    """The "events" field of a stream entry: column lists, so that a batch is one value to
    write and the archiver builds Parquet columns without a loop per event."""
    return orjson.dumps({
        "event_id": [e.event_id for e in events], "user_id": [e.user_id for e in events],
        "item_id": [e.item_id for e in events], "type": [e.type for e in events],
        "timestamp": [float(e.timestamp) for e in events],
        "watch_fraction": [float(e.watch_fraction) for e in events],
        "request_id": [e.request_id for e in events],
        "position": [e.position for e in events]})


def stream_entry(events: Sequence[Event]) -> dict[str, bytes]:
    """A stream entry for events appended outside the Lua script (a cluster, the per-event
    path): not "once", so the archiver checks each event for a copy in another entry."""
    return {"events": pack_stream_events(events)}


def unpack_stream_events(fields: dict[str, str]) -> tuple[dict[str, list[Any]], list[int]]:
    """The columns of a stream entry's events without its skipped positions, and the position
    in the entry of each event kept."""
    cols: dict[str, list[Any]] = orjson.loads(fields["events"])
    n = len(cols["event_id"])
    skip = fields.get("skip")
    if not skip:
        return cols, list(range(n))
    gone = {int(i) for i in skip.split(",")}
    keep = [i for i in range(n) if i not in gone]
    return {name: [col[i] for i in keep] for name, col in cols.items()}, keep
