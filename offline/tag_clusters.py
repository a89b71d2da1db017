"""Tag clusters for a bundle: embed every tag with the item text encoder (batched, cached), group
them by the rule in shared/tags.py, write tags.json + tag_leaders.npy and a human-readable
tags.md (largest clusters, a sample of merges) so a person can judge them.

The rule is leader clustering in order of use, not connected components: measured on
MicroLens-50k (docs/tags.md), connected components at the same threshold chained unrelated tags
into a few giant clusters, while comparing each tag with leaders only keeps every member within
`threshold` of the tag that names its cluster.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.tags import (
    DEFAULT_THRESHOLD,
    LEADERS_FILE,
    TAGS_FILE,
    TAGS_FORMAT,
    canonical,
    squash,
    vocabulary,
)

BLOCK = 512          # tags compared with the leaders in one matrix product
REPORT_CLUSTERS = 25
REPORT_MERGES = 40


@dataclass
class Clustering:
    tags: list[str]           # in rule order: most used first, then by text
    cluster: np.ndarray       # int [tags]: cluster id of each tag
    leader_rows: list[int]    # per cluster id, the row (in `tags`) of its leader
    how: list[str]            # per tag: "leader" | "squash" | "embedding"
    similarity: np.ndarray    # float [tags]: cosine to its leader (1 for leaders)

    @property
    def names(self) -> list[str]:
        return [self.tags[r] for r in self.leader_rows]


def tag_counts(tag_lists: Iterable[Sequence[str]]) -> Counter[str]:
    """Items per tag (a tag repeated on one item counts once)."""
    counts: Counter[str] = Counter()
    for tags in tag_lists:
        counts.update(set(t for t in tags if t))
    return counts


def rule_order(counts: Counter[str]) -> list[str]:
    """Most used first; ties by text, so the result never depends on dict order."""
    return sorted(counts, key=lambda t: (-counts[t], t))


def cluster_tags(tags: list[str], vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                 vocab: dict[str, int] | None = None) -> Clustering:
    """Apply the rule of shared/tags.py to `tags` (already in rule order) with the unit
    embeddings of their canonical texts. Exact: each block of tags is compared with every
    earlier leader in one matrix product, then walked in order against the leaders created
    inside the block."""
    n = len(tags)
    cluster = np.full(n, -1, np.int64)
    sim_out = np.ones(n, np.float32)
    how = ["leader"] * n
    leader_rows: list[int] = []
    by_squash: dict[str, int] = {}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    for start in range(0, n, BLOCK):
        rows = range(start, min(n, start + BLOCK))
        block = vectors[start:rows.stop]
        before = len(leader_rows)
        if before:
            sims = block @ vectors[leader_rows].T
            best = sims.argmax(axis=1)
            best_sim = sims[np.arange(len(block)), best]
        for i in rows:
            key = squash(tags[i], vocab)
            if key in by_squash:
                cluster[i] = by_squash[key]
                sim_out[i] = float(vectors[i] @ vectors[leader_rows[cluster[i]]])
                how[i] = "squash"
                continue
            cand, cand_sim = -1, -np.inf
            if before:
                cand, cand_sim = int(best[i - start]), float(best_sim[i - start])
            new = leader_rows[before:]
            if new:  # leaders created earlier in this block
                s = vectors[new] @ vectors[i]
                j = int(s.argmax())
                if s[j] > cand_sim:
                    cand, cand_sim = before + j, float(s[j])
            if cand >= 0 and cand_sim >= threshold:
                cluster[i], sim_out[i], how[i] = cand, cand_sim, "embedding"
            else:
                cluster[i] = len(leader_rows)
                leader_rows.append(i)
            by_squash.setdefault(key, int(cluster[i]))
    return Clustering(tags, cluster, leader_rows, how, sim_out)


# ---- embeddings -----------------------------------------------------------------------------
def embed_texts(texts: list[str], encoder: str, cache_dir: Path) -> tuple[np.ndarray, int]:
    """Unit embeddings of `texts` with the items' text encoder. Cached per text (one file per
    encoder), so a catalogue that gains tags, or a changed canonical form, only encodes the
    new texts. Returns (vectors, number of texts encoded now)."""
    key = hashlib.sha256(encoder.encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"tag-embeddings-{key}.npz"
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as z:
            known = dict(zip(z["texts"].tolist(), z["vectors"], strict=True))
    missing = sorted(set(texts) - known.keys())
    if missing:
        from offline.embeddings import encode_texts

        known.update(zip(missing, encode_texts(missing, encoder), strict=True))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        all_texts = sorted(known)
        np.savez(tmp, texts=np.array(all_texts), vectors=np.stack([known[t] for t in all_texts]))
        tmp.replace(cache)
    if not texts:
        return np.zeros((0, 1), np.float32), 0
    return np.stack([known[t] for t in texts]).astype(np.float32), len(missing)


# ---- bundle files ---------------------------------------------------------------------------
def clusters_document(c: Clustering, counts: Counter[str], threshold: float,
                      encoder: str, vocab: dict[str, int]) -> dict:
    members: dict[int, list[str]] = {}
    for tag, cid in zip(c.tags, c.cluster.tolist(), strict=True):
        members.setdefault(cid, []).append(tag)
    clusters = [{"id": cid, "name": name, "items": sum(counts[t] for t in members[cid]),
                 "tags": members[cid]} for cid, name in enumerate(c.names)]
    return {"format": TAGS_FORMAT, "algorithm": "leader clustering in order of use: squashed "
            "canonical text match, else cosine to the nearest leader >= threshold "
            "(docs/tags.md)",
            "threshold": threshold, "encoder": encoder, "words": vocab,
            "tags_total": len(c.tags), "clusters_total": len(clusters),
            "clusters": clusters,
            "tags": {t: int(cid) for t, cid in zip(c.tags, c.cluster.tolist(), strict=True)}}


def summary(doc: dict) -> dict:
    sizes = np.array([len(c["tags"]) for c in doc["clusters"]]) if doc["clusters"] else \
        np.zeros(1, int)
    return {"tags": doc["tags_total"], "clusters": doc["clusters_total"],
            "merged_tags": int(doc["tags_total"] - doc["clusters_total"]),
            "multi_tag_clusters": int((sizes > 1).sum()), "largest_cluster": int(sizes.max()),
            "threshold": doc["threshold"]}


def report_markdown(doc: dict, c: Clustering, counts: Counter[str]) -> str:
    s = summary(doc)
    lines = [f"# Tag clusters: {s['tags']} tags -> {s['clusters']} clusters "
             f"(threshold {s['threshold']})", "",
             f"{s['merged_tags']} tags merged into another tag's cluster; "
             f"{s['multi_tag_clusters']} clusters hold more than one tag.", "",
             "## Largest clusters (by items)", "", "| cluster | items | tags |", "|---|---|---|"]
    big = sorted(doc["clusters"], key=lambda x: (-x["items"], x["name"]))[:REPORT_CLUSTERS]
    for cl in big:
        shown = ", ".join(f"{t} ({counts[t]})" for t in cl["tags"][:12])
        more = f", ... +{len(cl['tags']) - 12}" if len(cl["tags"]) > 12 else ""
        lines.append(f"| {cl['name']} | {cl['items']} | {shown}{more} |")
    merged = [i for i, h in enumerate(c.how) if h != "leader"]
    # An even sample across the list (deterministic), weakest merges included on purpose.
    step = max(1, len(merged) // REPORT_MERGES)
    sample = merged[::step][:REPORT_MERGES]
    weakest = sorted(merged, key=lambda i: float(c.similarity[i]))[:10]
    lines += ["", "## A sample of merges", "", "| tag | joined | how | cosine |",
              "|---|---|---|---|"]
    for i in sample:
        lines.append(f"| {c.tags[i]} | {c.names[c.cluster[i]]} | {c.how[i]} | "
                     f"{c.similarity[i]:.3f} |")
    lines += ["", "## The weakest merges", "", "| tag | joined | how | cosine |",
              "|---|---|---|---|"]
    for i in weakest:
        lines.append(f"| {c.tags[i]} | {c.names[c.cluster[i]]} | {c.how[i]} | "
                     f"{c.similarity[i]:.3f} |")
    return "\n".join(lines) + "\n"


def build_tag_clusters(out_dir: Path, tag_lists: Iterable[Sequence[str]], encoder: str,
                       cache_dir: Path, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Write tags.json, tag_leaders.npy and tags.md into `out_dir`; return facts for the
    manifest."""
    counts = tag_counts(tag_lists)
    tags = rule_order(counts)
    c, vectors, vocab, encoded = cluster_catalogue(tags, encoder, cache_dir, threshold)
    doc = clusters_document(c, counts, threshold, encoder, vocab)
    out_dir = Path(out_dir)
    (out_dir / TAGS_FILE).write_text(json.dumps(doc, ensure_ascii=False))
    leaders = vectors[c.leader_rows] if c.leader_rows else np.zeros((0, vectors.shape[1]))
    np.save(out_dir / LEADERS_FILE, leaders.astype(np.float32))
    (out_dir / "tags.md").write_text(report_markdown(doc, c, counts))
    return {**summary(doc), "encoder": encoder, "texts_encoded": encoded}


