"""The bundle's ONNX text encoder (shared.text_encoder, no torch) against sentence-transformers
on the same real item texts; and the build's record of its own parity check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from shared.bundle import Bundle
from shared.settings import PACKAGED_ENCODER, resolve_encoder
from shared.text import item_text
from shared.text_encoder import OnnxTextEncoder, TextEncoderMissing


def test_onnx_text_encoder_equals_sentence_transformers(small_bundle: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    items = Bundle(small_bundle).items
    texts = [item_text(it["title"], it["tags"]) for it in items[::max(1, len(items) // 40)]]
    texts += ["", "ü ñ 漢字 — emoji-free unicode", "word " * 600]  # empty, unicode, truncated
    model = SentenceTransformer(resolve_encoder(PACKAGED_ENCODER), device="cpu")
    expected = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    encoder = OnnxTextEncoder(small_bundle)
    got = encoder.encode(texts)
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(texts), encoder.dim)
    assert float(np.abs(got - expected).max()) <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # One text at a time (no padding) gives the same rows as the padded batch.
    np.testing.assert_allclose(encoder.encode(texts[:3]), got[:3], atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_bundle_records_the_export_parity(small_bundle: Path) -> None:
    facts = json.loads((small_bundle / "manifest.json").read_text())["text_encoder"]
    assert facts["exported"] is True
    assert facts["parity_max_abs_diff"] <= 1e-4 and facts["parity_texts"] >= 32
    assert facts["dim"] == 384 and facts["max_seq_length"] == 256


def test_missing_encoder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TextEncoderMissing, match="text_encoder.onnx"):
        OnnxTextEncoder(tmp_path)
