"""The gateway catalog's columns (services/gateway/catalog_meta.py) answer exactly what one
ItemMeta per bundle item answered, on a real bundle, and keep upserts and deletes on top."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from services.gateway.catalog import Catalog
from services.gateway.catalog_meta import CatalogMeta
from shared.bundle import Bundle
from shared.contracts import ItemMeta
from shared.tags import TagClusters


def _one_model_per_item(bundle_dir: Path) -> dict[str, ItemMeta]:
    clusters = TagClusters.load(bundle_dir)
    return {str(it["item_id"]): ItemMeta(
        item_id=str(it["item_id"]), title=it.get("title", ""), tags=list(it.get("tags", [])),
        clusters=clusters.clusters(list(it.get("tags", []))) if clusters.enabled else [])
        for it in json.loads((bundle_dir / "items.json").read_text())}


def _counts(metas: dict[str, ItemMeta]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in metas.values():
        if m.available:
            for tag in set(m.tags):
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def test_the_columns_answer_what_one_model_per_item_answered(small_bundle: Path) -> None:
    catalog = Catalog.from_bundle(Bundle(small_bundle))
    expected = _one_model_per_item(small_bundle)
    assert isinstance(catalog.meta, CatalogMeta)
    assert len(catalog.meta) == len(expected) and list(catalog.meta) == list(expected)
    assert all(catalog.meta[i] == m for i, m in expected.items())
    assert "no-such-item" not in catalog.meta and catalog.meta.get("no-such-item") is None
    assert dict(catalog.tag_counts()) == _counts(expected)


def test_upserts_and_deletes_sit_on_top_of_the_columns(small_bundle: Path) -> None:
    catalog = Catalog.from_bundle(Bundle(small_bundle))
    expected = _one_model_per_item(small_bundle)
    first, second = list(expected)[:2]
    catalog.forget(first)
    new = ItemMeta(item_id="brand-new", title="New", tags=["fresh", "fresh"])
    catalog.remember(new)
    assert catalog.meta[first].available is False
    assert catalog.meta[first].title == expected[first].title
    assert catalog.meta["brand-new"] == new and "brand-new" in catalog.meta
    assert len(catalog.meta) == len(expected) + 1 and list(catalog.meta)[-1] == "brand-new"
    expected[first] = replace(expected[first], available=False)
    expected["brand-new"] = new
    assert dict(catalog.tag_counts()) == _counts(expected)
    assert catalog.meta[second] == expected[second]


def test_built_models_are_reused_and_bounded(small_bundle: Path, monkeypatch) -> None:
    from services.gateway import catalog_meta

    monkeypatch.setattr(catalog_meta, "BUILT_CACHE_ITEMS", 2)
    meta = Catalog.from_bundle(Bundle(small_bundle)).meta
    first, second, third = list(meta)[:3]
    assert meta[first] is meta[first]  # built once, then reused
    assert meta[second] == _one_model_per_item(small_bundle)[second]
    meta[third]  # the cache was full: cleared, then holds this one
    assert meta[first] == _one_model_per_item(small_bundle)[first]
    assert len(meta._built) <= 2


def test_tag_keys_come_from_the_columns_without_building_models(small_bundle: Path) -> None:
    """The head stage asks every candidate's tag keys: answered from the columns, equal to
    the model's, and no model is built or kept for it (kept models stalled the collector)."""
    catalog = Catalog.from_bundle(Bundle(small_bundle))
    expected = _one_model_per_item(small_bundle)
    meta = catalog.meta
    assert isinstance(meta, CatalogMeta)
    assert any(m.clusters for m in expected.values())  # the bundle has clusters to prefer
    for item_id, model in expected.items():
        assert list(catalog.tag_keys(item_id)) == model.tag_keys
    assert meta._built == {}
    assert catalog.tag_keys("no-such-item") == ()
    # a change through the gateway answers from its model, as every other read does
    catalog.remember(ItemMeta(item_id="brand-new", title="New", tags=["fresh"]))
    assert list(catalog.tag_keys("brand-new")) == ["fresh"]
    # a plain dict catalogue (tests, the empty catalogue) answers alike
    plain = Catalog(version="v", meta=dict(expected))
    assert all(list(plain.tag_keys(i)) == m.tag_keys for i, m in expected.items())
