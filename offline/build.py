"""`vidrec build`: dataset -> content embeddings -> split -> baselines -> ranker -> ONNX ->
FAISS -> evaluation -> artifacts/<version>/ (written to a temporary folder, renamed when
complete, then `artifacts/latest` is repointed)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from offline import baselines
from offline.embeddings import content_embeddings
from offline.evaluate import sample_users as sample_test_users
from offline.evaluate_bundle import compute_metrics
from offline.export import check_parity, export_onnx
from offline.model import RankerConfig, SequentialRanker
from offline.ranker_data import holdout_last_train
from offline.ranker_eval import item_tag_keys, serving_caps
from offline.ranker_model import CandidateRanker
from offline.ranker_stage import (
    RANKER_INPUTS,
    RANKER_OUTPUTS,
    check_ranker_parity,
    example_inputs,
    export_ranker,
    stats_for,
    train_stage,
)
from offline.report import write_reports
from offline.split import Split, leave_one_out
from offline.train import (
    TrainConfig,
    catalogue_vectors,
    content_table,
    left_pad,
    train_ranker,
)
from offline.warm_start import VALIDATION_TOWER_FILE, validation_tower_start, warm_state
from shared import ann, ranker_features
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.data import Dataset, load_dataset
from shared.data.download import sha256
from shared.onnx_graphs import ITEM_ENCODER, MODEL_GRAPHS, QUERY_ENCODER, RANKER
from shared.settings import Settings
from shared.transitions import TRANSITIONS_FILE, Transitions

LIBRARIES = ["torch", "onnx", "onnxruntime", "faiss-cpu", "numpy", "sentence-transformers",
             "scipy"]
RECALL_QUERIES = 1000


class Steps:
    """Seconds per build step, for the manifest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        print(f"[build] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        print(f"[build] {name} done in {self.seconds[name]:.1f} s", flush=True)


def run_build(settings: Settings, dataset: str | Dataset, sample_users: int | None = None,
              epochs: int | None = None, train_minutes: float | None = None,
              version: str | None = None, train_users: int | None = None,
              eval_users: int | None = None, tag_clusters: bool = True,
              warm_start: Bundle | None = None, extra_manifest: dict | None = None,
              point_latest_link: bool = True) -> Path:
    """`dataset`: a name/folder, or a Dataset already assembled (`vidrec retrain`);
    `warm_start`: a bundle whose weights the training starts from (offline/warm_start.py).
    train_users: train on a random sample of this many users (the catalogue, users.json
    and evaluation keep every user); eval_users: evaluate on a sample of the test users;
    tag_clusters=False skips the tag clusters. All three are for catalogues too large to
    train, cluster or evaluate in full on the build machine (bench/scale.py)."""
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    steps = Steps()
    artifacts = Path(settings.artifacts_dir)
    with steps.step("load_dataset"):
        ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset,
                                                                       settings.data_dir)
        dataset = dataset.name if isinstance(dataset, Dataset) else dataset
        if sample_users:
            ds = ds.sample_users(sample_users, settings.seed)
    version = version or f"{ds.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    work = artifacts / f".{version}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    with steps.step("content_embeddings"):
        content, content_facts = content_embeddings(ds, settings.encoder, artifacts / ".cache")
    with steps.step("tag_clusters"):
        tag_facts = (_tag_clusters(settings, ds, work, artifacts / ".cache") if tag_clusters
                     else {"built": False, "why": "skipped (--no-tag-clusters)"})
    with steps.step("split"):
        split = leave_one_out(ds)
        split_summary = split.summary()
    train_split = split if not train_users else split.sample_users(train_users, settings.seed)
    # The validation-run tower never sees each user's last train item: it is what the
    # candidate ranker learns to find among that tower's candidates (offline/ranker_data.py)
    held_split, held = holdout_last_train(train_split)
    rank_stage = settings.candidate_ranker and bool(held.any())
    model_cfg = RankerConfig(num_items=split.num_items, content_dim=content.shape[1])
    train_cfg = TrainConfig(seed=settings.seed)
    if epochs is not None:
        train_cfg.epochs = epochs
    if train_minutes is not None:
        train_cfg.max_minutes = train_minutes
    init_state, valid_state, warm_facts = None, None, None
    if warm_start is not None:
        fresh = SequentialRanker(model_cfg).state_dict()
        init_state, warm_facts = warm_state(warm_start, split.item_ids, fresh)
        if rank_stage:
            # the tower the candidate ranker learns from starts from its own counterpart, never
            # from the serving tower (it trained on the ranker's targets): validation_tower_start
            valid_state, valid_facts = validation_tower_start(warm_start, split.item_ids, fresh)
            if valid_state is None:  # the two towers must share a space: both start cold
                init_state = None
            warm_facts = {"refit": warm_facts, "validation_run": valid_facts}
        print(f"[build] warm start from {warm_start.version}: {warm_facts}", flush=True)
    table = content_table(content)
    with steps.step("train_tower"):
        model, train_facts = train_ranker(held_split if rank_stage else train_split, content,
                                          model_cfg, train_cfg,
                                          valid_state if rank_stage else init_state)
    validation_tower = model if rank_stage else None
    cand_ranker, ranker_facts = None, {"trained": False, "why": "disabled (candidate_ranker)"}
    if rank_stage:
        with steps.step("train_candidate_ranker"):
            cand_ranker, ranker_facts = _candidate_ranker(settings, ds, work, model, table,
                                                          content, train_split, held_split,
                                                          held)
    if train_cfg.refit and train_split.evaluable("valid").size:
        # The validation run chose the epoch count; the final model also learns from each
        # user's validation item (the most recent data), and the test item stays unseen.
        with steps.step("refit_tower"):
            best_epoch = max(train_facts["history"], key=lambda h: h["NDCG@10"])["epoch"]
            refit_epochs, refit_start = best_epoch, init_state
            refit_from = "the warm start" if init_state is not None else "cold"
            if cand_ranker is not None and init_state is None:
                # The candidate ranker's maps learnt on the validation-run tower's space: a
                # refit that continues that tower keeps the space, where a cold refit from the
                # same seed drifts from it. MicroLens-50k, the same validation run: two-stage
                # NDCG@10 0.0577 (cold refit, 7 epochs) -> 0.0606 (continued, 3 epochs), the
                # tower alone 0.0457 -> 0.0440. (A warm retrain already continues A's towers.)
                refit_start = {k: v.detach().clone() for k, v in model.state_dict().items()}
                refit_epochs = max(2, best_epoch // 2)
                refit_from = "the validation-run tower"
            # --train-minutes bounds the refit too; without it the refit runs its epochs
            refit_cfg = replace(train_cfg, epochs=refit_epochs, max_minutes=(
                train_minutes if train_minutes is not None else float("inf")))
            model, refit_facts = train_ranker(train_split.with_validation_in_train(), content,
                                              model_cfg, refit_cfg, refit_start)
            train_facts = {"validation_run": train_facts, "refit": refit_facts,
                           "refit_epochs": refit_epochs,
                           "refit_start": refit_from}
            split = split.with_validation_in_train()  # baselines then fit on the same data
            if cand_ranker is not None:
                # The ranker learned from a tower that knew everything before each training
                # target; at serving, the tower that knows everything before *now* is the
                # refit. Kept on the validation tower, the ranker lost to retrieval on test
                # (MicroLens-50k, 3,000 test users: NDCG@10 0.0384 against 0.0529 for the
                # refit tower's order; 0.0531 with the refit tower inside the ranker).
                cand_ranker.set_tower(model)
    with steps.step("export_onnx"):
        export_onnx(model, work, _export_examples(split, table))
        parity = check_parity(model, work, _parity_batches(split, table))
        if cand_ranker is not None:  # ranker.onnx becomes the candidate ranker
            parity["ranker.onnx"] = _export_candidate_ranker(cand_ranker, work, split, table)
            assert validation_tower is not None  # a candidate ranker implies the rank stage
            torch.save({"config": validation_tower.cfg.to_dict(),
                        "state_dict": validation_tower.state_dict()},
                       work / VALIDATION_TOWER_FILE)  # a warm retrain's start (warm_start.py)
            torch.save({"config": cand_ranker.cfg.to_dict(),
                        "tower": cand_ranker.tower.cfg.to_dict(),
                        "state_dict": cand_ranker.state_dict()}, work / "candidate_ranker.pt")
            tags = item_tag_keys(work, [list(it.tags) for it in ds.items])
            stats_for(split.train, tags, content).save(work / ranker_features.STATS_FILE)
    with steps.step("faiss_index"):
        item_vectors = catalogue_vectors(model, table)
        index_facts = _write_indexes(work, item_vectors, content, split, model, table)
    with steps.step("write_bundle"):
        _write_bundle_files(work, ds, split, content, item_vectors, model)
        (work / "model.json").write_text(json.dumps({
            **model_cfg.to_dict(), "vector_dim": int(item_vectors.shape[1]),
            "pad_index": 0, "unknown_index": 1,
            "first_item_index": FIRST_ITEM_INDEX, "graphs": _graph_io(cand_ranker is not None),
            "index": index_facts,
            "candidate_ranker": ranker_facts.get("config"),
            "onnx_parity_max_abs_diff": parity,
        }, indent=2))
    with steps.step("text_encoder_export"):
        text_encoder = _export_text_encoder(settings, work, content_facts)
    with steps.step("evaluate"):
        doc = compute_metrics(Bundle(work), split, ds.name, settings,
                              users=sample_test_users(split, "test", eval_users,
                                                      settings.seed))
        write_reports(doc, work)
        print((work / "metrics.md").read_text(), flush=True)
    manifest = {
        "version": version, "dataset": ds.name, "dataset_arg": dataset,
        "sample_users": sample_users, "seed": settings.seed,
        "train_users": train_users, "eval_users": eval_users,
        "validation_in_train": "refit" in train_facts,
        "built_at": datetime.now(UTC).isoformat(),
        "split": split_summary,
        "sizes": {"users": len(ds.sequences), "items": len(ds.items),
                  "interactions": ds.num_interactions},
        "dims": {"content": int(content.shape[1]), "model": model_cfg.dim},
        "content_embeddings": content_facts, "text_encoder": text_encoder,
        "tag_clusters": tag_facts,
        "model": model_cfg.to_dict(), "training": train_facts, "index": index_facts,
        "candidate_ranker": ranker_facts,
        "onnx_parity_max_abs_diff": parity,
        "candidates": settings.candidate_caps,
        "libraries": _library_versions(), "python": platform.python_version(),
        "step_seconds": steps.seconds, "build_seconds": round(sum(steps.seconds.values()), 2),
        **({"warm_start": warm_facts} if warm_facts else {}), **(extra_manifest or {}),
    }
    manifest["files"] = {p.name: sha256(p) for p in sorted(work.iterdir()) if p.is_file()}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    final = artifacts / version
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    if point_latest_link:
        point_latest(artifacts, version)
    print(f"[build] bundle {final} ({manifest['build_seconds']:.0f} s)"
          + (f"; artifacts/latest -> {version}" if point_latest_link else ""), flush=True)
    return final


def point_latest(artifacts: Path, version: str) -> None:
    tmp = artifacts / ".latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(version)
    os.replace(tmp, artifacts / "latest")


def _export_examples(split: Split, table: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    hist = torch.from_numpy(left_pad([split.history(u, "test") for u in range(4)], 8))
    cand = torch.arange(FIRST_ITEM_INDEX, FIRST_ITEM_INDEX + 12).repeat(4, 1)
    items = torch.arange(FIRST_ITEM_INDEX, FIRST_ITEM_INDEX + 5)
    return {QUERY_ENCODER.file: {"hist_ids": hist, "hist_content": table[hist]},
            ITEM_ENCODER.file: {"item_ids": items, "item_content": table[items]},
            RANKER.file: {"hist_ids": hist, "hist_content": table[hist], "cand_ids": cand,
                          "cand_content": table[cand]}}


def _parity_batches(split: Split, table: torch.Tensor,
                    ) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Real histories of several lengths, real candidates (incl. the unknown index 1)."""
    rng = np.random.default_rng(0)
    out: dict[str, list[dict[str, torch.Tensor]]] = {g.file: [] for g in MODEL_GRAPHS}
    for batch, length, cands in ((1, 50, 500), (16, 20, 100), (64, 5, 37)):
        users = rng.choice(len(split.users), size=min(batch, len(split.users)), replace=False)
        hist = torch.from_numpy(left_pad([split.history(u, "test") for u in users], length))
        cand = torch.from_numpy(rng.integers(FIRST_ITEM_INDEX, table.shape[0],
                                             size=(len(users), cands)))
        cand[:, 0] = 1
        out[QUERY_ENCODER.file].append({"hist_ids": hist, "hist_content": table[hist]})
        out[RANKER.file].append({"hist_ids": hist, "hist_content": table[hist],
                                 "cand_ids": cand, "cand_content": table[cand]})
        out[ITEM_ENCODER.file].append({"item_ids": cand[0], "item_content": table[cand[0]]})
    return out


def _write_indexes(work: Path, item_vectors: np.ndarray, content: np.ndarray, split: Split,
                   model: SequentialRanker, table: torch.Tensor) -> dict:
    from offline.train import user_vectors

    facts = {}
    users = np.random.default_rng(1).choice(len(split.users),
                                            min(RECALL_QUERIES, len(split.users)), replace=False)
    queries = {"ann": user_vectors(model, table, [split.history(u, "test") for u in users]),
               "content": content[np.concatenate([split.history(u, "test")[-1:]
                                                  for u in users]) - FIRST_ITEM_INDEX]}
    for name, vectors in (("ann", item_vectors), ("content", content)):
        index = ann.build_index(vectors)
        k = min(100, len(vectors))
        facts[name] = {"kind": ann.index_kind(index), "rows": int(len(vectors)),
                       "dim": int(vectors.shape[1]), "metric": "inner_product",
                       f"recall@{k}_vs_exact": ann.recall_against_exact(index, vectors,
                                                                        queries[name], k),
                       "gpu_available_at_build": ann.gpu_count() > 0}
        ann.save(index, work / f"index_{name}.faiss")
    return facts


def _write_bundle_files(work: Path, ds: Dataset, split: Split, content: np.ndarray,
                        item_vectors: np.ndarray, model: SequentialRanker) -> None:
    popularity = baselines.train_popularity(split)
    items = [{"item_id": it.item_id, "title": it.title, "tags": list(it.tags),
              "popularity": int(popularity[r])} for r, it in enumerate(ds.items)]
    (work / "items.json").write_text(json.dumps(items, ensure_ascii=False))
    (work / "users.json").write_text(json.dumps(ds.sequences))
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict()},
               work / "ranker.pt")
    np.save(work / "content_embeddings.npy", content.astype(np.float32))
    np.save(work / "item_vectors.npy", item_vectors.astype(np.float32))
    # what followed what in the sequences the bundle serves (retrieval's cooc source, the
    # candidate ranker's cooc features)
    Transitions.from_sequences([s - FIRST_ITEM_INDEX for s in split.train],
                               split.num_items).save(work / TRANSITIONS_FILE)


def _export_text_encoder(settings: Settings, work: Path, content_facts: dict) -> dict:
    if content_facts.get("source") != "text-encoder":
        return {"exported": False, "why": "embeddings supplied by the user"}
    try:
        from offline.text_encoder_export import export_text_encoder
    except ImportError as exc:
        return {"exported": False, "why": f"exporter unavailable: {exc}"}
    return {"exported": True, **export_text_encoder(settings.encoder, work)}


def _tag_clusters(settings: Settings, ds: Dataset, work: Path, cache_dir: Path) -> dict:
    """tags.json + tag_leaders.npy + tags.md (offline/tag_clusters.py); optional: a bundle
    without them serves every tag as its own cluster."""
    if not any(it.tags for it in ds.items):
        return {"built": False, "why": "the dataset has no tags"}
    try:
        from offline.tag_clusters import build_tag_clusters
    except ImportError as exc:
        return {"built": False, "why": f"clustering unavailable: {exc}"}
    facts = build_tag_clusters(work, (it.tags for it in ds.items), settings.encoder, cache_dir)
    print((work / "tags.md").read_text().split("## A sample")[0][:3000], flush=True)
    return {"built": True, **facts}


def _graph_io(candidate_ranker: bool = False) -> dict:
    from shared.onnx_graphs import MODEL_GRAPHS

    graphs = {g.file: {"inputs": g.input_names, "outputs": g.output_names} for g in MODEL_GRAPHS}
    if candidate_ranker:
        graphs["ranker.onnx"] = {"inputs": RANKER_INPUTS, "outputs": RANKER_OUTPUTS}
    return graphs


def _candidate_ranker(settings: Settings, ds: Dataset, work: Path, tower: SequentialRanker,
                      table: torch.Tensor, content: np.ndarray, split: Split,
                      held_split: Split, held: np.ndarray) -> tuple[CandidateRanker | None, dict]:
    """Train the candidate ranker on the validation-run tower's candidates; None (the bundle
    then serves the tower's score) when no training user's candidates hold its target."""
    item_tags = item_tag_keys(work, [list(it.tags) for it in ds.items])
    try:
        model, facts = train_stage(tower, table, content, split, held_split, held, item_tags,
                                   serving_caps(settings))
    except ValueError as exc:
        print(f"[build] no candidate ranker: {exc}", flush=True)
        return None, {"trained": False, "why": str(exc)}
    return model, {"trained": True, **facts}


def _export_candidate_ranker(model: CandidateRanker, work: Path, split: Split,
                             table: torch.Tensor) -> float:
    rng = np.random.default_rng(0)
    users = rng.choice(len(split.users), size=min(64, len(split.users)), replace=False)
    hists = [split.history(u, "test")[-length:] for u, length in
             zip(users, [50, 20, 5, 1] * 16, strict=False)]
    hists = [h if len(h) else np.array([FIRST_ITEM_INDEX]) for h in hists]
    export_ranker(model, work / "ranker.onnx", example_inputs(table, hists[:4], 12, rng))
    batches = [example_inputs(table, hists[:1], 500, rng), example_inputs(table, hists[:16], 100,
                                                                          rng),
               example_inputs(table, hists, 37, rng)]
    return check_ranker_parity(model, work / "ranker.onnx", batches)


def _library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out
