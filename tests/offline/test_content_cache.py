"""The content-embedding cache with the real text encoder: the same catalogue again loads its
table and encodes nothing; a catalogue with new and edited videos (a retrain after
`PUT /v1/items`) encodes only those and takes every other row from the earlier table, equal to
what encoding them again would give; another encoder never reuses a row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offline import embeddings
from offline.embeddings import content_embeddings
from shared.data import Dataset, Item
from tests.conftest import build_env

ENCODER = build_env(Path("."))["VIDREC_ENCODER"]


def catalogue(items: list[Item]) -> Dataset:
    return Dataset(name="cache-test", items=items, sequences={}, timestamps={})


ITEMS = [Item(f"v{i}", title, tags) for i, (title, tags) in enumerate([
    ("Cats on a piano", ("cats", "music")), ("How to bake bread", ("food",)),
    ("Football highlights", ("football", "sport")), ("Naruto episode recap", ("anime",)),
    ("Travel vlog: Lisbon", ("travel",)), ("Morning yoga", ("fitness",)),
])]


def test_changed_catalogue_encodes_only_new_and_edited_texts(tmp_path: Path, monkeypatch) -> None:
    first, facts = content_embeddings(catalogue(ITEMS), ENCODER, tmp_path)
    assert facts["cached"] is False and facts["rows_encoded"] == len(ITEMS)

    again, facts = content_embeddings(catalogue(ITEMS), ENCODER, tmp_path)
    assert facts["cached"] is True
    np.testing.assert_array_equal(again, first)

    encoded: list[list[str]] = []
    real_encode = embeddings.encode_texts

    def counting(texts: list[str], encoder: str) -> np.ndarray:
        encoded.append(list(texts))
        return real_encode(texts, encoder)

    monkeypatch.setattr(embeddings, "encode_texts", counting)
    edited = Item("v1", "How to bake sourdough bread", ("food",))
    new = Item("v-new", "Skateboard tricks for beginners", ("sport",))
    changed = [ITEMS[0], edited, *ITEMS[2:], new]
    emb, facts = content_embeddings(catalogue(changed), ENCODER, tmp_path)

    assert facts["cached"] is False
    assert (facts["rows_reused"], facts["rows_encoded"]) == (len(ITEMS) - 1, 2)
    assert len(encoded) == 1 and len(encoded[0]) == 2
    kept = [0, 2, 3, 4, 5]
    np.testing.assert_array_equal(emb[kept], first[kept])
    fresh = real_encode([embeddings.item_text(it.title, it.tags) for it in changed], ENCODER)
    np.testing.assert_allclose(emb, fresh, atol=1e-5)
    assert not np.allclose(emb[1], first[1], atol=1e-3)  # the edited title was encoded again


def test_another_encoder_reuses_nothing(tmp_path: Path) -> None:
    content_embeddings(catalogue(ITEMS), ENCODER, tmp_path)
    digests = embeddings.text_digests(["Cats on a piano"], ENCODER)
    assert digests[0] != embeddings.text_digests(["Cats on a piano"], "other-encoder")[0]
    _, found = embeddings._reuse_rows(tmp_path, embeddings.text_digests(
        [embeddings.item_text(it.title, it.tags) for it in ITEMS], "other-encoder"))
    assert not found.any()
