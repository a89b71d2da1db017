"""ONNX export of the ranker and the two encoders the online path needs, with a parity check
against torch on real batches (max abs difference <= PARITY_TOLERANCE or the build fails)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from offline.model import ItemEncoder, QueryEncoder, Scorer, SequentialRanker

PARITY_TOLERANCE = 1e-4
OPSET = 17


class ParityError(RuntimeError):
    """The exported ONNX model disagrees with torch."""


GRAPHS = {
    "query_encoder.onnx": (QueryEncoder, ["hist_ids", "hist_content"], ["user_vec"],
                           {"hist_ids": {0: "batch", 1: "history"},
                            "hist_content": {0: "batch", 1: "history"},
                            "user_vec": {0: "batch"}}),
    "item_encoder.onnx": (ItemEncoder, ["item_ids", "item_content"], ["item_vec"],
                          {"item_ids": {0: "items"}, "item_content": {0: "items"},
                           "item_vec": {0: "items"}}),
    "ranker.onnx": (Scorer, ["hist_ids", "hist_content", "cand_ids", "cand_content"], ["scores"],
                    {"hist_ids": {0: "batch", 1: "history"},
                     "hist_content": {0: "batch", 1: "history"},
                     "cand_ids": {0: "batch", 1: "candidates"},
                     "cand_content": {0: "batch", 1: "candidates"},
                     "scores": {0: "batch", 1: "candidates"}}),
}


def export_onnx(model: SequentialRanker, out_dir: Path, examples: dict[str, tuple]) -> None:
    """examples: graph file name -> tuple of example input tensors."""
    model.eval()
    for name, (wrapper, inputs, outputs, axes) in GRAPHS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper(model), examples[name], str(out_dir / name),
                              input_names=inputs, output_names=outputs, dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)


def check_parity(model: SequentialRanker, out_dir: Path, batches: dict[str, list[tuple]]
                 ) -> dict[str, float]:
    """Run every graph given batches in onnxruntime and torch; raise if they differ."""
    worst = {}
    for name, (wrapper, inputs, _, _) in GRAPHS.items():
        if name not in batches:
            continue
        sess = ort.InferenceSession(str(out_dir / name), providers=["CPUExecutionProvider"])
        module = wrapper(model).eval()
        diff = 0.0
        for batch in batches[name]:
            with torch.no_grad():
                expected = module(*batch).numpy()
            got = sess.run(None, {k: v.numpy() for k, v in zip(inputs, batch, strict=True)})[0]
            diff = max(diff, float(np.max(np.abs(expected - got))))
        worst[name] = diff
        if not diff <= PARITY_TOLERANCE:
            raise ParityError(f"{name}: ONNX differs from torch by {diff:.3g} "
                              f"(allowed {PARITY_TOLERANCE})")
    return worst
