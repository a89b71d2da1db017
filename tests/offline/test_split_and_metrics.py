"""Leave-one-out split and the metric functions, against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offline.evaluate import target_ranks
from offline.metrics import hit_rate, ndcg, recall_at, summarise
from offline.split import leave_one_out
from shared.data import Dataset, Item


def _dataset() -> Dataset:
    items = [Item(str(i), f"t{i}") for i in range(6)]
    seqs = {"u1": ["0", "1", "2", "3"], "u2": ["4", "5"], "u3": ["5", "4", "3"]}
    return Dataset("toy", items, seqs, {u: list(range(len(s))) for u, s in seqs.items()})


def test_leave_one_out_is_chronological() -> None:
    split = leave_one_out(_dataset())
    assert split.users == ["u1", "u2", "u3"]
    # model index = row + 2
    assert split.train[0].tolist() == [2, 3] and split.valid[0] == 4 and split.test[0] == 5
    assert split.train[1].tolist() == [6, 7] and split.valid[1] == 0 and split.test[1] == 0
    assert split.evaluable("test").tolist() == [0, 2]
    assert split.history(0, "test").tolist() == [2, 3, 4]
    assert split.history(0, "valid").tolist() == [2, 3]


def test_metrics_hand_computed() -> None:
    ranks = np.array([0, 1, 9, 10, -1])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    expected = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert ndcg(ranks, 10) == pytest.approx(expected)
    assert summarise(ranks)["HR@50"] == pytest.approx(4 / 5)
    assert recall_at([np.array([1, 2]), np.array([3])], np.array([2, 4])) == 0.5


def test_full_ranking_excludes_seen_and_breaks_ties_by_row() -> None:
    split = leave_one_out(_dataset())
    # user u1 (pos 0): test item row 3, saw rows 0,1,2. Scores favour seen rows, which must
    # not count; row 5 beats the target, row 4 ties it but comes after it.
    scores = np.array([[9, 9, 9, 1, 1, 2]], np.float32)
    ranks = target_ranks(split, "test", lambda users: scores, users=np.array([0]))
    assert ranks.tolist() == [1]
    never = np.array([[0, 0, 0, -np.inf, 1, 1]], np.float32)
    assert target_ranks(split, "test", lambda u: never, users=np.array([0])).tolist() == [-1]


def test_user_sample_keeps_the_catalogue_and_whole_users() -> None:
    split = leave_one_out(_dataset())
    part = split.sample_users(2, seed=0)
    assert part.item_ids == split.item_ids and len(part.users) == 2
    for u, user in enumerate(part.users):  # each sampled user keeps all of its data
        whole = split.users.index(user)
        assert part.train[u].tolist() == split.train[whole].tolist()
        assert (part.valid[u], part.test[u]) == (split.valid[whole], split.test[whole])
    assert split.sample_users(3, seed=0) is split and split.sample_users(9, seed=0) is split
    assert part.users == split.sample_users(2, seed=0).users  # seeded


def test_ranks_are_the_same_whatever_the_chunk() -> None:
    split = leave_one_out(_dataset())
    rng = np.random.default_rng(0)
    table = rng.standard_normal((3, 6)).astype(np.float32)
    fn = lambda users: table[users]  # noqa: E731
    assert target_ranks(split, "test", fn, chunk=1).tolist() == \
        target_ranks(split, "test", fn).tolist()
