"""Candidates for a batch of queries from every registered source (sources/), over one
RetrievalState: prepare each query, let each source search the whole batch, then the union.

Each source proposes up to its cap of items that are not excluded, not in the history and not
dead; the union keeps an item under the first source that proposed it (the registry's order:
ann > content > tags > popular) and `per_source` counts every proposal, duplicates included.

`retrieve_batch` is the one implementation of candidate assembly: the retrieval service answers
with it, and the offline two-stage evaluation (offline/two_stage.py) calls it too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from services.retrieval.errors import InvalidRequest
from services.retrieval.sources import SOURCES, Found, Prepared
from services.retrieval.sources.tags import resolve_tags
from services.retrieval.state import RetrievalState
from shared.contracts import Candidate, RetrievalQuery, RetrievalResult
from shared.observability import timed
from shared.sources import MAX_CANDIDATES_PER_SOURCE
from shared.steps import Steps, finish

SERVICE = "retrieval"


def resolve_caps(query: RetrievalQuery, defaults: Mapping[str, int],
                 position: int) -> dict[str, int]:
    caps = {**defaults, **query.caps}
    for source, cap in caps.items():
        if not 0 <= cap <= MAX_CANDIDATES_PER_SOURCE:
            raise InvalidRequest(f"queries[{position}].caps.{source}",
                                 f"must be between 0 and {MAX_CANDIDATES_PER_SOURCE}, got {cap}")
    return caps


def prepare(state: RetrievalState, query: RetrievalQuery, caps: dict[str, int]) -> Prepared:
    row_of = state.row_of
    # History items unknown to the catalogue carry no signal (no content, no id): dropped.
    hist = [r for r in map(row_of.get, query.history) if r is not None]
    excluded = [r for r in map(row_of.get, query.exclude) if r is not None]
    blocked = state.dead.view.copy()
    blocked[hist] = True
    blocked[excluded] = True
    tags, resolved = resolve_tags(state, query.tags) if query.tags else ({}, {})
    return Prepared(hist_rows=np.array(hist[-state.max_history:], dtype=np.int64),
                    blocked=blocked,
                    n_blocked=len(hist) + len(excluded) + state.dead_in_index,
                    caps=caps, tags=tags, resolved=resolved)


def propose(state: RetrievalState, batch: list[Prepared]) -> list[list[Found]]:
    """Per query, what each source proposed (in the registry's order)."""
    return finish(propose_steps(state, batch))


class CatalogueChanged(Exception):
    """An upsert or delete landed while a stepped read was paused."""


def propose_steps(state: RetrievalState, batch: list[Prepared]) -> Steps[list[list[Found]]]:
    """`propose`, pausing after each source. A catalogue that changed during a pause raises
    CatalogueChanged: the batch's blocked masks no longer match the indexes."""
    changes = state.changes
    by_source = []
    for source in SOURCES:
        with timed(SERVICE, source.name):
            by_source.append(source.search(state, batch))
        yield
        if state.changes != changes:
            raise CatalogueChanged
    return [list(found) for found in zip(*by_source, strict=True)]


def union(found: list[Found]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, scores, source position): each row once, under the first source proposing it."""
    rows = np.concatenate([f[0] for f in found])
    scores = np.concatenate([f[1].astype(np.float32, copy=False) for f in found])
    source = np.repeat(np.arange(len(found)), [len(f[0]) for f in found])
    _, first = np.unique(rows, return_index=True)  # first proposal of each row wins
    first.sort()
    return rows[first], scores[first], source[first]


def retrieve_batch(state: RetrievalState, queries: list[RetrievalQuery],
                   default_caps: Mapping[str, int]) -> list[RetrievalResult]:
    """Every query's candidates: the whole read path of retrieval."""
    return finish(retrieve_steps(state, queries, default_caps))


def retrieve_steps(state: RetrievalState, queries: list[RetrievalQuery],
                   default_caps: Mapping[str, int]) -> Steps[list[RetrievalResult]]:
    """`retrieve_batch` in steps (shared/steps.py): a pause after each source's search, so that
    an event loop serving it in process (the one-process gateway) can read its sockets, and
    refuse what it cannot take, between them instead of after the whole ~1 ms.

    An upsert or delete may land during a pause: the rows prepared for (the blocked mask) would
    no longer match the indexes. So after each pause, a changed catalogue (`state.changes`)
    means the read starts again, at once and without pauses: writes are rare, reads ~1 ms."""
    caps = [resolve_caps(q, default_caps, i) for i, q in enumerate(queries)]
    with timed(SERVICE, "prepare"):
        batch = [prepare(state, q, c) for q, c in zip(queries, caps, strict=True)]
    # prepared in the same step as the first search, so the masks fit the indexes until a pause
    try:
        found = yield from propose_steps(state, batch)
    except CatalogueChanged:
        return retrieve_batch(state, queries, default_caps)
    with timed(SERVICE, "assemble"):
        return [assemble(state, p, f) for p, f in zip(batch, found, strict=True)]


def matched_tags(state: RetrievalState, p: Prepared, rows: np.ndarray,
                 row_list: list[int]) -> list[list[str]]:
    """Per candidate, the query's clusters it carries. Only a candidate in one of those
    clusters' rows can carry one (a quarter of them, MicroLens-50k); the rest skip the lookup
    of their clusters, which was most of `assemble`'s time."""
    wanted, item_clusters = p.tags, state.clusters
    in_wanted = [state.tag_rows[t] for t in wanted if t in state.tag_rows]
    if not in_wanted:  # no query tags, or none the catalogue holds
        return [[] for _ in row_list]
    # a mask over the catalogue: O(rows of the clusters), where np.isin would sort them all
    mask = np.zeros(len(state.item_ids), dtype=bool)
    for cluster_rows in in_wanted:
        mask[cluster_rows] = True
    return [[t for t in item_clusters[r] if t in wanted] if hit else []
            for r, hit in zip(row_list, mask[rows].tolist(), strict=True)]


def assemble(state: RetrievalState, p: Prepared, found: list[Found]) -> RetrievalResult:
    """The union of the sources' proposals, each candidate with its explanation."""
    per_source = {source.name: len(rows) for source, (rows, _) in zip(SOURCES, found, strict=True)}
    rows, scores, source = union(found)
    if not len(rows):
        return RetrievalResult(candidates=[], per_source=per_source, resolved_tags=p.resolved)
    ids = state.item_ids
    row_list = rows.tolist()
    if len(p.hist_rows):
        # Cosine of learned vectors: the watched item most like each candidate.
        watched = np.unique(p.hist_rows)
        unit = state.unit.view  # float16 for large catalogues: multiplied in float32
        best = watched[(unit[rows].astype(np.float32, copy=False)
                        @ unit[watched].astype(np.float32, copy=False).T).argmax(axis=1)]
        nearest = [ids[r] for r in best.tolist()]
    else:
        nearest = [None] * len(row_list)
    matched = matched_tags(state, p, rows, row_list)
    names = [s.name for s in SOURCES]
    # Built, not validated: every value comes from the index and the bundle (sources' names,
    # numpy's floats), and a validation of ~135 candidates was ~4% of a request's CPU.
    return RetrievalResult.model_construct(
        per_source=per_source, resolved_tags=p.resolved, candidates=[
            Candidate(ids[r], names[s], sc, nh, mt)
            for r, s, sc, nh, mt in zip(row_list, source.tolist(), scores.tolist(), nearest,
                                        matched, strict=True)])
