"""The public API's bodies (what /docs shows). Internal service bodies are in shared/contracts."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field, field_validator

from shared.contracts import Event, EventType, ItemMeta
from shared.validation import Identifier


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    tags: list[str]
    score: float
    reasons: list[str] = Field(description="Why the item is here, e.g. 'matches #cats'.")


class Recommendations(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    model_version: str = Field(description="Ranker that scored the list (bundle version).")
    degraded: list[str] = Field(
        description="Stages that could not answer and fell back (hydrate, retrieve, items, "
                    "score); empty when the answer is complete.")


class EventIn(BaseModel):
    """One interaction. `timestamp` is unix seconds or an ISO 8601 date-time."""

    event_id: Identifier = Field(description="Idempotency key.")
    user_id: Identifier
    item_id: Identifier
    type: EventType
    timestamp: float | datetime = Field(
        examples=[1700000000, "2024-05-01T12:00:00Z"],
        description="Unix seconds or ISO 8601 (without a zone it is read as UTC).")
    watch_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("timestamp")
    @classmethod
    def _finite(cls, v: float | datetime) -> float | datetime:
        if isinstance(v, float) and not (0 <= v < 1e11):
            raise ValueError("unix seconds must be between 0 and 1e11")
        return v

    def to_event(self) -> Event:
        ts = self.timestamp
        if isinstance(ts, datetime):
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            ts = ts.timestamp()
        return Event(event_id=self.event_id, user_id=self.user_id, item_id=self.item_id,
                     type=self.type, timestamp=float(ts), watch_fraction=self.watch_fraction)


class EventBatchIn(BaseModel):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventResult(BaseModel):
    event_id: str
    status: str = Field(description="accepted, or duplicate (already recorded; not counted twice)")


class EventsAccepted(BaseModel):
    results: list[EventResult]


class History(BaseModel):
    user_id: str
    items: list[dict] = Field(description="{item_id, type, timestamp, title, tags}, newest last")


class PopularItems(BaseModel):
    items: list[ItemMeta]
