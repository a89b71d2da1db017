"""The interfaces between the gateway and the three services.

Each service has one Python class implementing its protocol in-process (used by `vidrec serve`
in one process) and one HTTP client implementing the same protocol (used when the gateway runs
alone). The pydantic models below are also the JSON bodies of the internal HTTP endpoints:

    feature store  POST /v1/hydrate        HydrateRequest      -> UserState
                   POST /v1/items/meta     ItemMetaRequest     -> ItemMetaResponse
                   POST /v1/events         EventBatch          -> EventBatchResult
                   GET  /v1/users/{id}/history?limit=N         -> HistoryResponse
    retrieval      POST /v1/retrieve       RetrieveRequest     -> RetrieveResponse
                   GET  /v1/items/{id}/similar?k=N             -> SimilarResponse (404: unknown)
                   PUT  /v1/items/{id}     ItemUpsert (admin)  -> ItemMeta
                   DELETE /v1/items/{id}   (admin)             -> 204
                   POST /admin/reload      (admin)             -> {"bundle": version}
                   PUT  /admin/bundles     BundlesRequest (admin) -> BundlesResponse
    ranking        POST /v1/score          ScoreRequest        -> ScoreResponse
                   POST /admin/reload      (admin)             -> {"bundle": version}
                   PUT  /admin/bundles     BundlesRequest (admin) -> BundlesResponse

Errors (shared/errors.py): a client raises `ServiceUnavailable` when the service cannot be
reached, times out or answers 5xx; the gateway's stage policy turns that into a degraded answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Protocol

from pydantic import AfterValidator, BaseModel, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

# the failures a protocol call raises (shared/errors.py), importable from here with the types
from shared.errors import BundleNotServed as BundleNotServed
from shared.errors import ServiceUnavailable as ServiceUnavailable
from shared.sources import SOURCE_NAMES, unknown_sources
from shared.validation import Count, Identifier, Number, Tag

EventType = Literal["view", "like", "skip", "complete", "dislike"]


def _a_source(name: str) -> str:
    # the error Literal[...] gave, so a wrong name reads the same in a 422 as before
    if name not in SOURCE_NAMES:
        raise PydanticCustomError("literal_error", "Input should be {expected}", {
            "expected": " or ".join([", ".join(map(repr, SOURCE_NAMES[:-1])),
                                     repr(SOURCE_NAMES[-1])])})
    return name


# A candidate source's name on the wire (shared/sources.py lists them): a str checked against
# the list, documented as its enum in the OpenAPI documents.
Source = Annotated[str, AfterValidator(_a_source),
                   WithJsonSchema({"enum": list(SOURCE_NAMES), "type": "string"})]


def sources_only(**caps: int) -> dict[str, int]:
    """Caps that ask only the named sources, e.g. `sources_only(tags=20)`: every other source
    gets 0. A name that is not a source is a programming error (KeyError)."""
    unknown = unknown_sources(caps)
    if unknown:
        raise KeyError(f"not a candidate source: {unknown}")
    return {name: caps.get(name, 0) for name in SOURCE_NAMES}


# ---- feature store ------------------------------------------------------------------------
class HydrateRequest(BaseModel):
    user_id: str
    history_len: Count = Field(50, ge=1, le=10_000)


class UserState(BaseModel):
    user_id: str
    known: bool = Field(description="False when Redis holds nothing for this user.")
    history: list[str] = Field(default_factory=list, description="Recent item ids, newest last.")
    tag_profile: dict[str, float] = Field(default_factory=dict, description="Decayed tag weights.")
    seen: list[str] = Field(default_factory=list, description="Every item the user has seen.")


# A slotted dataclass, not a BaseModel, as `Candidate` below: ~45 are decoded per recommendation
# request, and pydantic models there cost the request CPU and the garbage collector's passes.
# pydantic still validates one wherever it arrives as JSON. Change one with dataclasses.replace.
@dataclass(slots=True)
class ItemMeta:
    """An item's title, tags and availability."""

    item_id: str
    title: str
    tags: list[str] = field(default_factory=list)
    available: bool = True
    clusters: Annotated[list[str], Field(description=(
        "Tag clusters of `tags` (shared/tags.py); empty when the bundle has none."))] = field(
        default_factory=list)

    @property
    def tag_keys(self) -> list[str]:
        """What the tag profile, diversity and explanations count: clusters, else tags."""
        return self.clusters or self.tags


