"""The candidate sources are the one list in shared/sources.py: each name has its module in
services/retrieval/sources/, loaded in the list's order, and every answer counts each source."""

from __future__ import annotations

import pytest

import services.retrieval.sources as registry
from shared.sources import DEFAULT_CAPS, SOURCE_NAMES


def test_every_listed_source_is_loaded_in_the_lists_order() -> None:
    assert [s.name for s in registry.SOURCES] == list(SOURCE_NAMES) == list(DEFAULT_CAPS)
    assert set(registry.BY_NAME) == set(SOURCE_NAMES)
    for source in registry.SOURCES:
        assert type(source).__module__ == f"services.retrieval.sources.{source.name}"


def test_a_module_whose_source_has_another_name_is_refused(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(registry.BY_NAME["tags"], "name", "labels")
    with pytest.raises(ImportError, match="named 'labels', not 'tags'"):
        registry._load("tags")
