"""The retrieval write path: applying catalogue changes (an upsert, a delete, the overlay's
replay) to a RetrievalState, and checking what an upsert brings. The read path is retrieve.py
(candidates) and similar.py; RetrievalService (service.py) orders the two (one change at a time,
durable before visible) and talks to the feature store.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from services.feature_store.codec import OverlayItem
from services.retrieval.errors import InvalidRequest
from services.retrieval.state import RetrievalState
from shared.text import item_text

log = logging.getLogger(__name__)
MAX_ITEM_ID = 200


def validated_embedding(values: list[float], dim: int) -> np.ndarray:
    if len(values) != dim:
        raise InvalidRequest("embedding", f"expected {dim} numbers (the bundle's content "
                             f"embedding size), got {len(values)}")
    vec = np.asarray(values, dtype=np.float32)
    norm = float(np.linalg.norm(vec)) if np.isfinite(vec).all() else math.nan
    if not math.isfinite(norm) or norm == 0.0:
        raise InvalidRequest("embedding", "must be finite and not all zeros")
    return vec / norm  # content embeddings are L2-normalised in every bundle


def apply_put(state: RetrievalState, entry: OverlayItem, embedding: np.ndarray) -> int:
    item_id = entry.meta.item_id
    index = state.bundle_model_index(item_id)  # its own id embedding if trained on, else 1
    vector = state.learned_vectors(np.array([index]), embedding[None])[0]
    return state.add_item(item_id, entry.meta.title, entry.meta.tags, embedding, vector, index)


def apply_overlay(state: RetrievalState, entries: list[OverlayItem]) -> None:
    """Replay changes (newest per item, oldest first) onto a freshly loaded state."""
    for entry in entries:
        item_id = entry.meta.item_id
        if not entry.meta.available:
            row = state.row_of.get(item_id)
            if row is not None:
                state.kill(row)
                state.overlay_applied += 1
            continue
        embedding = _replay_embedding(state, entry)
        if embedding is None:
            note = (f"overlay item {item_id!r} skipped: no usable embedding for content dim "
                    f"{state.content_dim} and no text encoder")
            log.warning("retrieval: %s", note)
            state.notes.append(note)
            continue
        apply_put(state, entry, embedding)
        state.overlay_applied += 1


def _replay_embedding(state: RetrievalState, entry: OverlayItem) -> np.ndarray | None:
    if entry.embedding is not None and len(entry.embedding) == state.content_dim:
        try:
            return validated_embedding(entry.embedding, state.content_dim)
        except InvalidRequest:
            pass
    if state.text_encoder is None:
        return None
    # A bundle with another encoder (or an entry without an embedding): recompute from text.
    encoded: np.ndarray = state.text_encoder.encode([item_text(entry.meta.title,
                                                               entry.meta.tags)])[0]
    return encoded


def check_item_id(item_id: str) -> None:
    if not item_id or len(item_id) > MAX_ITEM_ID or item_id != item_id.strip():
        raise InvalidRequest("item_id", f"must be 1..{MAX_ITEM_ID} characters without "
                             "leading or trailing spaces")

