"""The candidate ranker trains on offline/ranker_data.py's copy of retrieval's assembly (it
proposes for every training user at once, from the validation-run tower and each problem's own
window, which the serving code cannot). The copy must propose what the service proposes: on the
real small bundle, for the same users and caps, the cooc and popular sources give the same
lists in the same order, ann and content the same items up to near-ties of the float16 content
rows and FAISS's float sums. The tag source differs by design (offline: the history's clusters;
serving: the feature store's decayed profile), so it is left out here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offline.ranker_data import candidate_examples
from offline.two_stage import BundleModels, candidates_for
from services.retrieval.sources.ann import user_vectors
from shared import ranker_features
from shared.bundle import Bundle
from shared.contracts import sources_only
from shared.settings import Settings

CAPS = sources_only(ann=60, cooc=40, content=30, popular=10)


def test_the_training_copy_proposes_what_the_service_proposes(small_bundle: Path,
                                                              tmp_path: Path) -> None:
    settings = Settings(artifacts_dir=small_bundle.parent, bundle=small_bundle.name,
                        state_dir=tmp_path, use_gpu=False)
    bundle = Bundle(small_bundle)
    models = BundleModels(bundle, settings)
    stats = ranker_features.ItemStats.of_bundle(bundle.path, bundle.content_embeddings())
    seqs = [s for _, s in sorted(bundle.users().items()) if len(s) >= 5][:20]
    row_of = bundle.row_of
    served: dict[str, list[np.ndarray]] = {}
    for seq in seqs:  # one user per call, as the gateway asks (see test_two_stage_serving.py)
        candidates_for(models, [seq], settings, served, CAPS)
    histories = [np.array([row_of[i] for i in seq], np.int64) for seq in seqs]
    uv = user_vectors(models.state, [h[-bundle.max_history:] for h in histories])
    examples = candidate_examples(bundle.item_vectors(), uv, stats, histories,
                                  np.full(len(seqs), -1), np.arange(len(seqs)), CAPS)
    sources = ranker_features.SOURCES
    for u, ex in enumerate(examples):
        offline = {name: ex.rows[ex.source == s].tolist() for s, name in enumerate(sources)}
        earlier: set[int] = set()  # the union keeps an item under its first source
        for name in sources:
            online = [r for r in served[name][u].tolist() if r not in earlier]
            if name in ("cooc", "popular", "tags"):  # tags: off in CAPS on both sides
                assert online == offline[name], (u, name)
            else:
                assert len(set(online) & set(offline[name])) >= 0.9 * len(online), (u, name)
            earlier.update(offline[name])
        assert offline["cooc"], u
