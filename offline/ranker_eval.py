"""Two-stage evaluation from a bundle's own files, side by side in one run:

    retrieval_only  the retrieval tower's order (user_vec . item_vec) over the candidate set
    two_stage       the bundle's ranker.onnx over the same set, fed by the same feature module
                    the ranking service uses (shared/ranker_features.py); with a bundle that
                    has no candidate ranker this is the tower again (the serving fallback)

Candidates come from the serving retrieval code (offline/two_stage.py), or from
offline/ranker_data.py's copy of its assembly when no BundleModels is given. Everything
outside the set counts as not recommended; ties break by bundle row, as the full-ranking
evaluation does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from offline.metrics import summarise
from offline.ranker_data import Example, candidate_examples
from offline.ranker_train import candidate_ranks
from offline.split import Split
from offline.train import left_pad
from shared import ranker_features
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.settings import Settings
from shared.sources import ranked_caps


def serving_caps(settings: Settings) -> dict[str, int]:
    """What the gateway asks retrieval for a user with a history when the bundle has a
    candidate ranker (services/gateway/pipeline/retrieve.py): its budget within the caps.
    The ranker is trained on the same candidates, so it learns on what it will see: on
    MicroLens-50k, with the same tower, trained on the budget it scored two-stage NDCG@10
    0.0515 at serving against 0.0510 when trained on every source's full cap (~471
    candidates), and trained in 79 s instead of 123 s."""
    return ranked_caps(settings.candidate_caps, settings.ranker_caps)


def item_tag_keys(bundle_dir: Path, item_tags: list[list[str]]) -> list[list[str]]:
    """Per bundle row, the tag clusters the tag profile counts (the tags, without clusters)."""
    from shared.tags import TagClusters

    clusters = TagClusters.load(bundle_dir)
    return [clusters.clusters(tags) if clusters.enabled else list(dict.fromkeys(tags))
            for tags in item_tags]


class BundleRanker:
    """ranker.onnx of a bundle, fed the way the ranking service feeds it."""

    def __init__(self, bundle: Bundle, threads: int = 2) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle.file("ranker.onnx")), opts,
                                            ["CPUExecutionProvider"])
        self.candidate = "cand_features" in {i.name for i in self.session.get_inputs()}
        content = bundle.content_embeddings()
        self.table = np.vstack([np.zeros((FIRST_ITEM_INDEX, content.shape[1]), np.float32),
                                content])
        self.max_history = bundle.max_history

    def score(self, examples: list[Example], feats: list[np.ndarray] | None) -> list[np.ndarray]:
        hist = left_pad([e.history + FIRST_ITEM_INDEX for e in examples], self.max_history)
        width = max(len(e.rows) for e in examples)
        cand = np.zeros((len(examples), width), np.int64)
        for b, e in enumerate(examples):
            cand[b, :len(e.rows)] = e.rows + FIRST_ITEM_INDEX
        feeds = {"hist_ids": hist, "hist_content": self.table[hist], "cand_ids": cand,
                 "cand_content": self.table[cand]}
        if self.candidate:
            fx = np.zeros((*cand.shape, ranker_features.NUM_FEATURES), np.float32)
            for b, f in enumerate(feats or []):
                fx[b, :len(f)] = f
            feeds["cand_features"] = fx
        scores = self.session.run(["scores"], feeds)[0]
        return [scores[b, :len(e.rows)] for b, e in enumerate(examples)]


def serving_examples(models, split: Split, which: str, users: np.ndarray,
                     settings: Settings) -> list[Example]:
    """The retrieval service's own candidate sets (offline/two_stage.py: the serving code, for
    the query the gateway sends for an imported user) as ranking problems: rows in its union
    order, each with the source that kept it, its position there and that source's score."""
    from offline.two_stage import proposals
    from services.retrieval.retrieve import union
    from services.retrieval.sources import SOURCES as REGISTRY

    position = np.array([ranker_features.SOURCES.index(s.name) for s in REGISTRY], np.int8)
    ids = models.state.item_ids
    histories = [split.history(u, which) - FIRST_ITEM_INDEX for u in users]
    found_per_user = proposals(models, [[ids[r] for r in h.tolist()] for h in histories],
                               settings)
    targets = getattr(split, which)[users] - FIRST_ITEM_INDEX
    out = []
    for u, h, t, found in zip(users, histories, targets, found_per_user, strict=True):
        rows, scores, source = union(found)
        src = position[source]
        out.append(Example(int(u), h, rows.astype(np.int64), src,
                           ranker_features.union_ranks(src.tolist()),
                           scores.astype(np.float32), int(t)))
    return out


