"""ONNX export of the ranker and the two encoders the online path needs, with a parity check
against torch on real batches (max abs difference <= PARITY_TOLERANCE or the build fails)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from offline.model import ItemEncoder, QueryEncoder, Scorer, SequentialRanker
from shared.onnx_graphs import ITEM_ENCODER, MODEL_GRAPHS, QUERY_ENCODER, RANKER
from shared.onnx_session import make_session
from shared.settings import Settings

PARITY_TOLERANCE = 1e-4
OPSET = 17


class ParityError(RuntimeError):
    """The exported ONNX model disagrees with torch."""


# Each graph's torch wrapper; names, dtypes and axes come from its spec (shared/onnx_graphs.py).
WRAPPERS: dict[str, type[torch.nn.Module]] = {QUERY_ENCODER.file: QueryEncoder,
                                              ITEM_ENCODER.file: ItemEncoder,
                                              RANKER.file: Scorer}


def export_onnx(model: SequentialRanker, out_dir: Path,
                examples: dict[str, dict[str, torch.Tensor]]) -> None:
    """examples: graph file name -> example input tensors by input name."""
    model.eval()
    for graph in MODEL_GRAPHS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = tuple(examples[graph.file][n] for n in graph.input_names)
            torch.onnx.export(WRAPPERS[graph.file](model), example,
                              str(out_dir / graph.file), input_names=graph.input_names,
                              output_names=graph.output_names,
                              dynamic_axes=graph.dynamic_axes(), opset_version=OPSET,
                              dynamo=False)


def check_parity(model: SequentialRanker, out_dir: Path,
                 batches: dict[str, list[dict[str, torch.Tensor]]]) -> dict[str, float]:
    """Run every graph in onnxruntime and torch on the given real batches; raise if they differ."""
    worst = {}
    for graph in MODEL_GRAPHS:
        name = graph.file
        if name not in batches:  # a bundle with a candidate ranker: offline/ranker_stage.py
            continue
        sess = make_session(out_dir / name, Settings(use_gpu=False))
        graph.check(sess)
        module = WRAPPERS[name](model).eval()
        diff = 0.0
        for batch in batches[name]:
            with torch.no_grad():
                expected = module(*(batch[n] for n in graph.input_names)).numpy()
            (got,) = graph.run(sess, **{k: v.numpy() for k, v in batch.items()}).values()
            diff = max(diff, float(np.max(np.abs(expected - got))))
        worst[name] = diff
        if not diff <= PARITY_TOLERANCE:
            raise ParityError(f"{name}: ONNX differs from torch by {diff:.3g} "
                              f"(allowed {PARITY_TOLERANCE})")
    return worst
