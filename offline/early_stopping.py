"""Early stopping for the training loops (the tower, offline/train.py, and the candidate ranker,
offline/ranker_train.py): given each epoch's validation score and the minutes spent so far, is
this epoch the best so far, and is it time to stop?

Only a strictly higher score is an improvement: on a tie the earlier epoch stays the best (the
build's refit picks the earliest of the best epochs too, offline/build.py).
"""

from __future__ import annotations

from typing import NamedTuple


class Verdict(NamedTuple):
    best: bool  # this epoch's score is the best so far: keep its weights
    stop: bool  # no improvement for `patience` epochs, or the time box is spent


class EarlyStopping:
    def __init__(self, patience: int, max_minutes: float, best: float = -1.0) -> None:
        """`best`: the score an epoch must beat; the loops' scores are NDCG in [0, 1], and -1
        is also what a run that never validated reports."""
        self.patience = patience
        self.max_minutes = max_minutes
        self.best = best
        self.epochs_without_improvement = 0

    def out_of_time(self, minutes: float) -> bool:
        return minutes >= self.max_minutes

    def update(self, score: float, minutes: float) -> Verdict:
        improved = score > self.best
        if improved:
            self.best, self.epochs_without_improvement = score, 0
        else:
            self.epochs_without_improvement += 1
        stop = self.epochs_without_improvement >= self.patience or self.out_of_time(minutes)
        return Verdict(improved, stop)
