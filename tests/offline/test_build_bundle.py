"""A small end-to-end build (ml-latest-small, user sample): the bundle is complete, hashed,
reproducible in its metrics, and `vidrec evaluate` recomputes metrics.json."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, build_env

MODELS = ["popularity", "content_ann", "item_knn", "ranker_only", "retrieval_only", "two_stage"]


def test_bundle_layout_and_manifest(small_bundle: Path) -> None:
    manifest = json.loads((small_bundle / "manifest.json").read_text())
    for name in ["items.json", "users.json", "content_embeddings.npy", "item_vectors.npy",
                 "index_ann.faiss", "index_content.faiss", "query_encoder.onnx",
                 "item_encoder.onnx", "ranker.onnx", "model.json", "metrics.json",
                 "metrics.md", "metrics.png", "ranker.pt", "tags.json", "tag_leaders.npy",
                 "tags.md", "ranker_stats.npz", "candidate_ranker.pt"]:
        assert name in manifest["files"], name
        digest = hashlib.sha256((small_bundle / name).read_bytes()).hexdigest()
        assert manifest["files"][name] == digest, name
    assert manifest["dataset"] == "ml-latest-small-sample120"
    assert manifest["split"]["protocol"].startswith("leave-one-out")
    assert set(manifest["step_seconds"]) >= {"content_embeddings", "train_tower",
                                             "train_candidate_ranker", "export_onnx",
                                             "faiss_index", "evaluate"}
    assert manifest["candidate_ranker"]["trained"] is True
    assert max(manifest["onnx_parity_max_abs_diff"].values()) <= 1e-4
    assert manifest["index"]["ann"]["recall@100_vs_exact"] == 1.0  # exact index when small
    assert (small_bundle.parent / "latest").resolve() == small_bundle.resolve()
    clusters = manifest["tag_clusters"]  # docs/tags.md
    assert clusters["threshold"] == 0.75 and 0 < clusters["clusters"] <= clusters["tags"]


def test_metrics_json_has_the_agreed_form(small_bundle: Path) -> None:
    doc = json.loads((small_bundle / "metrics.json").read_text())
    assert doc["dataset"] == "ml-latest-small-sample120"
    assert doc["protocol"] == "leave-one-out, full ranking"
    assert doc["users_evaluated"] == 120
    assert list(doc["models"]) == MODELS
    for row in doc["models"].values():
        assert set(row) == {"HR@10", "NDCG@10", "HR@50"}
        assert 0.0 <= row["NDCG@10"] <= row["HR@10"] <= row["HR@50"] <= 1.0
    recall = [k for k in doc if k.startswith("retrieval_recall@")]
    assert len(recall) == 1 and 0.0 < doc[recall[0]] <= 1.0
    # two-stage can only lose items the retrieval missed: HR@50 within the candidate recall
    assert doc["models"]["two_stage"]["HR@50"] <= doc[recall[0]] + 1e-9
    assert "| two_stage |" in (small_bundle / "metrics.md").read_text()
    tags = doc["tag_clusters"]  # tag clusters against exact tags (offline/tag_eval.py)
    assert set(tags["cold_start_NDCG@10"]) == {"popular", "exact_tags", "clusters"}
    assert set(tags["tag_source_recall@50"]) == {"exact_tags", "clusters"}
    assert (small_bundle / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_recomputes_the_same_metrics(small_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in small_bundle.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "metrics.json").unlink()
    subprocess.run([sys.executable, "-m", "vidrec_cli", "evaluate", str(copy)], cwd=REPO,
                   env=build_env(tmp_path), check=True, capture_output=True)
    again = json.loads((copy / "metrics.json").read_text())
    assert again == json.loads((small_bundle / "metrics.json").read_text())
