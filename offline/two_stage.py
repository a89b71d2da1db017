"""Two-stage evaluation from a bundle's own files, through the serving code: the candidates are
what the retrieval service proposes (services/retrieval/retrieve.py, every registered source,
per-source caps from settings) for the query the gateway would send (`retrieval_query`: the
history, the tag profile the feature store imports for it, everything seen excluded); then the
ONNX ranker scores them. Everything outside the candidate set counts as not recommended."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from offline.ranker_eval import serving_caps
from offline.split import Split
from offline.train import left_pad
from services.feature_store.loader import imported_user
from services.gateway.pipeline.retrieve import retrieval_query
from services.retrieval.retrieve import prepare, propose, resolve_caps, union
from services.retrieval.sources import SOURCES, Found
from services.retrieval.state import RetrievalState, load_state
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.onnx_graphs import CANDIDATE_RANKER, RANKER
from shared.onnx_session import make_session
from shared.ranker_features import NUM_FEATURES
from shared.settings import Settings


class BundleModels:
    """What the two stages need of a bundle, loaded once: retrieval's own state (indexes,
    encoders, tag clusters, popularity; on the CPU) and the ranker."""

    def __init__(self, bundle: Bundle, settings: Settings) -> None:
        cpu = settings.model_copy(update={"use_gpu": False})
        self.state: RetrievalState = load_state(bundle, cpu)
        self.ranker = make_session(bundle.file(RANKER.file), cpu)
        # a candidate ranker (docs/ranker.md) is evaluated by offline/ranker_eval.py; `rank`
        # below is the tower's score only
        names = {a.name for a in self.ranker.get_inputs()}
        graph = CANDIDATE_RANKER if "cand_features" in names else RANKER
        graph.check(self.ranker, fixed={"F": NUM_FEATURES})
        content = bundle.content_embeddings()
        self.table = np.vstack([np.zeros((FIRST_ITEM_INDEX, content.shape[1]), np.float32),
                                content])
        self.max_history = bundle.max_history
        tags = self.state.clusters if self.state.tag_clusters.enabled else self.state.tags
        self.tags_of = dict(zip(self.state.item_ids, tags, strict=True))

    def rank(self, histories: list[np.ndarray], candidates: list[np.ndarray]) -> list[np.ndarray]:
        hist = left_pad(histories, self.max_history)
        width = max(len(c) for c in candidates)
        cand = np.zeros((len(candidates), width), np.int64)
        for r, c in enumerate(candidates):
            cand[r, :len(c)] = c
        scores = RANKER.run(self.ranker, hist_ids=hist, hist_content=self.table[hist],
                            cand_ids=cand, cand_content=self.table[cand])["scores"]
        return [scores[r, :len(c)] for r, c in enumerate(candidates)]


def proposals(models: BundleModels, sequences: Sequence[Sequence[str]], settings: Settings,
              caps: dict[str, int] | None = None) -> list[list[Found]]:
    """Per user (their whole sequence of item ids, oldest first, as `vidrec load` imports it):
    what each retrieval source proposes (the registry's order) for the query the gateway
    sends. caps: per source (default: what the gateway asks for a user with a history when a
    candidate ranker scores, serving_caps)."""
    state = models.state
    caps = serving_caps(settings) if caps is None else caps
    queries = [retrieval_query(imported_user("offline", list(seq), models.tags_of,
                                             settings.history_len), caps)
               for seq in sequences]
    batch = [prepare(state, q, resolve_caps(q, caps, i)) for i, q in enumerate(queries)]
    return propose(state, batch)


def candidates_for(models: BundleModels, sequences: Sequence[Sequence[str]], settings: Settings,
                   by_source: dict[str, list[np.ndarray]] | None = None,
                   caps: dict[str, int] | None = None) -> list[np.ndarray]:
    """`proposals` as the retrieval service's candidates: bundle rows, in its union order.
    by_source, when given, also receives each source's own proposals per user."""
    out = []
    for found in proposals(models, sequences, settings, caps):
        if by_source is not None:
            for source, (rows, _) in zip(SOURCES, found, strict=True):
                by_source.setdefault(source.name, []).append(rows)
        out.append(union(found)[0])
    return out


def candidate_rows(models: BundleModels, split: Split, which: str, users: np.ndarray,
                   settings: Settings, by_source: dict[str, list[np.ndarray]] | None = None,
                   ) -> list[np.ndarray]:
    """candidates_for the split's users, with their history before the `which` target."""
    ids = models.state.item_ids
    sequences = [[ids[r] for r in (split.history(u, which) - FIRST_ITEM_INDEX).tolist()]
                 for u in users]
    return candidates_for(models, sequences, settings, by_source)