def cluster_catalogue(tags: list[str], encoder: str, cache_dir: Path,
                      threshold: float = DEFAULT_THRESHOLD,
                      ) -> tuple[Clustering, np.ndarray, dict[str, int], int]:
    """Tags in rule order -> (clustering, canonical-text vectors, vocabulary, texts encoded)."""
    vocab = vocabulary(tags)
    vectors, encoded = embed_texts([canonical(t, vocab) for t in tags], encoder, cache_dir)
    return cluster_tags(tags, vectors, threshold, vocab), vectors, vocab, encoded


def add_to_bundle(bundle_dir: Path, encoder: str, cache_dir: Path,
                  threshold: float = DEFAULT_THRESHOLD, candidates_tags: int = 50) -> dict:
    """`vidrec tags BUNDLE`: (re)write the tag clusters of an existing bundle from its
    items.json, record them in its manifest (facts and file hashes) and refresh the
    `tag_clusters` line of its metrics.json, as a build would have."""
    from offline.tag_eval import metrics_line
    from shared.data.download import sha256
    from shared.tags import TagClusters

    bundle_dir = Path(bundle_dir)
    items = json.loads((bundle_dir / "items.json").read_text())
    facts = build_tag_clusters(bundle_dir, (it.get("tags") or [] for it in items), encoder,
                               cache_dir, threshold)
    metrics_path = bundle_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        users = json.loads((bundle_dir / "users.json").read_text())
        metrics["tag_clusters"] = metrics_line(items, users, TagClusters.load(bundle_dir),
                                               candidates_tags)
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tag_clusters"] = facts
    files = manifest.setdefault("files", {})
    for name in (TAGS_FILE, LEADERS_FILE, "tags.md", "metrics.json"):
        files[name] = sha256(bundle_dir / name)
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return facts
