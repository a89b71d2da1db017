"""The tag clustering rule on controlled vectors (no encoder): canonical text, squashed
matches, leaders, determinism, and that the online `assign` is the offline rule's next step."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from offline.tag_clusters import (
    BLOCK,
    build_tag_clusters,
    cluster_tags,
    clusters_document,
    rule_order,
    tag_counts,
)
from shared.tags import (
    LEADERS_FILE,
    TAGS_FILE,
    TagClusters,
    TagsFileError,
    canonical,
    squash,
    vocabulary,
)


def unit(*rows: list[float]) -> np.ndarray:
    v = np.array(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class FakeEncoder:
    """Maps known texts to fixed vectors: the rule's logic without a model."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = {k: unit(v)[0] for k, v in table.items()}
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.table[t] for t in texts])


def test_canonical_text_and_squash() -> None:
    vocab = {"king": 9, "honor": 3, "glory": 5, "peace": 2, "elite": 2, "kinghonor": 2,
             "car": 4, "pet": 4, "carpet": 5}
    assert canonical("King of Glory") == "king glory"
    assert canonical("funny videos") == "funny"
    assert canonical("video") == "video"  # nothing but filler: kept
    assert canonical("kinghonor", vocab) == "king honor"
    assert canonical("kingshonor", vocab) == "king honor"
    assert canonical("kinghonor dream brawl", vocab) == "king honor dream brawl"
    assert canonical("kinghonor") == "kinghonor"  # no vocabulary: no split
    assert canonical("carpet", vocab) == "carpet"  # used more often than its parts: kept
    assert canonical("class") == "class" and canonical("games") == "game"
    assert {squash(t) for t in ("king glory", "kingglory", "King-Glory", "kings of glory")} == \
        {"kingglory"}
    assert squash("funny") == squash("funny video") == squash("funny videos") == "funny"
    assert squash("二次元 动画") == "二次元动画"  # any script


def test_vocabulary_holds_words_of_multi_word_tags_used_twice() -> None:
    vocab = vocabulary(["king glory", "king honor", "glory days", "solo", "honor guard", "x y"])
    assert vocab == {"glory": 2, "honor": 2, "king": 2}


def test_leaders_squash_and_threshold() -> None:
    tags = ["king glory", "funny", "kingglory", "king of glory", "kinghonor", "cats",
            "funny videos", "cat"]
    vecs = unit([1, 0, 0], [0, 1, 0], [0.2, 0.1, 0], [0.9, 0.1, 0], [0.8, 0.3, 0.1],
                [0, 0, 1], [0, 0.2, 1], [0.1, 0.1, 1])
    c = cluster_tags(tags, vecs, threshold=0.8)
    name = {t: c.names[k] for t, k in zip(c.tags, c.cluster.tolist(), strict=True)}
    # kingglory's own vector is far away, but its squashed text equals king glory's
    assert name["kingglory"] == name["king of glory"] == name["kinghonor"] == "king glory"
    assert name["funny videos"] == "funny"  # squash, although its vector is near cats
    assert name["cat"] == "cats"  # cosine to the leader `cats`
    assert c.names == ["king glory", "funny", "cats"]
    assert c.how[tags.index("kingglory")] == "squash"
    assert c.how[tags.index("king of glory")] == "squash"
    assert c.how[tags.index("kinghonor")] == "embedding"


def test_a_tag_compares_with_leaders_only_so_chains_do_not_merge() -> None:
    # b is close to a, c is close to b but not to a: c must lead its own cluster.
    angle = np.radians([0, 30, 60])
    vecs = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    c = cluster_tags(["a", "b", "c"], vecs, threshold=0.8)  # cos 30° = 0.866, cos 60° = 0.5
    assert c.names == ["a", "c"]
    assert c.cluster.tolist() == [0, 0, 1]


