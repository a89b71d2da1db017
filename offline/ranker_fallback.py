"""A copy of a bundle whose ranker.onnx is the tower's own score (the serving fallback, as a
build with VIDREC_CANDIDATE_RANKER=false writes it), made from the bundle's ranker.pt. Used to
check the fallback and to time the candidate ranker against the tower in one run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from offline.export import OPSET
from offline.model import RankerConfig, Scorer, SequentialRanker
from shared.onnx_graphs import RANKER
from shared.ranker_features import STATS_FILE

REPLACED = ("ranker.onnx", "model.json", STATS_FILE)


def write_tower_only_bundle(bundle_dir: Path, dest: Path) -> Path:
    """dest: a new folder; the other files are symlinks to the bundle's."""
    bundle_dir = Path(bundle_dir)
    dest.mkdir(parents=True)
    for f in bundle_dir.iterdir():
        if f.name not in REPLACED:
            (dest / f.name).symlink_to(f.resolve())
    ckpt = torch.load(bundle_dir / "ranker.pt", weights_only=False)
    model = SequentialRanker(RankerConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    inputs, outputs, axes = RANKER.input_names, RANKER.output_names, RANKER.dynamic_axes()
    content = torch.zeros(1, 3, model.cfg.content_dim)
    example = (torch.tensor([[2, 3, 4]]), content, torch.tensor([[5, 6, 7]]), content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Scorer(model), example, str(dest / "ranker.onnx"),
                          input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    info = json.loads((bundle_dir / "model.json").read_text())
    info["graphs"]["ranker.onnx"] = {"inputs": inputs, "outputs": outputs}
    (dest / "model.json").write_text(json.dumps(info, indent=2))
    return dest
