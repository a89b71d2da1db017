"""The bundle's ONNX graphs agree with the torch model they came from, on real inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from offline.export import PARITY_TOLERANCE, ParityError, check_parity
from offline.model import RankerConfig, SequentialRanker
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
    worst = check_parity(model, bundle.path, batches)
    assert set(worst) == {"query_encoder.onnx", "item_encoder.onnx", "ranker.onnx"}
    assert max(worst.values()) <= PARITY_TOLERANCE


def test_parity_check_fails_when_models_disagree(small_bundle: Path, data_dir: Path) -> None:
    bundle = Bundle(small_bundle)
    model, batches = _model_and_batches(bundle, data_dir)
    with torch.no_grad():
        model.final_norm.bias.add_(0.01)  # torch now differs from the exported graphs
    with pytest.raises(ParityError, match="differs from torch"):
        check_parity(model, bundle.path, batches)
