"""Early stopping (offline/early_stopping.py) on its own, and inside both training loops: the
tower's (offline/train.py) and the candidate ranker's (offline/ranker_train.py), each run for
real on a tiny catalogue with a learning rate of 0, so every epoch scores the same (a tie)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline.early_stopping import EarlyStopping, Verdict
from offline.model import RankerConfig, SequentialRanker
from offline.ranker_data import Example
from offline.ranker_model import CandidateRankerConfig
from offline.ranker_train import RankerTrainConfig, features_of, train_candidate_ranker
from offline.split import Split
from offline.train import TrainConfig, content_table, train_ranker
from shared import ranker_features
from shared.bundle import FIRST_ITEM_INDEX


def test_stops_after_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopping(patience=2, max_minutes=60)
    assert stopper.update(0.10, 1) == Verdict(best=True, stop=False)
    assert stopper.update(0.08, 2) == Verdict(best=False, stop=False)
    assert stopper.update(0.09, 3) == Verdict(best=False, stop=True)
    assert stopper.best == 0.10


def test_an_improvement_resets_the_count() -> None:
    stopper = EarlyStopping(patience=2, max_minutes=60)
    stopper.update(0.10, 1)
    assert stopper.update(0.05, 2) == Verdict(best=False, stop=False)
    assert stopper.update(0.12, 3) == Verdict(best=True, stop=False)
    assert stopper.epochs_without_improvement == 0
    assert stopper.update(0.11, 4) == Verdict(best=False, stop=False)  # one bad epoch, not two
    assert stopper.update(0.11, 5) == Verdict(best=False, stop=True)
    assert stopper.best == 0.12


def test_a_tie_is_not_an_improvement() -> None:
    stopper = EarlyStopping(patience=1, max_minutes=60)
    assert stopper.update(0.10, 1).best
    assert stopper.update(0.10, 2) == Verdict(best=False, stop=True)  # the earlier epoch stays


def test_the_time_box_stops_even_the_best_epoch() -> None:
    stopper = EarlyStopping(patience=5, max_minutes=3.0)
    assert stopper.update(0.10, 2.9) == Verdict(best=True, stop=False)
    assert stopper.update(0.20, 3.0) == Verdict(best=True, stop=True)
    assert not EarlyStopping(5, 3.0).out_of_time(2.99)
    assert EarlyStopping(5, 3.0).out_of_time(3.0)


def test_the_first_score_beats_the_starting_best() -> None:
    stopper = EarlyStopping(patience=3, max_minutes=60)
    assert stopper.best == -1.0  # what a run that never validated reports
    assert stopper.update(0.0, 1).best  # an NDCG of 0 is still the best so far


# ---- inside the loops -------------------------------------------------------------------------
ITEMS, USERS, DIM = 30, 40, 8


def _split() -> Split:
    rng = np.random.default_rng(0)
    seqs = [rng.choice(ITEMS, 8, replace=False) + FIRST_ITEM_INDEX for _ in range(USERS)]
    return Split([f"i{r}" for r in range(ITEMS)], [f"u{u}" for u in range(USERS)],
                 [s[:-2] for s in seqs], np.array([s[-2] for s in seqs]),
                 np.array([s[-1] for s in seqs]))


def _content() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(ITEMS, DIM)).astype(np.float32)


def _tower_cfg() -> RankerConfig:
    return RankerConfig(num_items=ITEMS, content_dim=DIM, dim=16, layers=1, heads=2,
                        max_history=10)


@pytest.mark.parametrize(("patience", "max_minutes", "epochs_run"), [
    (2, 60.0, 3),   # epoch 1 is the best; epochs 2 and 3 tie with it: patience reached
    (4, 60.0, 5),
    (4, 0.0, 1),    # the time box ends the first epoch already
])
def test_tower_loop_stops_as_the_helper_says(patience: int, max_minutes: float,
                                             epochs_run: int) -> None:
    cfg = TrainConfig(epochs=10, lr=0.0, patience=patience, max_minutes=max_minutes,
                      negatives=0, cosine=False, min_steps_per_epoch=1, valid_users=None)
    _, facts = train_ranker(_split(), _content(), _tower_cfg(), cfg)
    scores = [h["NDCG@10"] for h in facts["history"]]
    assert facts["epochs_run"] == epochs_run
    assert len(set(scores)) == 1  # lr 0: every epoch ties
    assert facts["best_valid_NDCG@10"] == scores[0]


def _examples(split: Split, which: str) -> list[Example]:
    """Every item a candidate, the user's `which` item the target."""
    rows = np.arange(ITEMS)
    out = []
    for u in range(USERS):
        target = int(getattr(split, which)[u]) - FIRST_ITEM_INDEX
        out.append(Example(u, split.train[u] - FIRST_ITEM_INDEX, rows,
                           np.zeros(ITEMS, np.int8), rows.copy(), np.zeros(ITEMS, np.float32),
                           target))
    return out


@pytest.mark.parametrize(("patience", "max_minutes", "epochs_run"), [
    (2, 60.0, 3), (3, 60.0, 4), (3, 0.0, 1)])
def test_candidate_ranker_loop_stops_as_the_helper_says(patience: int, max_minutes: float,
                                                        epochs_run: int) -> None:
    split, content = _split(), _content()
    torch.manual_seed(0)
    tower = SequentialRanker(_tower_cfg())
    stats = ranker_features.ItemStats.from_sequences(
        [t - FIRST_ITEM_INDEX for t in split.train], [[] for _ in range(ITEMS)], content)
    train, valid = _examples(split, "valid"), _examples(split, "test")
    tcfg = RankerTrainConfig(negatives=8, epochs=10, lr=0.0, weight_decay=0.0,
                             patience=patience, max_minutes=max_minutes, min_steps_per_epoch=1)
    cfg = CandidateRankerConfig(num_features=ranker_features.NUM_FEATURES, dim=8, hidden=16)
    _, facts = train_candidate_ranker(tower, content_table(content), train,
                                      features_of(train, stats), valid,
                                      features_of(valid, stats), cfg, tcfg)
    scores = [h["NDCG@10"] for h in facts["history"]]
    assert facts["epochs_run"] == epochs_run
    assert len(set(scores)) == 1
    assert facts["best_valid_NDCG@10"] == scores[0]