class ItemMetaRequest(BaseModel):
    item_ids: list[str]


class ItemMetaResponse(BaseModel):
    items: dict[str, ItemMeta]


class Event(BaseModel):
    event_id: Identifier
    user_id: Identifier
    item_id: Identifier
    type: EventType
    timestamp: Number = Field(description="Unix seconds (the API also accepts ISO 8601).")
    watch_fraction: Number = Field(0.0, ge=0.0, le=1.0)
    # Attribution (optional): the recommendation answer the item was picked from, and its
    # position there. Events without them still count for the user, not for an experiment.
    request_id: str | None = Field(None, min_length=1, max_length=64)
    position: Count | None = Field(None, ge=0, le=999)


class EventBatch(BaseModel):
    events: list[Event] = Field(min_length=1, max_length=1000)


class EventOutcome(BaseModel):
    event_id: str
    status: Literal["accepted", "duplicate"]


class EventBatchResult(BaseModel):
    results: list[EventOutcome]


class HistoryEntry(BaseModel):
    item_id: str
    type: EventType | Literal["import"] = "import"
    timestamp: float | None = None


class HistoryResponse(BaseModel):
    user_id: str
    items: list[HistoryEntry]


# ---- retrieval ----------------------------------------------------------------------------
class RetrievalQuery(BaseModel):
    history: list[str] = Field(default_factory=list, description="Item ids, newest last.")
    tags: dict[str, Number] = Field(default_factory=dict, description="Tag -> weight to match.")
    exclude: list[str] = Field(default_factory=list)
    caps: dict[Source, Count] = Field(default_factory=dict,
                                          description="Candidates per source.")


# A plain slotted dataclass, not a BaseModel: a request carries ~135 candidates, and in one
# process retrieval hands them to the gateway with no wire in between. Built by their
# constructor they cost 26 us a request against 124 us validated as models, and leave fewer
# objects to the garbage collector (bench/results/serving_side_by_side_dataclasses.json: whole
# requests before and after). pydantic still validates them wherever they arrive as JSON and
# documents them in the OpenAPI schema. Code that builds one gives a source of shared/sources.py.
@dataclass(slots=True)
class Candidate:
    """One item a retrieval source proposed for a query."""

    item_id: str
    source: Source
    score: float
    nearest_history: Annotated[str | None, Field(
        description="Watched item most like this one.")] = None
    matched_tags: list[str] = field(default_factory=list)


class RetrieveRequest(BaseModel):
    queries: list[RetrievalQuery] = Field(min_length=1, max_length=256)
    bundle: str | None = Field(None, description="Bundle version to answer from (one served "
                               "side by side for an experiment arm); default: the main one.")


class RetrievalResult(BaseModel):
    candidates: list[Candidate]
    per_source: dict[str, int] = Field(default_factory=dict)
    resolved_tags: dict[str, list[str]] = Field(default_factory=dict, description=(
        "Query tags that are not a tag cluster themselves -> the clusters they matched."))


class RetrieveResponse(BaseModel):
    results: list[RetrievalResult]
    bundle: str


class Neighbour(BaseModel):
    """An item like another one, and the space it was found in: `ann` (the learned item
    vectors: watched by the same people) or `content` (title and tags)."""

    item_id: str
    source: Literal["ann", "content"]
    score: float = Field(description="Cosine similarity in that space.")


