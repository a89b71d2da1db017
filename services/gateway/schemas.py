"""The public API's bodies (what /docs shows). Internal service bodies are in shared/contracts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from shared.contracts import Event, EventType, ItemMeta
from shared.validation import Count, Identifier, Number


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    tags: list[str]
    score: float
    reasons: list[str] = Field(description="Why the item is here, e.g. 'matches #cats'.")
    source: str = Field(description="Candidate source that proposed it: ann (learned item "
                                    "vectors), content, tags or popular.")


class Recommendations(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    model_version: str = Field(description="Ranker that scored the list (bundle version).")
    request_id: str = Field(description="Send it back with events about these items "
                            "(with `position`) so they are attributed to this answer.")
    experiment: str | None = Field(None, description="Active experiment, if any.")
    arm: str | None = Field(None, description="The user's arm in that experiment.")
    degraded: list[str] = Field(
        description="Stages that could not answer and fell back (hydrate, retrieve, items, "
                    "score); empty when the answer is complete.")


class EventIn(BaseModel):
    """One interaction. `timestamp` is unix seconds or an ISO 8601 date-time."""

    event_id: Identifier = Field(description="Idempotency key.")
    user_id: Identifier
    item_id: Identifier
    type: EventType
    timestamp: Number | datetime = Field(
        examples=[1700000000, "2024-05-01T12:00:00Z"],
        description="Unix seconds or ISO 8601 (without a zone it is read as UTC).")
    watch_fraction: Number = Field(0.0, ge=0.0, le=1.0)
    request_id: str | None = Field(None, min_length=1, max_length=64,
                                   description="`request_id` of the answer that showed the item.")
    position: Count | None = Field(None, ge=0, le=999,
                                 description="0-based position of the item in that answer.")

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
        # model_construct: every field was validated just now, under the same constraints
        # as Event's (validating a second time was a tenth of the gateway's CPU per event)
        return Event.model_construct(
            event_id=self.event_id, user_id=self.user_id, item_id=self.item_id, type=self.type,
            timestamp=float(ts), watch_fraction=self.watch_fraction,
            request_id=self.request_id, position=self.position)


class EventBatchIn(BaseModel):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventResult(BaseModel):
    event_id: str
    status: str = Field(description="accepted, or duplicate (already recorded; not counted twice)")


class EventsAccepted(BaseModel):
    results: list[EventResult]


class History(BaseModel):
    user_id: str
    items: list[dict[str, Any]] = Field(
        description="{item_id, type, timestamp, title, tags}, newest last")


class TagWeight(BaseModel):
    tag: str
    weight: float = Field(description="Decayed weight now (events and imported history).")


class TasteProfile(BaseModel):
    user_id: str
    known: bool = Field(description="False when the store holds nothing for this user.")
    liked: list[TagWeight] = Field(description="Positive weights, strongest first.")
    disliked: list[TagWeight] = Field(description="Negative weights (dislikes), most first.")
    seen: int = Field(description="Items the user has interacted with.")


class PopularItems(BaseModel):
    items: list[ItemMeta]


class SimilarItem(BaseModel):
    item_id: str
    title: str
    tags: list[str]
    score: float = Field(description="Cosine similarity in the space of `source`.")
    source: str = Field(description="ann: learned item vectors (watched by the same people); "
                                    "content: title and tags.")


class SimilarItems(BaseModel):
    item_id: str
    title: str
    tags: list[str]
    items: list[SimilarItem]


class CatalogTag(BaseModel):
    tag: str
    items: int = Field(description="Available items carrying it.")


class CatalogTags(BaseModel):
    tags: list[CatalogTag]
    matching: int = Field(description="Tags matching `q` (the list is cut to `limit`).")


class KnownUser(BaseModel):
    user_id: str
    interactions: int = Field(description="Length of the user's sequence in the bundle.")


class KnownUserList(BaseModel):
    users: list[KnownUser]
    total: int = Field(description="Users in the bundle.")
    bundle: str