def two_stage_metrics(bundle: Bundle, split: Split, settings: Settings, user_vectors,
                      batch: int = 64, models=None,
                      only: np.ndarray | None = None) -> tuple[dict[str, dict], dict]:
    """({"retrieval_only": metrics, "two_stage": metrics}, candidate recall facts) on test.

    user_vectors: histories (model indices) -> tower user vectors (the bundle's ONNX encoder).
    models: offline/two_stage.py BundleModels: the candidates are then the serving code's;
    without, offline/ranker_data.py's copy of its assembly.
    only: evaluate these test users only (a sample, for large catalogues: bench/scale.py).
    """
    content = bundle.content_embeddings()
    stats_path = bundle.path / ranker_features.STATS_FILE
    if stats_path.is_file():
        stats = ranker_features.ItemStats.of_bundle(bundle.path, content)
    else:  # a bundle without a candidate ranker: the window statistics from its split
        stats = ranker_features.ItemStats.from_sequences(
            [s - FIRST_ITEM_INDEX for s in split.train],
            item_tag_keys(bundle.path, [it.get("tags", []) for it in bundle.items]), content)
    items = bundle.item_vectors()
    users = split.evaluable("test")
    if only is not None:
        users = np.intersect1d(users, only)
    n_evaluated = len(users)
    histories = [split.history(u, "test") for u in users]
    keep = [i for i, h in enumerate(histories) if len(h)]
    users, histories = users[keep], [histories[i] for i in keep]
    ranker = BundleRanker(bundle, settings.ort_intra_threads)
    tower_ranks, two_ranks, hit_source, sizes = [], [], [], []
    for s in range(0, len(users), 2048):
        hs = histories[s:s + 2048]
        uv = user_vectors(hs)
        if models is not None:
            ex = serving_examples(models, split, "test", users[s:s + 2048], settings)
        else:
            ex = candidate_examples(items, uv, stats, [h - FIRST_ITEM_INDEX for h in hs],
                                    split.test[users[s:s + 2048]] - FIRST_ITEM_INDEX,
                                    users[s:s + 2048], serving_caps(settings))
        two = []
        for b in range(0, len(ex), batch):
            part = ex[b:b + batch]
            feats = ([ranker_features.build(stats, e.history, e.rows, e.source, e.rank, e.score)
                      for e in part] if ranker.candidate else None)
            two += ranker.score(part, feats)
        tower = [items[e.rows] @ uv[i] for i, e in enumerate(ex)]
        tower_ranks.append(candidate_ranks(ex, tower))
        two_ranks.append(candidate_ranks(ex, two))
        for e in ex:
            at = np.flatnonzero(e.rows == e.target)
            hit_source.append(int(e.source[at[0]]) if len(at) else -1)
            sizes.append(len(e.rows))
    # every evaluable test user counts; users without a history are misses here
    pad = [np.full(n_evaluated - len(users), -1, np.int64)]
    results = {"retrieval_only": summarise(np.concatenate(tower_ranks + pad)),
               "two_stage": summarise(np.concatenate(two_ranks + pad))}
    hits = np.array(hit_source)
    recall = {"union": round(float((hits >= 0).mean()), 5) if len(hits) else 0.0,
              "mean_candidates": round(float(np.mean(sizes)), 1) if sizes else 0.0,
              "by_source": {name: round(float((hits == i).mean()), 5) if len(hits) else 0.0
                            for i, name in enumerate(ranker_features.SOURCES)},
              "ranker": "candidate" if ranker.candidate else "tower (no candidate ranker)"}
    return results, recall
