"""shared/ranker_features.py's tag features on a catalogue small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from shared import ranker_features as rf

# rows 0-3: items with tag clusters; row 4 has none
TAGS = [["a", "b"], ["b"], ["c"], ["a", "c"], []]


@pytest.fixture
def stats() -> rf.ItemStats:
    content = np.eye(5, 8, dtype=np.float32)
    return rf.ItemStats.from_sequences([np.array([0, 1, 2])], TAGS, content)


def test_the_profile_weighs_newer_items_more_and_sums_to_one(stats: rf.ItemStats) -> None:
    # history oldest first: row 0 (a, b) then row 1 (b); the newest weighs 1, the older 0.9
    profile = rf.profile_weights(stats, np.array([0, 1]))
    a, b, c = (stats.tag_names.index(t) for t in "abc")
    total = 0.9 + 0.9 + 1.0
    w = rf.weights_of(profile, np.array([a, b, c]))
    assert w[0] == pytest.approx(0.9 / total) and w[1] == pytest.approx(1.9 / total)
    assert w[2] == 0.0 and profile[1].sum() == pytest.approx(1.0)
    assert profile[0].tolist() == sorted([a, b])  # sparse: the history's clusters only
    assert rf.tag_profile(stats, np.array([0, 1])) == {a: w[0], b: w[1]}
    assert not len(rf.profile_weights(stats, np.array([4]))[0])  # no tags: empty
    assert not rf.weights_of(rf.profile_weights(stats, np.array([4])), np.array([a])).any()
    assert rf.tag_profile(stats, np.array([], np.int64)) == {}


def test_candidates_get_their_clusters_affinity(stats: rf.ItemStats) -> None:
    hist = np.array([0, 1])
    cands = np.array([3, 2, 4, -1])  # (a, c), (c), none, an item the bundle does not hold
    feats = rf.build(stats, hist, cands, np.zeros(4, np.int64), np.arange(4),
                     np.ones(4, np.float32), cand_content=np.zeros((4, 8), np.float32))
    col = {n: i for i, n in enumerate(rf.FEATURE_NAMES)}
    weight_a = 0.9 / 2.8
    assert feats[:, col["tag_affinity"]] == pytest.approx([weight_a, 0, 0, 0])
    assert feats[:, col["tag_affinity_max"]] == pytest.approx([weight_a, 0, 0, 0])
    assert feats[:, col["tags_matched"]].tolist() == [1, 0, 0, 0]
