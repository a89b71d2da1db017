"""OnnxRanker on the real small bundle with the tower's score as its ranker (the fallback a
bundle without a candidate ranker serves; offline/ranker_fallback.py): scores against a
recomputation from the bundle's other exported parts, order and batching invariances, new
items, start-up refusals. The candidate ranker: test_candidate_ranker.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from offline.ranker_fallback import write_tower_only_bundle
from services.ranking import scorer as scorer_module
from services.ranking.errors import ModelSchemaMismatch, ScoreCountMismatch
from services.ranking.scorer import OnnxRanker
from shared.bundle import Bundle

ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle(small_bundle, tmp_path_factory) -> Bundle:
    dest = tmp_path_factory.mktemp("tower") / Path(small_bundle).name
    return Bundle(write_tower_only_bundle(Path(small_bundle), dest))


@pytest.fixture(scope="module")
def ranker(bundle: Bundle, make_settings) -> OnnxRanker:
    return OnnxRanker(bundle, make_settings(bundle.path.parent, bundle.version))


@pytest.fixture(scope="module")
def parts(bundle: Bundle) -> dict:
    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(bundle.file(name)), providers=["CPUExecutionProvider"])

    return {"query": session("query_encoder.onnx"), "item": session("item_encoder.onnx"),
            "item_vectors": bundle.item_vectors(), "content": bundle.content_embeddings()}


@pytest.fixture(scope="module")
def users(bundle: Bundle) -> list[list[str]]:
    """Real histories of several lengths (longest first), newest last."""
    seqs = sorted((s for s in bundle.users().values() if len(s) >= 2), key=len, reverse=True)
    return [seqs[0][-60:], seqs[len(seqs) // 2][-20:], seqs[-1][-3:], seqs[1][-1:]]


def user_vector(parts: dict, bundle: Bundle, history: list[str],
                new: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """query_encoder.onnx on a history built by hand (not by the scorer's packing)."""
    new = new or {}
    ids, content = [], []
    for item_id in history[-bundle.max_history:]:
        row = bundle.row_of.get(item_id)
        ids.append(1 if row is None else row + 2)
        content.append(new[item_id] if row is None else parts["content"][row])
    feeds = {"hist_ids": np.array([ids], dtype=np.int64),
             "hist_content": np.array([content], dtype=np.float32)}
    return parts["query"].run(None, feeds)[0][0]


def item_vector_of_new(parts: dict, content: np.ndarray) -> np.ndarray:
    feeds = {"item_ids": np.array([1], dtype=np.int64),
             "item_content": content.reshape(1, -1).astype(np.float32)}
    return parts["item"].run(None, feeds)[0][0]


def some_items(bundle: Bundle, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [bundle.items[r]["item_id"] for r in rng.choice(len(bundle.items), n, replace=False)]


def test_scores_are_user_vector_dot_item_vectors(ranker, bundle, parts, users) -> None:
    cands = some_items(bundle, 50)
    (scores,) = ranker.score([users[0]], [cands])
    user = user_vector(parts, bundle, users[0])
    expected = parts["item_vectors"][[bundle.row_of[c] for c in cands]] @ user
    assert scores.dtype == np.float32 and scores.shape == (50,)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=ATOL)
    assert np.std(scores) > 0  # a real model tells items apart


def test_new_items_score_on_their_content_alone(ranker, bundle, parts, users) -> None:
    known = some_items(bundle, 2, seed=1)
    donor = parts["content"][bundle.row_of[known[1]]]
    cands = [known[0], "brand-new-item", "never-seen"]
    new = {"brand-new-item": donor}
    (scores,) = ranker.score([users[1]], [cands], new)
    user = user_vector(parts, bundle, users[1])
    np.testing.assert_allclose(scores[1], item_vector_of_new(parts, donor) @ user,
                               rtol=1e-4, atol=ATOL)
    zero = np.zeros_like(donor)  # no content known: a zero content row
    np.testing.assert_allclose(scores[2], item_vector_of_new(parts, zero) @ user,
                               rtol=1e-4, atol=ATOL)
    (without,) = ranker.score([users[1]], [cands])
    np.testing.assert_allclose(without[1], without[2], atol=1e-6)
    np.testing.assert_allclose(without[0], scores[0], atol=1e-6)


def test_new_items_in_history_count_only_with_content(ranker, bundle, parts, users) -> None:
    cands = some_items(bundle, 20, seed=2)
    donor = parts["content"][bundle.row_of[cands[0]]]
    history = [*users[2], "fresh-upload"]
    (with_new,) = ranker.score([history], [cands], {"fresh-upload": donor})
    user = user_vector(parts, bundle, history, {"fresh-upload": donor})
    expected = parts["item_vectors"][[bundle.row_of[c] for c in cands]] @ user
    np.testing.assert_allclose(with_new, expected, rtol=1e-4, atol=ATOL)
    (dropped,) = ranker.score([history], [cands])  # no content: the item is left out
    (plain,) = ranker.score([users[2]], [cands])
    np.testing.assert_allclose(dropped, plain, atol=1e-6)


def test_permuting_candidates_permutes_scores(ranker, bundle, users) -> None:
    cands = [*some_items(bundle, 40, seed=3), "new-a"]
    (scores,) = ranker.score([users[0]], [cands])
    perm = np.random.default_rng(4).permutation(len(cands))
    (permuted,) = ranker.score([users[0]], [[cands[i] for i in perm]])
    np.testing.assert_allclose(permuted, scores[perm], atol=1e-5)


def test_many_users_in_one_call_equal_one_by_one(ranker, bundle, users) -> None:
    histories = [*users, []]  # the last user is new: an all-padding history
    cands = [some_items(bundle, n, seed=10 + n) for n in (30, 1, 0, 57, 12)]
    cands[3] += ["new-b", cands[3][0]]  # an unknown id and a duplicate
    together = ranker.score(histories, cands)
    assert [len(s) for s in together] == [len(c) for c in cands]
    for h, c, s in zip(histories, cands, together, strict=True):
        (alone,) = ranker.score([h], [c])
        np.testing.assert_allclose(s, alone, rtol=1e-5, atol=1e-5)
    assert np.isfinite(together[4]).all()
    # The duplicate scores as the first copy, to float32 rounding: onnxruntime's matrix kernels
    # may sum a matrix's last rows in another order than its first (1 ulp apart, 3.8e-6 at a
    # score of 53, on an AVX-512 machine), so an absolute 1e-6 was below float32's resolution.
    np.testing.assert_array_max_ulp(together[3][-1], together[3][0], maxulp=4)


def test_large_requests_split_into_batches_give_the_same_scores(ranker, bundle, users,
                                                                 monkeypatch) -> None:
    cands = [some_items(bundle, n, seed=n) for n in (25, 7, 40, 3)]
    whole = ranker.score(users, cands)
    monkeypatch.setattr(scorer_module, "MAX_BATCH_CELLS", 30)
    split = ranker.score(users, cands)
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_items_are_listed_once(ranker, bundle) -> None:
    known = some_items(bundle, 1)[0]
    assert ranker.unknown_items([["x", known]], [["y", "x"], [known]]) == ["x", "y"]


def test_wrong_number_of_scores_is_a_typed_failure(ranker, bundle, users, onnx_model) -> None:
    """A real model that declares [B, C] but returns one score too few per user."""
    bad = onnx_model(ranker.info.content_dim, drop_last_candidate=True)
    good_session = ranker.session
    ranker.session = ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"])
    try:
        with pytest.raises(ScoreCountMismatch, match="shape"):
            ranker.score([users[0]], [some_items(bundle, 5)])
    finally:
        ranker.session = good_session


def test_info_reports_what_is_served(ranker, bundle) -> None:
    info = ranker.info
    assert info.version == bundle.version
    assert info.provider == "CPUExecutionProvider"  # use_gpu=False in these settings
    assert info.content_dim == bundle.content_embeddings().shape[1]
    assert info.max_history == bundle.max_history and info.items == len(bundle.items)


# ---- start-up refusals -------------------------------------------------------------------
@pytest.fixture
def load_with(bundle: Bundle, tmp_path: Path, copy_bundle, make_settings):
    """Load a copy of the small bundle with some files replaced."""

    def load(replace: dict[str, Path]) -> OnnxRanker:
        copy = copy_bundle(bundle.path, tmp_path / "artifacts", "bad-bundle", replace)
        return OnnxRanker(Bundle(copy), make_settings(copy.parent, copy.name))

    return load


def test_refuses_a_ranker_with_other_input_names(bundle, load_with,
                                                 onnx_model: Callable[..., Path]) -> None:
    e = bundle.content_embeddings().shape[1]
    model = onnx_model(e, rename={"hist_ids": "history_ids"})
    with pytest.raises(ModelSchemaMismatch, match=r"missing input\(s\) \['hist_ids'\]") as info:
        load_with({"ranker.onnx": model})
    assert "ranker.onnx" in str(info.value) and "history_ids" in str(info.value)


def test_refuses_a_ranker_with_another_content_dim(bundle, load_with, onnx_model) -> None:
    e = bundle.content_embeddings().shape[1]
    model = onnx_model(e + 16)
    with pytest.raises(ModelSchemaMismatch, match=rf"axis 2 \(E\) is {e + 16}, expected {e}"):
        load_with({"ranker.onnx": model})


def test_refuses_a_ranker_that_returns_too_few_scores(bundle, load_with, onnx_model) -> None:
    model = onnx_model(bundle.content_embeddings().shape[1], drop_last_candidate=True)
    with pytest.raises(ModelSchemaMismatch, match="trial run failed"):
        load_with({"ranker.onnx": model})


def test_refuses_model_json_disagreeing_with_the_arrays(bundle, load_with, tmp_path) -> None:
    info = {**bundle.model_info, "content_dim": bundle.model_info["content_dim"] + 1}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(info))
    with pytest.raises(ModelSchemaMismatch, match="content_dim"):
        load_with({"model.json": path})
