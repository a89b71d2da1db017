"""The clustering rule with the real text encoder on real MicroLens-50k tags (with their item
counts there): the known variants merge, clearly different tags stay apart, the result is the
same twice, and serving (the bundle's ONNX encoder, no torch) puts a tag it has never seen in
the cluster the offline build would have."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from offline.tag_clusters import cluster_catalogue, clusters_document, rule_order
from shared.tags import LEADERS_FILE, TAGS_FILE, TagClusters, canonical
from shared.text_encoder import OnnxTextEncoder
from tests.conftest import build_env

ENCODER = build_env(Path("."))["VIDREC_ENCODER"]

# (tag, videos carrying it in MicroLens-50k)
CATALOGUE = Counter({
    "summer strike": 319, "king glory": 298, "funny": 272, "sand sculpture animation": 252,
    "naruto": 227, "two yuan": 219, "animation": 197, "anime": 193, "kingglory": 190,
    "movie commentary": 179, "anime commentary": 164, "ultraman": 148, "food": 135,
    "summerstrike": 111, "naruto mobile game": 93, "naruto mobile games": 87, "2 yuan": 83,
    "peace elite": 83, "music": 69, "peaceelite": 68, "game": 66, "king": 63, "funny video": 43,
    "king of glory": 42, "funny animation": 38, "kinghonor": 17, "funny videos": 11,
    "cute": 5, "basketball": 10, "football": 2, "travel": 4, "dance": 8,
    "king glory funny video": 9, "kings of glory new season": 3, "honor guard": 2,
    "king honor li xin": 1, "police honor": 3, "kinghonor dream brawl": 1,
    "glory firefly plan": 84, "kingsglory": 4,
})
SAME = [["king glory", "kingglory", "king of glory", "kinghonor", "kingsglory"],
        ["funny", "funny video", "funny videos"], ["summer strike", "summerstrike"],
        ["peace elite", "peaceelite"], ["naruto mobile game", "naruto mobile games"],
        ["two yuan", "2 yuan"]]
APART = ["king glory", "peace elite", "king", "game", "funny", "cute", "animation", "football",
         "basketball", "food", "travel", "music", "dance", "naruto", "ultraman"]


def cluster_names(tags: list[str], tmp: Path) -> tuple[dict[str, str], object]:
    c, vectors, vocab, _ = cluster_catalogue(tags, ENCODER, tmp)
    return {t: c.names[k] for t, k in zip(c.tags, c.cluster.tolist(), strict=True)}, \
        (c, vectors, vocab)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("tag-cache")
    return cluster_names(rule_order(CATALOGUE), cache), cache


def test_known_variants_merge_and_different_tags_stay_apart(clustered) -> None:
    (name, _), _ = clustered
    for group in SAME:
        assert {name[t] for t in group} == {group[0]}, group
    assert len({name[t] for t in APART}) == len(APART)


def test_clustering_is_deterministic(clustered, tmp_path: Path) -> None:
    (name, _), cache = clustered
    again, _ = cluster_names(rule_order(CATALOGUE), cache)  # from the per-text cache
    fresh, _ = cluster_names(rule_order(CATALOGUE), tmp_path)  # encoded again
    assert again == name and fresh == name


def test_serving_maps_a_new_tag_as_the_build_would(clustered, small_bundle: Path,
                                                   tmp_path: Path) -> None:
    (_, (c, vectors, vocab)), cache = clustered
    held_out = ["kinghonor", "funny videos", "kingsglory", "naruto mobile games"]
    tags = [t for t in rule_order(CATALOGUE) if t not in held_out]
    # the build without the held-out tags, its files written as a bundle's
    part, part_vectors, part_vocab, _ = cluster_catalogue(tags, ENCODER, cache)
    doc = clusters_document(part, CATALOGUE, 0.75, ENCODER, part_vocab)
    (tmp_path / TAGS_FILE).write_text(json.dumps(doc))
    np.save(tmp_path / LEADERS_FILE, part_vectors[part.leader_rows])
    online = TagClusters.load(tmp_path)
    assert online.of("kinghonor") is None  # (naruto mobile games: a squashed match)
    online.assign(held_out, OnnxTextEncoder(small_bundle))
    # the build that saw them put each in the same cluster
    full = {t: c.names[k] for t, k in zip(c.tags, c.cluster.tolist(), strict=True)}
    assert [online.name(t) for t in held_out] == [full[t] for t in held_out]
    # and the ONNX encoder embeds canonical texts as the build's encoder did
    onnx = OnnxTextEncoder(small_bundle).encode([canonical(t, vocab) for t in c.tags[:8]])
    assert np.abs(onnx - vectors[:8]).max() < 1e-3
