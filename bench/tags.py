"""Tag clusters against exact tags, in one run, on a real bundle (docs/tags.md):

    .venv/bin/python -m bench.tags [--bundle VERSION] [--users 20000] [--diversity-users 2000]

1. threshold sweep: for each candidate threshold, clusters formed, labelled same-tag pairs
   merged, labelled different-tag pairs wrongly merged, and cold-start NDCG@10 (the choice of
   the default threshold in shared/tags.py rests on this table);
2. (a) cold start, (b) tag-source recall@N for known users (offline/tag_eval.py), with the
   bundle's clusters; the tag source's order among equal scores (popularity, or the matched
   clusters taking turns) is chosen on 10,000 validation users and measured on all the others;
3. (c) diversity: the bundle's two-stage ranking (ONNX ranker over its FAISS candidates) for a
   sample of users, re-ranked by the gateway's `diversify` with at most `max_per_tag` per tag
   (before) and per cluster (after): distinct clusters in the top 10, and NDCG@10 of both.

Writes bench/results/tags.json (the bundle's metrics.json gets its `tag_clusters` line from
the build, `vidrec tags` and `vidrec evaluate`: the same cold-start and recall numbers on a
5,000-user sample).
The machine's load average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from offline.tag_clusters import cluster_catalogue, rule_order, tag_counts
from offline.tag_eval import cold_start, split_users, tag_source_recall
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.contracts import Candidate, ItemMeta
from shared.settings import get_settings
from shared.tags import TagClusters

OUT = Path(__file__).parent / "results" / "tags.json"
THRESHOLDS = [0.65, 0.7, 0.75, 0.8, 0.85, 0.9]

# Judged by reading the catalogue (MicroLens-50k tags are machine-translated Chinese): each
# pair names one thing twice / two different things.
SAME = [("king glory", "kingglory"), ("king glory", "king of glory"), ("king glory", "kinghonor"),
        ("king glory", "kingsglory"), ("king glory", "kings of glory"),
        ("funny", "funny video"), ("funny", "funny videos"), ("funny jokes", "funnyjokes"),
        ("summer strike", "summerstrike"), ("peace elite", "peaceelite"),
        ("naruto mobile game", "naruto mobile games"), ("two yuan", "2 yuan"),
        ("movie commentary", "film commentary"),
        ("fast hands screening room", "fast hand screening room"),
        ("2022 photosynthesis creators conference", "2022 photosynthesis creator conference"),
        ("anime commentary", "manga commentary"), ("sand sculpture animation", "sand sculpture")]
DIFFERENT = [("king glory", "peace elite"), ("king glory", "king"), ("king glory", "game"),
             ("king glory", "naruto mobile game"), ("funny", "animation"), ("funny", "cute"),
             ("football", "basketball"), ("food", "travel"), ("naruto", "ultraman"),
             ("music", "dance"), ("movie commentary", "anime commentary"),
             ("peace elite", "fifth personality"), ("naruto", "one piece"),
             ("summer strike", "king glory"), ("food", "cooking")]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pair_check(cluster_of: dict[str, str], pairs: list[tuple[str, str]]) -> dict:
    known = [(a, b) for a, b in pairs if a in cluster_of and b in cluster_of]
    together = [f"{a} | {b}" for a, b in known if cluster_of[a] == cluster_of[b]]
    return {"pairs_in_catalogue": len(known), "together": len(together), "which": together}


def sweep(items: list[dict], users: dict, encoder: str, cache_dir: Path, cap: int,
          max_users: int) -> list[dict]:
    counts = tag_counts(it.get("tags") or [] for it in items)
    tags = rule_order(counts)
    rows = []
    for threshold in THRESHOLDS:
        t0 = time.perf_counter()
        c, vectors, vocab, _ = cluster_catalogue(tags, encoder, cache_dir, threshold)
        seconds = time.perf_counter() - t0
        names = c.names
        cluster_of = {t: names[k] for t, k in zip(c.tags, c.cluster.tolist(), strict=True)}
        clusters = TagClusters(cluster_of, names, vectors[c.leader_rows], threshold, vocab)
        sizes = Counter(cluster_of.values())
        same, different = pair_check(cluster_of, SAME), pair_check(cluster_of, DIFFERENT)
        cold = cold_start(items, users, clusters, cap, max_users)
        rows.append({"threshold": threshold, "clusters": len(names),
                     "largest_cluster_tags": max(sizes.values()),
                     "same_pairs_merged": f"{same['together']}/{same['pairs_in_catalogue']}",
                     "different_pairs_merged": f"{different['together']}/"
                                               f"{different['pairs_in_catalogue']}",
                     "wrong_merges": different["which"],
                     "cold_start_NDCG@10": cold["clusters"]["NDCG@10"],
                     "cold_start_HR@10": cold["clusters"]["HR@10"],
                     "cluster_seconds": round(seconds, 2)})
        print(rows[-1], flush=True)
    return rows


def orders(items: list[dict], users: dict, clusters: TagClusters, cap: int,
           max_users: int | None) -> dict:
    """The tag source's order among equal scores, chosen on validation users and measured once
    on the others: `popularity` (before) or `turns` (the matched clusters take turns, each one's
    most popular first: services/retrieval/sources/tags.py TAKE_TURNS). Cold start with both, on
    both user sets; exact tags always under the same order as clusters."""
    from services.retrieval.sources import tags as retrieve

    valid, evaluation = split_users(users)
    out: dict = {"validation_users": len(valid), "evaluation_users_all": len(evaluation),
                 "validation": {}, "cold_start_by_order": {}, "tag_source_recall_by_order": {}}
    try:
        for order, turns in (("popularity", False), ("turns", True)):
            retrieve.TAKE_TURNS = turns
            v = cold_start(items, valid, clusters, cap, confidence=True)
            out["validation"][order] = v
            print("validation", order, v, flush=True)
        best = max(out["validation"], key=lambda o: out["validation"][o]["clusters"]["NDCG@10"])
        out["chosen_order"] = best
        for order, turns in (("popularity", False), ("turns", True)):
            retrieve.TAKE_TURNS = turns
            c = cold_start(items, evaluation, clusters, cap, max_users, confidence=True)
            out["cold_start_by_order"][order] = c
            print("evaluation", order, c, flush=True)
            r = tag_source_recall(items, users, clusters, cap, max_users)
            out["tag_source_recall_by_order"][order] = r
            print("recall", order, r, flush=True)
    finally:
        retrieve.TAKE_TURNS = True
    out["cold_start"] = out["cold_start_by_order"][best]
    out["tag_source_recall"] = out["tag_source_recall_by_order"][best]
    return out


def diversity(bundle: Bundle, clusters: TagClusters, settings, n_users: int) -> dict:
    from offline.evaluate_bundle import bundle_split
    from offline.two_stage import BundleModels, candidate_rows
    from services.gateway.pipeline.select import diversify

    _, split = bundle_split(bundle, settings)
    models = BundleModels(bundle, settings)
    users = split.evaluable("test")
    users = np.sort(np.random.default_rng(0).choice(users, min(n_users, len(users)),
                                                    replace=False))
    items = bundle.items
    metas = [ItemMeta(item_id=it["item_id"], title="", tags=it.get("tags") or [],
                      clusters=clusters.clusters(it.get("tags") or [])) for it in items]
    plain = [replace(m, clusters=[]) for m in metas]  # before: exact tags
    names = ("undiversified", "before", "after")
    # Per list of 10 (each a number between 1 and 10): clusters holding at least one of its
    # videos as their main (first) tag, and the most videos any one cluster holds. Counting
    # every tag of every video instead gives more "clusters" than videos (MicroLens videos
    # carry ~3 tags, ml-latest-small's up to dozens: a mean of 105 on the test bundle), which
    # says how many tags videos carry, not how varied the list is.
    distinct: dict[str, list[int]] = {n: [] for n in names}
    largest: dict[str, list[int]] = {n: [] for n in names}
    any_tag: dict[str, list[int]] = {n: [] for n in names}
    over_cap: dict[str, list[bool]] = {n: [] for n in names}
    ranks: dict[str, list[int]] = {n: [] for n in names}
    k, cap = 10, settings.max_per_tag
    for start in range(0, len(users), 256):
        block = users[start:start + 256]
        cands = candidate_rows(models, split, "test", block, settings)
        hists = [split.history(u, "test") for u in block]
        scores = models.rank(hists, [c + FIRST_ITEM_INDEX for c in cands])
        for u, c, s in zip(block, cands, scores, strict=True):
            order = c[np.argsort(-s, kind="stable")].tolist()
            target = int(split.test[u] - FIRST_ITEM_INDEX)
            for name, top in (("undiversified", order[:k]),
                              ("before", _top(order, plain, k, cap, diversify)),
                              ("after", _top(order, metas, k, cap, diversify))):
                ranks[name].append(top.index(target) if target in top else -1)
                per_cluster = Counter(x for r in top for x in metas[r].tag_keys)
                over_cap[name].append(max(per_cluster.values(), default=0) > cap)
                largest[name].append(max(per_cluster.values(), default=0))
                any_tag[name].append(len(per_cluster))
                distinct[name].append(len({metas[r].tag_keys[0] if metas[r].tag_keys
                                           else f"untagged:{r}" for r in top}))
    from offline.metrics import hit_rate, ndcg

    def mean(values: dict[str, list]) -> dict[str, float]:
        return {n: round(float(np.mean(v)), 3) for n, v in values.items()}

    return {"users": len(users), "max_per_tag": cap,
            "distinct_main_clusters_top10_mean": mean(distinct),
            "most_videos_in_one_cluster_top10_mean": mean(largest),
            "clusters_of_any_tag_top10_mean": mean(any_tag),
            "lists_with_a_cluster_over_the_cap": {n: round(float(np.mean(v)), 4)
                                                  for n, v in over_cap.items()},
            "two_stage_NDCG@10": {n: round(ndcg(np.array(r), k), 5) for n, r in ranks.items()},
            "two_stage_HR@10": {n: round(hit_rate(np.array(r), k), 5) for n, r in ranks.items()}}


def _top(order: list[int], metas: list[ItemMeta], k: int, cap: int, diversify) -> list[int]:
    pairs = [(Candidate(item_id=str(r), source="ann", score=0.0), metas[r]) for r in order]
    return [int(c.item_id) for c, _ in diversify(pairs, k, cap)]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--bundle", default=None)
    args.add_argument("--users", type=int, default=None,
                      help="cold-start / recall users (default: all that qualify)")
    args.add_argument("--sweep-users", type=int, default=5000)
    args.add_argument("--diversity-users", type=int, default=2000)
    opts = args.parse_args()
    settings = get_settings()
    bundle = Bundle.open(settings.artifacts_dir, opts.bundle or settings.bundle)
    clusters = TagClusters.load(bundle.path)
    if not clusters.enabled:
        raise SystemExit(f"{bundle.path}: no tags.json (run `vidrec tags {bundle.path}`)")
    items, users = bundle.items, bundle.users()
    cap = settings.candidate_caps["tags"]
    t0 = time.perf_counter()
    doc = {"bundle": bundle.version, "machine": platform.machine(),
           "load_average_start": load_average(), "threshold": clusters.threshold,
           "clusters": len(clusters.names), "tags": len(clusters.cluster_of)}
    doc.update(orders(items, users, clusters, cap, opts.users))
    if opts.diversity_users:
        doc["diversity"] = diversity(bundle, clusters, settings, opts.diversity_users)
        print("diversity", doc["diversity"], flush=True)
    doc["threshold_sweep"] = sweep(items, users, clusters_encoder(bundle, settings),
                                   Path(settings.artifacts_dir) / ".cache", cap,
                                   opts.sweep_users)
    doc["load_average_end"] = load_average()
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


def clusters_encoder(bundle: Bundle, settings) -> str:
    return json.loads((bundle.path / "tags.json").read_text()).get("encoder", settings.encoder)


if __name__ == "__main__":
    main()
