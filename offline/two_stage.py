"""Two-stage evaluation from a bundle's own files: candidates from the FAISS indexes (learned
ANN + content ANN + popular, per-source caps from settings), then the ONNX ranker scores them.
Everything outside the candidate set counts as not recommended."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from offline.baselines import user_content_queries
from offline.evaluate import ScoreFn
from offline.metrics import candidate_hits
from offline.split import Split
from offline.train import left_pad
from shared import ann
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.settings import Settings


class BundleModels:
    """The bundle's ONNX graphs and FAISS indexes, loaded once for evaluation."""

    def __init__(self, bundle: Bundle, threads: int = 2) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        cpu = ["CPUExecutionProvider"]
        self.query = ort.InferenceSession(str(bundle.file("query_encoder.onnx")), opts, cpu)
        self.ranker = ort.InferenceSession(str(bundle.file("ranker.onnx")), opts, cpu)
        self.index_ann = ann.load(bundle.file("index_ann.faiss"))
        self.index_content = ann.load(bundle.file("index_content.faiss"))
        self.content = bundle.content_embeddings()
        self.table = np.vstack([np.zeros((FIRST_ITEM_INDEX, self.content.shape[1]), np.float32),
                                self.content])
        self.max_history = bundle.max_history
        self.popular = np.argsort(-np.array([it["popularity"] for it in bundle.items]),
                                  kind="stable")

    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        ids = left_pad(histories, self.max_history)
        return self.query.run(None, {"hist_ids": ids, "hist_content": self.table[ids]})[0]

    def rank(self, histories: list[np.ndarray], candidates: list[np.ndarray]) -> list[np.ndarray]:
        hist = left_pad(histories, self.max_history)
        width = max(len(c) for c in candidates)
        cand = np.zeros((len(candidates), width), np.int64)
        for r, c in enumerate(candidates):
            cand[r, :len(c)] = c
        scores = self.ranker.run(None, {"hist_ids": hist, "hist_content": self.table[hist],
                                        "cand_ids": cand, "cand_content": self.table[cand]})[0]
        return [scores[r, :len(c)] for r, c in enumerate(candidates)]


def candidate_rows(models: BundleModels, split: Split, which: str, users: np.ndarray,
                   settings: Settings, by_source: dict[str, list[np.ndarray]] | None = None,
                   ) -> list[np.ndarray]:
    """Per user: the union of each source's top items (bundle rows), seen items removed.
    by_source, when given, also receives each source's own list per user."""
    histories = [split.history(u, which) for u in users]
    seen = [set((h - FIRST_ITEM_INDEX).tolist()) for h in histories]
    over = max((len(s) for s in seen), default=0)  # fetch extra so removals keep the caps full
    _, ann_rows = ann.search(models.index_ann, models.user_vectors(histories),
                             settings.candidates_ann + over)
    q = user_content_queries(split, which, users, models.content)
    _, content_rows = ann.search(models.index_content, q, settings.candidates_content + over)
    popular = models.popular[:settings.candidates_popular + over]
    out = []
    for r in range(len(users)):
        merged: dict[int, None] = {}
        for name, rows, cap in (("ann", ann_rows[r], settings.candidates_ann),
                                ("content", content_rows[r], settings.candidates_content),
                                ("popular", popular, settings.candidates_popular)):
            kept = [x for x in rows.tolist() if x >= 0 and x not in seen[r]][:cap]
            merged.update(dict.fromkeys(kept))
            if by_source is not None:
                by_source.setdefault(name, []).append(np.asarray(kept, np.int64))
        out.append(np.fromiter(merged, np.int64))
    return out


def two_stage_fn(models: BundleModels, split: Split, which: str, settings: Settings,
                 hits: dict[str, list[float]] | None = None) -> ScoreFn:
    """Score function for offline.evaluate. `hits`, when given, receives per user whether the
    target was among the candidates: key "union" for the whole set, and one key per source."""
    targets = getattr(split, which)

    def score(users: np.ndarray) -> np.ndarray:
        by_source: dict[str, list[np.ndarray]] = {}
        rows = candidate_rows(models, split, which, users, settings, by_source)
        if hits is not None:
            wanted = targets[users] - FIRST_ITEM_INDEX
            for name, lists in [("union", rows), *by_source.items()]:
                hits.setdefault(name, []).extend(candidate_hits(lists, wanted).tolist())
        histories = [split.history(u, which) for u in users]
        scores = np.full((len(users), split.num_items), -np.inf, np.float32)
        for r, (c, s) in enumerate(zip(rows, models.rank(histories,
                                       [c + FIRST_ITEM_INDEX for c in rows]), strict=True)):
            scores[r, c] = s
        return scores

    return score


def candidates_per_request(settings: Settings) -> int:
    return (settings.candidates_ann + settings.candidates_content + settings.candidates_popular)
