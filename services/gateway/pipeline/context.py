"""What one recommendation request carries from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.contracts import Candidate, ItemMeta, UserState


@dataclass(frozen=True, slots=True)
class RecRequest:
    user_id: str
    k: int = 20
    exclude: frozenset[str] = frozenset()
    include_tags: frozenset[str] = frozenset()
    exclude_tags: frozenset[str] = frozenset()
    interests: tuple[str, ...] = ()


@dataclass(slots=True)
class Pick:
    """One item of the answer."""

    candidate: Candidate
    meta: ItemMeta
    score: float
    reasons: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RecContext:
    request: RecRequest
    # what hydrate read of the user (history, tag profile, seen); None before it ran
    user_state: UserState | None = None
    candidates: list[Candidate] = field(default_factory=list)
    per_source: dict[str, int] = field(default_factory=dict)
    meta: dict[str, ItemMeta] = field(default_factory=dict)
    # item_id -> score; `ranked` is False when the ranker did not score (retrieval order kept)
    scores: dict[str, float] = field(default_factory=dict)
    ranked: bool = False
    # item_id -> the history item the candidate ranker attended to most (explanations)
    attended: dict[str, str] = field(default_factory=dict)
    model_version: str = ""
    picks: list[Pick] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)  # filter name -> candidates removed
    # the tag clusters the request's `interests` resolved to (retrieval embeds free text);
    # None until the retrieve stage has resolved them
    interest_clusters: frozenset[str] | None = None
    degraded: list[str] = field(default_factory=list)

    @property
    def interests(self) -> frozenset[str]:
        """The request's interests as tag clusters (as stated until they are resolved)."""
        if self.interest_clusters is None:
            return frozenset(self.request.interests)
        return self.interest_clusters

    @property
    def user(self) -> UserState:
        if self.user_state is None:  # hydrate always sets it (the fallback included)
            return UserState(user_id=self.request.user_id, known=False)
        return self.user_state