class SimilarResponse(BaseModel):
    item_id: str
    items: list[Neighbour]
    bundle: str


class ItemUpsert(BaseModel):
    title: str = Field(min_length=1, max_length=2000)
    tags: list[Tag] = Field(default_factory=list, max_length=100)
    embedding: list[float] | None = Field(
        None, description="Content embedding (encoder dim); computed from title+tags if absent.")


# ---- ranking ------------------------------------------------------------------------------
class ScoreItem(BaseModel):
    history: list[str] = Field(description="Item ids, newest last.")
    candidates: list[str] = Field(max_length=5000)
    sources: list[Source] | None = Field(None, description=(
        "Per candidate, the retrieval source that proposed it (candidates in retrieval's "
        "union order); the candidate ranker's source features. Absent: unknown."))
    source_scores: list[float] | None = Field(None, description=(
        "Per candidate, that source's score (required with `sources`)."))

    @model_validator(mode="after")
    def _sources_line_up(self) -> ScoreItem:
        for name in ("sources", "source_scores"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.candidates):
                raise ValueError(f"{name} has {len(values)} entries for "
                                 f"{len(self.candidates)} candidates")
        if (self.sources is None) != (self.source_scores is None):
            raise ValueError("give both sources and source_scores, or neither")
        return self


class ScoreRequest(BaseModel):
    requests: list[ScoreItem] = Field(min_length=1, max_length=256)
    bundle: str | None = Field(None, description="Bundle version whose ranker scores (one "
                               "served side by side for an experiment arm); default: the main one.")
    # strict: JSON true/false only (lax mode would take 0/1 and "yes", which the schema refuses)
    features: bool = Field(False, strict=True, description="Also answer the candidate "
                           "ranker's input features per candidate (checks and debugging).")


class ScoreResponse(BaseModel):
    scores: list[list[float]]
    model_version: str
    ranker: Literal["candidate", "tower"] = Field("tower", description=(
        "`candidate`: the candidate-aware ranker scored; `tower`: the bundle has none and the "
        "retrieval tower's score answered (a fallback)."))
    attended: list[list[str | None]] | None = Field(None, description=(
        "Candidate ranker: per candidate, the history item it attended to most."))
    features: list[list[list[float]]] | None = None


# ---- bundles served side by side (experiments) ------------------------------------------------
class BundlesRequest(BaseModel):
    bundles: list[str] = Field(max_length=16, description="Versions to hold besides the main "
                               "one; any other extra version is dropped.")


class BundlesResponse(BaseModel):
    main: str
    extra: list[str]


# ---- protocols ----------------------------------------------------------------------------
class FeatureStoreAPI(Protocol):
    async def hydrate(self, user_id: str, history_len: int) -> UserState: ...
    async def item_meta(self, item_ids: list[str]) -> dict[str, ItemMeta]: ...
    async def record_events(self, events: list[Event]) -> list[EventOutcome]: ...
    async def history(self, user_id: str, limit: int) -> list[HistoryEntry]: ...
    async def ready(self) -> bool: ...


class RetrievalAPI(Protocol):
    # bundle: a version served side by side (experiments); None = the main bundle
    async def retrieve(self, queries: list[RetrievalQuery],
                       bundle: str | None = None) -> list[RetrievalResult]: ...
    async def similar(self, item_id: str, k: int) -> list[Neighbour]: ...
    async def upsert_item(self, item_id: str, item: ItemUpsert) -> ItemMeta: ...
    async def delete_item(self, item_id: str) -> None: ...
    async def ready(self) -> bool: ...


class RankingAPI(Protocol):
    async def score(self, requests: list[ScoreItem],
                    bundle: str | None = None) -> tuple[list[list[float]], str]: ...
    async def score_detailed(self, requests: list[ScoreItem], bundle: str | None = None,
                             features: bool = False) -> ScoreResponse: ...
    async def ready(self) -> bool: ...
