"""The candidate sources: one module per source, loaded in the order of the one list of names
(shared/sources.py, which also holds each one's default cap).

A source's module is `services/retrieval/sources/<name>.py` and exposes `SOURCE`: an object with
that `name` and one `search` method (see base.py). The union keeps an item under the first
source that proposed it, so a source listed earlier wins an item two sources propose.
Adding a source: its module here, its name and cap in shared/sources.py, its test.
"""

from __future__ import annotations

from importlib import import_module

from services.retrieval.sources.base import CandidateSource, Found, Prepared
from shared.sources import SOURCE_NAMES


def _load(name: str) -> CandidateSource:
    source: CandidateSource = import_module(f"{__name__}.{name}").SOURCE
    if source.name != name:  # the module's file name is the source's name
        raise ImportError(f"{__name__}.{name}.SOURCE is named {source.name!r}, not {name!r}")
    return source


SOURCES: tuple[CandidateSource, ...] = tuple(_load(name) for name in SOURCE_NAMES)
BY_NAME: dict[str, CandidateSource] = {s.name: s for s in SOURCES}

__all__ = ["BY_NAME", "SOURCES", "CandidateSource", "Found", "Prepared"]
