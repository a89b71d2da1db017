"""The bundle's ONNX graphs agree with the torch model they came from, on real inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from offline.export import PARITY_TOLERANCE, ParityError, check_parity
from offline.model import RankerConfig, SequentialRanker
from offline.ranker_model import CandidateRanker, CandidateRankerConfig
from offline.ranker_stage import check_ranker_parity, example_inputs
from offline.split import leave_one_out
from offline.train import content_table, left_pad
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.data import load_dataset


def _model_and_batches(bundle: Bundle, data_dir: Path):
    saved = torch.load(bundle.file("ranker.pt"), weights_only=True)
    model = SequentialRanker(RankerConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    manifest = bundle.manifest
    ds = load_dataset(manifest["dataset_arg"], data_dir).sample_users(
        manifest["sample_users"], manifest["seed"])
    split = leave_one_out(ds)
    table = content_table(bundle.content_embeddings())
    rng = np.random.default_rng(7)
    batches = {"query_encoder.onnx": [], "item_encoder.onnx": [], "ranker.onnx": []}
    for size, length, cands in ((1, 50, 300), (8, 30, 64), (32, 3, 10)):
        users = rng.choice(len(split.users), size=size, replace=False)
        hist = torch.from_numpy(left_pad([split.history(u, "test") for u in users], length))
        cand = torch.from_numpy(rng.integers(FIRST_ITEM_INDEX, table.shape[0], (size, cands)))
        batches["query_encoder.onnx"].append({"hist_ids": hist, "hist_content": table[hist]})
        batches["ranker.onnx"].append({"hist_ids": hist, "hist_content": table[hist],
                                       "cand_ids": cand, "cand_content": table[cand]})
        batches["item_encoder.onnx"].append({"item_ids": cand[0],
                                             "item_content": table[cand[0]]})
    return model, batches


def test_onnx_matches_torch_on_real_batches(small_bundle: Path, data_dir: Path) -> None:
    bundle = Bundle(small_bundle)
    model, batches = _model_and_batches(bundle, data_dir)
    batches.pop("ranker.onnx")  # the bundle's ranker.onnx is the candidate ranker: below
    worst = check_parity(model, bundle.path, batches)
    assert set(worst) == {"query_encoder.onnx", "item_encoder.onnx"}
    assert max(worst.values()) <= PARITY_TOLERANCE


def test_candidate_ranker_onnx_matches_torch(small_bundle: Path, data_dir: Path) -> None:
    bundle = Bundle(small_bundle)
    saved = torch.load(bundle.file("candidate_ranker.pt"), weights_only=True)
    tower = SequentialRanker(RankerConfig(**saved["tower"]))
    model = CandidateRanker(CandidateRankerConfig(**saved["config"]), tower)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    table = content_table(bundle.content_embeddings())
    rng = np.random.default_rng(3)
    hists = [np.array(h) for h in ([2, 3, 4, 5], [7], list(range(2, 52)))]
    batches = [example_inputs(table, hists, 200, rng), example_inputs(table, hists[1:2], 5, rng)]
    assert check_ranker_parity(model, bundle.file("ranker.onnx"), batches) <= PARITY_TOLERANCE
    with torch.no_grad():
        model.tower_weight.add_(0.5)
    with pytest.raises(ParityError, match="differs from torch"):
        check_ranker_parity(model, bundle.file("ranker.onnx"), batches)


def test_parity_check_fails_when_models_disagree(small_bundle: Path, data_dir: Path) -> None:
    bundle = Bundle(small_bundle)
    model, batches = _model_and_batches(bundle, data_dir)
    with torch.no_grad():
        model.final_norm.bias.add_(0.01)  # torch now differs from the exported graphs
    batches.pop("ranker.onnx")
    with pytest.raises(ParityError, match="differs from torch"):
        check_parity(model, bundle.path, batches)
