"""Chronological leave-one-out: per user, last interaction = test, second-last = validation,
the rest = train. Items become model indices (bundle row + 2; 0 pad, 1 unknown)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.bundle import FIRST_ITEM_INDEX
from shared.data import Dataset

MIN_LENGTH_TO_EVALUATE = 3  # users with fewer interactions only contribute training data


@dataclass
class Split:
    item_ids: list[str]                 # bundle row r -> item id (model index r + 2)
    users: list[str]                    # users, in a fixed order
    train: list[np.ndarray]             # per user, model indices, oldest first
    valid: np.ndarray                   # per user, model index of the validation item (0: none)
    test: np.ndarray                    # per user, model index of the test item (0: none)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def evaluable(self, which: str) -> np.ndarray:
        """Positions of users that have a `which` ('valid' or 'test') target."""
        return np.flatnonzero(getattr(self, which) > 0)

    def history(self, user_pos: int, which: str) -> np.ndarray:
        """What the model may see before predicting `which`: train (+ valid item for test)."""
        h = self.train[user_pos]
        if which == "test" and self.valid[user_pos] > 0:
            h = np.append(h, self.valid[user_pos])
        return h

    def with_validation_in_train(self) -> Split:
        """The same split with each validation item moved into training (for the final refit:
        the test item stays unseen)."""
        train = [self.history(u, "test") for u in range(len(self.users))]
        return Split(self.item_ids, self.users, train, np.zeros_like(self.valid), self.test)

    def sample_users(self, n: int, seed: int) -> Split:
        """n random users (all when n >= the user count), the same catalogue: for training on
        a sample of a dataset too large to train on in full."""
        if n >= len(self.users):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.users), n, replace=False))
        return Split(self.item_ids, [self.users[u] for u in keep],
                     [self.train[u] for u in keep], self.valid[keep], self.test[keep])

    def summary(self) -> dict:
        return {
            "protocol": "leave-one-out, chronological per user",
            "users": len(self.users),
            "items": self.num_items,
            "train_interactions": int(sum(len(t) for t in self.train)),
            "valid_users": int((self.valid > 0).sum()),
            "test_users": int((self.test > 0).sum()),
        }


def leave_one_out(dataset: Dataset) -> Split:
    item_ids = [it.item_id for it in dataset.items]
    index = {iid: r + FIRST_ITEM_INDEX for r, iid in enumerate(item_ids)}
    users = sorted(dataset.sequences)
    train, valid, test = [], np.zeros(len(users), np.int64), np.zeros(len(users), np.int64)
    for u, user in enumerate(users):
        seq = np.fromiter((index[i] for i in dataset.sequences[user]), np.int64)
        if len(seq) >= MIN_LENGTH_TO_EVALUATE:
            train.append(seq[:-2])
            valid[u], test[u] = seq[-2], seq[-1]
        else:
            train.append(seq)
    return Split(item_ids, users, train, valid, test)
