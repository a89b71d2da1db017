"""The candidate sources, registered in one place.

Order matters: the union keeps an item under the first source that proposed it, so a source
listed earlier wins an item two sources propose. Adding a source: its module here (a `name` and
one `search` method, see base.py), one line below, its name in `shared.contracts.Source` (the
wire's spelling) and its default cap in `Settings.candidates`.
"""

from __future__ import annotations

from services.retrieval.sources.ann import AnnSource
from services.retrieval.sources.base import CandidateSource, Found, Prepared
from services.retrieval.sources.content import ContentSource
from services.retrieval.sources.popular import PopularSource
from services.retrieval.sources.tags import TagSource

SOURCES: tuple[CandidateSource, ...] = (AnnSource(), ContentSource(), TagSource(),
                                        PopularSource())
BY_NAME: dict[str, CandidateSource] = {s.name: s for s in SOURCES}

__all__ = ["BY_NAME", "SOURCES", "CandidateSource", "Found", "Prepared"]
