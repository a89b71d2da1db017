"""Export the sentence-transformers text encoder to ONNX so serving can embed new items without
torch.

The graph holds the whole encoder: transformer -> mean pooling over the attention mask -> L2
normalisation, so `shared.text_encoder.OnnxTextEncoder` only tokenizes and runs it. The fast
tokenizer's JSON is saved beside it with truncation (max_seq_length) and batch-longest padding
set, so the `tokenizers` package reproduces sentence-transformers' inputs exactly.

Parity is checked on real item texts against `SentenceTransformer.encode`; a mismatch raises.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ONNX_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
PARITY_TOLERANCE = 1e-4
PARITY_TEXTS = 32
ONNX_OPSET = 17

# Used only when neither `texts` nor out_dir/items.json gives item texts to compare on.
_FALLBACK_TEXTS = [
    "Toy Story (1995) | adventure, animation, children, comedy, fantasy",
    "beautiful dish with 5 pounds of duck intestines # homemade summer food",
    "Heat (1995) | action, crime, thriller",
    "猫咪第一次见到雪 # cute # pets",
    "Café au lait — a short film about mornings | drama, short",
    "x",
]


class TextEncoderParityError(RuntimeError):
    """The ONNX encoder's embeddings differ from sentence-transformers beyond the tolerance."""


def export_text_encoder(encoder: str, out_dir: Path,
                        texts: Sequence[str] | None = None) -> dict:
    """Write out_dir/text_encoder.onnx and out_dir/tokenizer.json, check parity, return facts.

    `encoder` is the settings value (hub name, local path or the packaged alias). Parity texts:
    `texts` if given, else up to 32 items of out_dir/items.json (spread over the catalogue),
    plus one over-long text so truncation is compared too.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from shared.settings import Settings, resolve_encoder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = SentenceTransformer(resolve_encoder(encoder), device="cpu")
    model.eval()
    max_seq_length = int(model.max_seq_length)
    dim = int(model.get_embedding_dimension())

    tokenizer_path = out_dir / TOKENIZER_FILE
    _save_tokenizer(model, max_seq_length, tokenizer_path)
    onnx_path = out_dir / ONNX_FILE
    _export_graph(torch, model, onnx_path, dim=dim, max_seq_length=max_seq_length)

    probe = _parity_texts(texts, out_dir, max_seq_length)
    expected = model.encode(probe, batch_size=16, convert_to_numpy=True,
                            normalize_embeddings=True).astype(np.float32)

    from shared.text_encoder import OnnxTextEncoder

    got = OnnxTextEncoder(out_dir, Settings(ort_intra_threads=2, use_gpu=False)).encode(probe)
    max_diff = float(np.abs(got - expected).max())
    if got.shape != expected.shape or not max_diff <= PARITY_TOLERANCE:
        raise TextEncoderParityError(
            f"{onnx_path}: ONNX text encoder differs from sentence-transformers by {max_diff:.2e} "
            f"(tolerance {PARITY_TOLERANCE:g}) on {len(probe)} texts")
    return {
        "encoder": encoder,
        "dim": dim,
        "max_seq_length": max_seq_length,
        "parity_texts": len(probe),
        "parity_max_abs_diff": max_diff,
        "onnx_bytes": onnx_path.stat().st_size,
        "tokenizer_bytes": tokenizer_path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _save_tokenizer(model, max_seq_length: int, path: Path) -> None:
    """Save the fast tokenizer with sentence-transformers' truncation and dynamic padding."""
    backend = model.tokenizer.backend_tokenizer
    tok = type(backend).from_str(backend.to_str())  # a copy: leave the live model untouched
    tok.enable_truncation(max_length=max_seq_length)
    pad_id = model.tokenizer.pad_token_id
    tok.enable_padding(pad_id=0 if pad_id is None else int(pad_id),
                       pad_token=model.tokenizer.pad_token or "[PAD]")  # length=None: longest
    tok.save(str(path))


def _export_graph(torch, model, path: Path, dim: int, max_seq_length: int) -> None:
    transformer = model[0].auto_model
    wrapped = _PooledEncoder(torch, transformer).eval()
    from shared.onnx_graphs import TEXT_ENCODER

    ids = torch.tensor([[101, 7592, 2088, 102], [101, 1060, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    example = (ids, mask, torch.zeros_like(ids))
    with torch.no_grad():
        # The legacy TorchScript exporter traces BERT reliably with dynamic axes; dynamo is the
        # default in recent torch, so ask for the legacy one explicitly.
        torch.onnx.export(wrapped, example, str(path), input_names=TEXT_ENCODER.input_names,
                          output_names=TEXT_ENCODER.output_names,
                          dynamic_axes=TEXT_ENCODER.dynamic_axes(),
                          opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False)
    import onnx

    proto = onnx.load(str(path))
    meta = {"dim": str(dim), "max_seq_length": str(max_seq_length), "pooling": "mean",
            "normalized": "l2"}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _PooledEncoder(torch, transformer):  # noqa: N802 - builds a module class around torch
    """Transformer + mean pooling over the attention mask + L2 normalisation, as one module."""

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return PooledEncoder()


def _parity_texts(texts: Sequence[str] | None, out_dir: Path, max_seq_length: int) -> list[str]:
    if texts is None:
        items_path = out_dir / "items.json"
        if items_path.is_file():
            from shared.text import item_text

            items = json.loads(items_path.read_text())
            step = max(1, len(items) // PARITY_TEXTS)
            texts = [item_text(it["title"], it.get("tags", []))
                     for it in items[::step][:PARITY_TEXTS]]
        else:
            texts = _FALLBACK_TEXTS
    long_text = " ".join(list(texts)[:4] or ["video"]) + " " + "word " * (2 * max_seq_length)
    return [*texts, long_text]
