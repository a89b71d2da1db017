"""The candidate ranker's tower (CandidateRanker.set_tower, offline/ranker_model.py): a frozen
copy of the one it is given, at construction and when the build swaps in the refit tower."""

from __future__ import annotations

import torch

from offline.model import RankerConfig, SequentialRanker
from offline.ranker_model import CandidateRanker, CandidateRankerConfig


def _tower(seed: int) -> SequentialRanker:
    torch.manual_seed(seed)
    return SequentialRanker(RankerConfig(num_items=20, content_dim=8, dim=16, layers=1,
                                         heads=2, max_history=10))


def _ranker() -> CandidateRanker:
    return CandidateRanker(CandidateRankerConfig(num_features=5, dim=8, hidden=16), _tower(0))


def _assert_frozen_copy(ranker: CandidateRanker, original: SequentialRanker) -> None:
    assert ranker.tower is not original
    assert all(not p.requires_grad for p in ranker.tower.parameters())
    assert not ranker.tower.training
    for mine, theirs in zip(ranker.tower.parameters(), original.parameters(), strict=True):
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()
    before = [p.clone() for p in ranker.tower.parameters()]
    with torch.no_grad():  # training the original further...
        for p in original.parameters():
            p.add_(1.0)
    # ...leaves the ranker's copy as it was
    assert all(torch.equal(a, b) for a, b in zip(before, ranker.tower.parameters(), strict=True))


def test_construction_holds_a_frozen_copy_and_leaves_the_given_tower_alone() -> None:
    tower = _tower(0)
    ranker = CandidateRanker(CandidateRankerConfig(num_features=5, dim=8, hidden=16), tower)
    assert all(p.requires_grad for p in tower.parameters())  # the caller's own stays trainable
    _assert_frozen_copy(ranker, tower)


def test_set_tower_swaps_in_a_frozen_copy() -> None:
    ranker = _ranker()
    refit = _tower(1).train()
    ranker.set_tower(refit)
    _assert_frozen_copy(ranker, refit)
    assert refit.training  # the given tower's mode is its own


def test_the_rankers_own_parameters_stay_trainable() -> None:
    ranker = _ranker()
    ranker.set_tower(_tower(1))
    tower_params = {id(p) for p in ranker.tower.parameters()}
    own = [p for p in ranker.parameters() if id(p) not in tower_params]
    assert own and all(p.requires_grad for p in own)
    trainable = {id(p) for p in ranker.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in own}  # what ranker_train.py hands the optimizer


def test_train_mode_keeps_the_tower_in_eval_mode() -> None:
    ranker = _ranker()
    ranker.set_tower(_tower(1))
    ranker.train()
    assert ranker.training and ranker.mlp.training
    assert not ranker.tower.training
    assert not any(m.training for m in ranker.tower.modules())