def test_blocks_give_the_same_answer_as_one_tag_at_a_time() -> None:
    rng = np.random.default_rng(0)
    n = BLOCK * 2 + 37
    centres = rng.normal(size=(40, 16))
    vecs = centres[rng.integers(0, 40, n)] + 0.35 * rng.normal(size=(n, 16))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    tags = [f"t{i:05d}" for i in range(n)]
    c = cluster_tags(tags, vecs, threshold=0.8)
    # reference: the rule written out naively
    leaders: list[int] = []
    expect = []
    for i in range(n):
        sims = [float(vecs[i] @ vecs[j]) for j in leaders]
        if sims and max(sims) >= 0.8:
            expect.append(int(np.argmax(sims)))
        else:
            expect.append(len(leaders))
            leaders.append(i)
    assert c.cluster.tolist() == expect
    assert 1 < len(c.names) < n  # the data does merge, and not into one cluster


def test_clustering_is_deterministic_and_order_comes_from_counts() -> None:
    counts = tag_counts([["b", "a"], ["a"], ["c", "b", "b"], ["d"]])
    assert counts == Counter({"a": 2, "b": 2, "c": 1, "d": 1})
    assert rule_order(counts) == ["a", "b", "c", "d"]  # ties by text
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(300, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    tags = [f"x{i}" for i in range(300)]
    one, two = cluster_tags(tags, vecs, 0.6), cluster_tags(tags, vecs.copy(), 0.6)
    assert one.cluster.tolist() == two.cluster.tolist() and one.names == two.names


def test_online_assign_is_the_rule_applied_to_the_next_tag(tmp_path) -> None:
    table = {"king glory": [1, 0, 0], "funny": [0, 1, 0], "cat": [0, 0, 1],
             "king honor": [0.9, 0.2, 0], "dog": [0.1, 0.1, 1], "news": [0.5, 0.5, 0.5]}
    enc = FakeEncoder(table)
    offline_tags = ["king glory", "funny", "cats"]
    vocab = {"king": 2, "honor": 2, "glory": 2}
    c = cluster_tags(offline_tags, enc.encode([canonical(t, vocab) for t in offline_tags]),
                     threshold=0.8, vocab=vocab)
    doc = clusters_document(c, Counter(dict.fromkeys(offline_tags, 1)), 0.8, "fake", vocab)
    (tmp_path / TAGS_FILE).write_text(json.dumps(doc))
    np.save(tmp_path / LEADERS_FILE, enc.encode([canonical(t, vocab) for t in c.names]))
    online = TagClusters.load(tmp_path)
    assert online.enabled and online.vocabulary == vocab
    got = online.assign(["kinghonor", "King-Glory", "dogs", "news", "funny"], enc)
    assert got == ["king glory", "cats", "news", "funny"]  # kinghonor/King-Glory: one cluster
    assert enc.calls[-1] == ["king honor", "dog", "news"]  # canonical texts, known ones not
    # the same tags appended to the offline run land in the same clusters
    more = offline_tags + ["kinghonor", "dogs", "news"]
    vecs = enc.encode([canonical(t, vocab) for t in more])
    full = cluster_tags(more, vecs, threshold=0.8, vocab=vocab)
    offline_name = {t: full.names[k] for t, k in zip(full.tags, full.cluster.tolist(),
                                                      strict=True)}
    assert [offline_name[t] for t in ("kinghonor", "dogs", "news")] == \
        [online.name("kinghonor"), online.name("dogs"), online.name("news")]
    # remembered: no second encoding
    calls = len(enc.calls)
    assert online.assign(["kinghonor"], enc) == ["king glory"] and len(enc.calls) == calls


def test_resolve_interests(tmp_path) -> None:
    table = {"soccer": [1, 0, 0], "funny": [0, 1, 0], "cats": [0, 0, 1],
             "football": [0.85, 0.1, 0.1], "quantum physics": [0.3, -0.6, -0.7]}
    enc = FakeEncoder(table)
    tags = ["soccer", "funny", "cats"]
    c = cluster_tags(tags, enc.encode(tags), threshold=0.9)
    doc = clusters_document(c, Counter(dict.fromkeys(tags, 1)), 0.9, "fake", {})
    (tmp_path / TAGS_FILE).write_text(json.dumps(doc))
    np.save(tmp_path / LEADERS_FILE, enc.encode(c.names))
    clusters = TagClusters.load(tmp_path)
    assert clusters.resolve("funny", enc) == [("funny", 1.0)]  # a known tag: no encoding
    found = clusters.resolve("football", enc)
    assert [name for name, _ in found] == ["soccer"] and 0.9 < found[0][1] < 1.0
    assert clusters.resolve("quantum physics", enc) == []  # nothing near enough
    assert clusters.resolve("football", None) == []  # no encoder: unknown text matches nothing


def test_identity_without_tags_json(tmp_path) -> None:
    clusters = TagClusters.load(tmp_path)
    assert not clusters.enabled
    assert clusters.clusters(["kingglory", "king glory", "kingglory"]) == ["kingglory",
                                                                           "king glory"]
    assert clusters.resolve("anything", None) == [("anything", 1.0)]
    assert clusters.assign(["x"], FakeEncoder({})) == ["x"]


def test_a_malformed_tags_file_names_itself(tmp_path) -> None:
    (tmp_path / TAGS_FILE).write_text('{"clusters": 3}')
    with pytest.raises(TagsFileError, match="tags.json"):
        TagClusters.load(tmp_path)


def test_build_writes_the_bundle_files(tmp_path, monkeypatch) -> None:
    table = {"king glory": [1, 0], "funny": [0, 1], "kingglory": [0.3, 1]}
    monkeypatch.setattr("offline.embeddings.encode_texts",
                        lambda texts, encoder: FakeEncoder(table).encode(texts))
    facts = build_tag_clusters(tmp_path, [["king glory"], ["kingglory", "funny"],
                                          ["king glory", "funny videos"]],
                               "fake", tmp_path / "cache", threshold=0.8)
    assert facts["tags"] == 4 and facts["clusters"] == 2 and facts["texts_encoded"] == 3
    doc = json.loads((tmp_path / TAGS_FILE).read_text())
    assert doc["tags"] == {"king glory": 0, "funny": 1, "funny videos": 1, "kingglory": 0}
    assert [c["name"] for c in doc["clusters"]] == ["king glory", "funny"]
    assert "king glory" in (tmp_path / "tags.md").read_text()
    # a second build encodes nothing (per-text cache)
    again = build_tag_clusters(tmp_path, [["king glory", "funny"]], "fake", tmp_path / "cache")
    assert again["texts_encoded"] == 0


def test_cold_start_orders_exact_tags_and_clusters_by_one_rule() -> None:
    """offline/tag_eval runs the retrieval tag source for both: the items matching the most
    stated interests first, popularity breaking ties, popular items after; exact tags are the
    same rule with every tag its own cluster."""
    from offline.tag_eval import TagIndex, cold_start

    c = TagClusters({"king glory": "king glory", "kingglory": "king glory", "funny": "funny",
                     "soccer": "soccer", "news": "news"},
                    ["king glory", "funny", "soccer", "news"], np.eye(4, dtype=np.float32))
    spec = [("a", ["king glory"], 5), ("b", ["kingglory"], 1), ("c", ["news"], 10),
            ("d", ["funny"], 3), ("e", ["king glory", "funny"], 0.5), ("g", ["soccer"], 2),
            ("h", ["kingglory", "funny"], 0.1)]
    items = [{"item_id": i, "tags": t, "popularity": p} for i, t, p in spec]
    seen = [0, 3, 5]  # a, d, g: the user states king glory, funny, soccer
    interests = {"king glory": 1.0, "funny": 1.0, "soccer": 1.0}

    def ids(index: TagIndex) -> list[str]:
        return [items[r]["item_id"] for r in index.candidates(interests, seen, 50, 4).tolist()]

    assert ids(TagIndex.build(items, TagClusters.identity())) == ["e", "h", "c", "b"]
    assert ids(TagIndex.build(items, c)) == ["e", "h", "b", "c"]

    out = cold_start(items, {"u": ["a", "d", "g", "b"]}, c, 50)
    assert out["next_video_carries_a_stated_tag"] == 0.0
    assert out["next_video_in_a_stated_cluster"] == 1.0
    assert out["exact_tags"]["HR@10"] == out["clusters"]["HR@10"] == 1.0
    # b is 3rd with clusters, 4th with exact tags
    assert out["clusters"]["NDCG@10"] > out["exact_tags"]["NDCG@10"]
