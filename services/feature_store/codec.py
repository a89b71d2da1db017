"""How values are packed into Redis (see docs/feature_store.md for the layout)."""

from __future__ import annotations

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
    # (plain construction: for a model this small pydantic validates faster than
    # model_construct copies)
    return ItemMeta(item_id=item_id, title=d["title"], tags=d["tags"], available=d["available"],
                    clusters=d.get("clusters") or [])


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


# ---- events stream entry -------------------------------------------------------------------
def stream_fields(event: Event) -> dict[str, str]:
    fields = {"event_id": event.event_id, "user_id": event.user_id, "item_id": event.item_id,
              "type": event.type, "timestamp": repr(float(event.timestamp)),
              "watch_fraction": repr(float(event.watch_fraction))}
    if event.request_id is not None:  # attribution fields only when the client sent them
        fields["request_id"] = event.request_id
    if event.position is not None:
        fields["position"] = str(event.position)
    return fields
