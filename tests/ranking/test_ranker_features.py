"""shared/ranker_features.py's tag features on a catalogue small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from shared import ranker_features as rf
from shared.transitions import TRANSITIONS_FILE, Transitions

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


def test_transitions_count_what_followed_within_the_window() -> None:
    # two users: 0 1 2 3 and 1 2 2 0; within 3 steps, a rewatch (2 after 2) is no transition
    t = Transitions.from_sequences([np.array([0, 1, 2, 3]), np.array([1, 2, 2, 0])], 5)
    assert t.following(np.array([1]), np.array([2, 3, 0, 4])).tolist() == [[3, 1, 1, 0]]
    assert t.following(np.array([2]), np.array([0, 2, 3])).tolist() == [[2, 0, 1]]
    assert t.following(np.array([-1, 4]), np.array([0, 1])).tolist() == [[0, 0], [0, 0]]
    assert t.out_counts(np.array([1, 4, -1])).tolist() == [5, 0, 0]
    # nothing crosses from one user's sequence into the next (3 is last, 1 starts the next)
    assert t.following(np.array([3]), np.array([1, 2])).tolist() == [[0, 0]]


def test_cooc_features_weigh_the_newest_items_and_stay_zero_for_unknown_items() -> None:
    content = np.eye(5, 8, dtype=np.float32)
    stats = rf.ItemStats.from_sequences([np.array([0, 2]), np.array([1, 2]),
                                         np.array([1, 3])], TAGS, content)
    hist, cands = np.array([0, 1]), np.array([2, 3, 4, -1])
    feats = rf.build(stats, hist, cands, np.zeros(4, np.int64), np.arange(4),
                     np.ones(4, np.float32), cand_content=np.zeros((4, 8), np.float32))
    col = {n: i for i, n in enumerate(rf.FEATURE_NAMES)}
    # after row 1 (newest, weight 1): 2 once, 3 once; after row 0 (weight 0.8): 2 once
    assert feats[:, col["cooc_last"]] == pytest.approx(np.log1p([1, 1, 0, 0]))
    assert feats[:, col["cooc_recent"]] == pytest.approx(np.log1p([1.8, 1, 0, 0]))
    # shares: row 1 was followed twice (2, 3), row 0 once (2)
    assert feats[:, col["cooc_share"]] == pytest.approx(
        np.log1p(100 * np.array([0.8 * 1 + 0.5, 0.5, 0, 0])))


def test_statistics_survive_a_save_and_load(tmp_path) -> None:
    content = np.eye(5, 8, dtype=np.float32)
    stats = rf.ItemStats.from_sequences([np.array([0, 1, 2]), np.array([2, 0])], TAGS, content)
    stats.save(tmp_path / rf.STATS_FILE)
    stats.cooc.save(tmp_path / TRANSITIONS_FILE)
    back = rf.ItemStats.of_bundle(tmp_path, content)
    for name in ("ptr", "next", "count"):
        assert np.array_equal(getattr(back.cooc, name), getattr(stats.cooc, name))
    hist, cands = np.array([0, 1]), np.array([2, 0, 3])
    args = (np.zeros(3, np.int64), np.arange(3), np.ones(3, np.float32))
    assert np.array_equal(rf.build(back, hist, cands, *args), rf.build(stats, hist, cands, *args))


def test_transitions_of_another_catalogue_are_refused(tmp_path) -> None:
    Transitions.from_sequences([np.array([0, 1, 2])], 5).save(tmp_path / "t.npz")
    with pytest.raises(ValueError, match="transitions for 5 items with 3 pairs, the bundle "
                                         "has 4 items"):
        Transitions.load(tmp_path / "t.npz", 4)
