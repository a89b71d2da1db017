"""The bundle's item list, held by the gateway so that it can still answer when a dependency is
down: titles and tags when item meta is unavailable, a popular list when retrieval is down.

Loaded once at start (and again on /admin/reload) from `items.json`; read-only per request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

from services.gateway.catalog_meta import CatalogMeta
from shared.bundle import Bundle
from shared.columns import ItemColumns
from shared.contracts import Candidate, ItemMeta
from shared.ranker_features import STATS_FILE
from shared.tags import TagClusters


@dataclass
class Catalog:
    version: str
    meta: MutableMapping[str, ItemMeta]  # CatalogMeta when loaded from a bundle
    popular: list[str] = field(default_factory=list)  # item ids, most popular first
    popularity: dict[str, float] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)  # ids upserted/deleted through the gateway
    revision: int = 0  # bumped by every change through the gateway
    _tag_counts: tuple[int, list[tuple[str, int]]] | None = field(default=None, repr=False)
    tag_clusters: TagClusters = field(default_factory=TagClusters.identity)
    # the bundle's ranker reads candidate features (shared/ranker_features.py): it may prefer
    # any source's candidate, so retrieval is asked for every source
    candidate_ranker: bool = False

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Catalog:
        """items.json streamed into columns (CatalogMeta): no model or dict per item."""
        clusters = TagClusters.load(bundle.path)
        columns = ItemColumns.read(bundle, clusters)
        # a repeated id: the last row wins, as a dict's update
        row_of = {item_id: row for row, item_id in enumerate(columns.item_ids)}
        popularity = dict(zip(columns.item_ids, columns.popularity, strict=True))
        popular = sorted(popularity, key=popularity.__getitem__, reverse=True)
        return cls(version=bundle.version,
                   meta=CatalogMeta(row_of, columns.titles, columns.tags,
                                    columns.clusters if clusters.enabled else None),
                   popular=popular, popularity=popularity, tag_clusters=clusters,
                   candidate_ranker=(bundle.path / STATS_FILE).is_file())

    def interest_clusters(self, interests: Iterable[str]) -> frozenset[str]:
        """The clusters of stated interests the bundle knows (no text encoder here: the
        retrieval service resolves free text, this is the fallback when it cannot)."""
        return frozenset(c for i in interests if (c := self.tag_clusters.of(i)) is not None)

    def tag_keys(self, item_id: str) -> Sequence[str]:
        """An item's ItemMeta.tag_keys, () when unknown; from a bundle's columns without
        building a model (CatalogMeta.tag_keys)."""
        if isinstance(self.meta, CatalogMeta):
            return self.meta.tag_keys(item_id)
        meta = self.meta.get(item_id)
        return meta.tag_keys if meta is not None else ()

    @classmethod
    def empty(cls) -> Catalog:
        return cls(version="", meta={})

    def remember(self, item: ItemMeta) -> None:
        """An item upserted through this gateway: its title/tags are known from now on."""
        self.meta[item.item_id] = item
        self.changed.add(item.item_id)
        self.revision += 1

    def forget(self, item_id: str) -> None:
        """A deleted item: keep its title for history views, but never propose it again."""
        old = self.meta.get(item_id)
        if old is not None:
            self.meta[item_id] = replace(old, available=False)
            self.changed.add(item_id)
            self.revision += 1

    def keep_upserts_from(self, older: Catalog) -> None:
        for item_id in older.changed:
            self.meta[item_id] = older.meta[item_id]
        self.changed |= older.changed

    def tag_counts(self) -> list[tuple[str, int]]:
        """(tag, available items carrying it), most common first; recomputed only after the
        catalog changed."""
        if self._tag_counts is None or self._tag_counts[0] != self.revision:
            counts: dict[str, int] = {}
            if isinstance(self.meta, CatalogMeta):
                counts = self.meta.tag_counts()
            else:
                for meta in self.meta.values():
                    if meta.available:
                        for tag in set(meta.tags):
                            counts[tag] = counts.get(tag, 0) + 1
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            self._tag_counts = (self.revision, ranked)
        return self._tag_counts[1]

    def popular_candidates(self, n: int, exclude: set[str] | frozenset[str],
                           tags: Iterable[str] = ()) -> list[Candidate]:
        """Up to n available popular items not in `exclude`; items in one of the clusters of
        `tags` first, in the retrieval tag source's order (services/retrieval/sources/tags.py
        `tag_matches`): the most stated interests matched first (two interests of one cluster count
        twice, as the tag source sums them), then the clusters taking turns (an item's place in
        its best matched cluster's popularity order), then popularity. The whole catalogue is
        scanned: this path only runs while retrieval is down."""
        wanted = Counter(c for t in dict.fromkeys(tags)
                         if (c := self.tag_clusters.of(t)) is not None)
        seen_in: Counter[str] = Counter()  # items of each wanted cluster met so far
        matching: list[tuple[float, int, int, Candidate]] = []
        rest: list[Candidate] = []
        for position, item_id in enumerate(self.popular):
            if item_id in exclude:
                continue
            meta = self.meta[item_id]
            if not meta.available:
                continue
            matched = [t for t in meta.tag_keys if t in wanted] if wanted else []
            if matched:
                score = float(sum(wanted[t] for t in matched))
                place = min(seen_in[t] for t in matched)
                seen_in.update(set(matched))
                matching.append((-score, place, position, Candidate(
                    item_id=item_id, source="tags", matched_tags=matched, score=score)))
            elif len(rest) < n:
                rest.append(Candidate(item_id=item_id, source="popular",
                                      score=self.popularity[item_id]))
            if not wanted and len(rest) >= n:
                break
        matching.sort(key=lambda m: m[:3])
        return ([m[3] for m in matching] + rest)[:n]
