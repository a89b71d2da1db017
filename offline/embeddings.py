"""Pretrained content embeddings: a sentence-transformers text encoder over title + tags, or
the user's own video embeddings when the dataset supplies them. Cached by content hash so a
rebuild of the same catalog with the same encoder does not encode again."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from shared.data import Dataset
from shared.settings import resolve_encoder
from shared.text import item_text

log = logging.getLogger(__name__)
BATCH_SIZE = 128


def content_embeddings(dataset: Dataset, encoder: str, cache_dir: Path) -> tuple[np.ndarray, dict]:
    """Return (L2-normalised float32 [N, E], facts for the manifest)."""
    if dataset.embeddings is not None:
        return normalise(dataset.embeddings), {"source": "user-supplied",
                                               "dim": int(dataset.embeddings.shape[1])}
    texts = [item_text(it.title, it.tags) for it in dataset.items]
    key = hashlib.sha256(("\n".join(texts) + "\0" + encoder).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"content-{key}.npy"
    facts = {"source": "text-encoder", "encoder": encoder, "cache_key": key}
    if cache.is_file():
        emb = np.load(cache)
        return emb, {**facts, "dim": int(emb.shape[1]), "cached": True}
    emb = encode_texts(texts, encoder)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, emb)
    return emb, {**facts, "dim": int(emb.shape[1]), "cached": False}


def encode_texts(texts: list[str], encoder: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_encoder(encoder), device="cpu")
    # Sorting by length keeps padding small inside each batch; the order is restored below.
    order = np.argsort([len(t) for t in texts])
    emb = model.encode([texts[i] for i in order], batch_size=BATCH_SIZE, show_progress_bar=True,
                       convert_to_numpy=True, normalize_embeddings=True)
    out = np.empty_like(emb)
    out[order] = emb
    return out.astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
