"""The large-catalogue path at small size: above ann.EXACT_MAX_ITEMS the content rows are held as
float16, the content index is IVF-SQ8 (shared/ann.py) and its codes are the only copy of the
content rows (state.IndexRows). Retrieval must still find what exact search over the float32
bundle finds, remove deleted rows without disturbing the others, and upsert."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from services.retrieval import state as state_module
from services.retrieval.service import RetrievalService
from services.retrieval.sources.content import RECENT
from services.retrieval.state import IndexRows
from shared import ann
from shared.bundle import Bundle
from shared.contracts import ItemUpsert, RetrievalQuery, sources_only
from shared.recency import RECENCY_DECAY


def test_float16_content_and_ivf_sq8_index_serve_like_exact(settings, monkeypatch,
                                                            tmp_path: Path) -> None:
    src = Bundle.open(settings.artifacts_dir, settings.bundle).path
    big = settings.artifacts_dir / f"ivf-{tmp_path.name}"
    big.mkdir()
    for f in src.iterdir():
        if f.name != "index_content.faiss":
            (big / f.name).symlink_to(f.resolve())
    bundle = Bundle(big)
    content = bundle.content_embeddings()
    ann.save(ann.build_index(content, kind="ivf_sq8"), big / "index_content.faiss")
    monkeypatch.setattr(state_module, "CONTENT_FLOAT16_ABOVE", 0)  # as if n were large
    history = next(s for s in bundle.users().values() if len(s) > 20)[-20:]
    caps = sources_only(content=30)
    query = RetrievalQuery(history=history, caps=caps)

    async def go():
        service = await RetrievalService.open(settings, version=big.name)
        assert service.state.item_encoder is None  # loaded by the first upsert
        (before,) = await service.retrieve([query])
        gone = before.candidates[0].item_id
        await service.delete_item(gone)
        (after,) = await service.retrieve([query])
        await service.upsert_item("new-item", ItemUpsert(title="new",
                                                         embedding=content[0].tolist()))
        return service.state, before, gone, after

    state, before, gone, after = asyncio.run(go())
    assert isinstance(state.content, IndexRows) and state.vectors is None
    assert state.unit.view.dtype == np.float16 and state.dead_in_index == 0
    assert ann.index_kind(state.index_content) == "ivf_sq8"
    # exact search over the float32 bundle rows, with the service's content query
    rows = np.array([bundle.row_of[i] for i in history][-RECENT:])
    weights = RECENCY_DECAY ** np.arange(len(rows) - 1, -1, -1, dtype=np.float32)
    q = weights @ content[rows]
    scores = content @ (q / np.linalg.norm(q))
    scores[[bundle.row_of[i] for i in history]] = -np.inf
    exact = {bundle.items[r]["item_id"] for r in np.argsort(-scores)[:30]}
    got = [c.item_id for c in before.candidates]
    assert len(got) == 30 and len(exact & set(got)) >= 24  # recall@30 >= 0.8
    assert gone not in {c.item_id for c in after.candidates} and len(after.candidates) == 30
    # the removal touched only the deleted row: every other candidate is still found
    assert set(got) - {gone} <= {c.item_id for c in after.candidates}
    assert state.row_of["new-item"] == state.n_rows - 1 and state.item_encoder is not None
    rows = np.array([state.n_rows - 1, bundle.row_of[gone], bundle.row_of[history[-1]]])
    # decoded from the IVF-SQ8 codes (the deleted row from the copy kept before its removal)
    assert np.abs(state.content.take(rows) - content[[0, rows[1], rows[2]]]).max() < 0.01
