"""Metrics of a bundle computed from its own files (ONNX graphs, FAISS indexes, embeddings),
used by `vidrec build` and by `vidrec evaluate BUNDLE` to recompute metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from offline import baselines
from offline.evaluate import evaluate
from offline.ranker_eval import serving_caps, two_stage_metrics
from offline.report import metrics_document, write_reports
from offline.split import Split, leave_one_out
from offline.tag_eval import metrics_line
from offline.two_stage import BundleModels
from services.retrieval.sources.ann import user_vectors
from shared.bundle import FIRST_ITEM_INDEX, Bundle, resolve_bundle
from shared.data import load_dataset
from shared.settings import Settings
from shared.tags import TagClusters


def compute_metrics(bundle: Bundle, split: Split, dataset_name: str, settings: Settings,
                    users: np.ndarray | None = None) -> dict:
    """users: the test users to evaluate (default: every evaluable one)."""
    content = bundle.content_embeddings()
    models = BundleModels(bundle, settings)
    state = models.state
    item_vectors = bundle.item_vectors()
    results = {
        "popularity": evaluate(split, "test", baselines.popularity_fn(split), users),
        "content_ann": evaluate(split, "test", baselines.content_ann_fn(split, "test", content),
                                users),
        "item_knn": evaluate(split, "test", baselines.item_knn_fn(split, "test"), users),
        "ranker_only": evaluate(split, "test", lambda batch: user_vectors(state, [
            (split.history(u, "test") - FIRST_ITEM_INDEX)[-state.max_history:] for u in batch])
            @ item_vectors.T, users),
    }
    # Both stages over the same candidate sets, side by side (offline/ranker_eval.py)
    staged, recall = two_stage_metrics(bundle, split, settings, lambda hs: user_vectors(state, [
        (h - FIRST_ITEM_INDEX)[-state.max_history:] for h in hs]), models=models, only=users)
    results.update(staged)
    caps = serving_caps(settings)
    # Which candidate source earns its place: the share of users whose test item it proposed.
    (bundle.path / "retrieval.json").write_text(json.dumps({
        "recall_of_test_item": recall, "caps": caps}, indent=2) + "\n")
    n_users = len(split.evaluable("test")) if users is None else len(users)
    doc = metrics_document(dataset_name, n_users, results,
                           recall.get("union", 0.0), sum(caps.values()))
    doc["candidate_recall"] = recall
    clusters = TagClusters.load(bundle.path)
    if clusters.enabled:  # tag clusters against exact tags (offline/tag_eval.py, docs/tags.md)
        doc["tag_clusters"] = metrics_line(bundle.items, bundle.users(), clusters,
                                           settings.candidate_caps["tags"])
    return doc


def bundle_split(bundle: Bundle, settings: Settings) -> tuple[str, Split]:
    """The dataset's name and the split this bundle was built and evaluated on, from its
    manifest (the same user sample, validation folded into training when it was)."""
    manifest = bundle.manifest
    ds = load_dataset(manifest["dataset_arg"], settings.data_dir)
    if manifest.get("sample_users"):
        ds = ds.sample_users(manifest["sample_users"], manifest.get("seed", settings.seed))
    split = leave_one_out(ds)
    if manifest.get("validation_in_train"):
        split = split.with_validation_in_train()
    return ds.name, split


def evaluate_bundle(settings: Settings, bundle_arg: str) -> dict:
    path = Path(bundle_arg)
    bundle = Bundle(resolve_bundle(settings.artifacts_dir, bundle_arg) if not path.is_dir()
                    else path.resolve())
    dataset_name, split = bundle_split(bundle, settings)
    doc = compute_metrics(bundle, split, dataset_name, settings)
    write_reports(doc, bundle.path)
    print((bundle.path / "metrics.md").read_text())
    return doc
