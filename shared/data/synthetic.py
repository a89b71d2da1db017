"""Synthetic workloads in the custom folder format (shared/data/custom.py), at any size, with
the shape of MicroLens-50k.

    vidrec data synth OUT --items 1000000 --users 1000000 [--seed 7]
    .venv/bin/python -m bench.synthetic fit     # fit, compare, write bench/results/synthetic_fit.*

`fit` reads MicroLens-50k and fits (with scipy) the distributions a catalogue's cost depends on:

- item popularity: interactions per item, a log-normal (every item gets a weight drawn from it;
  users pick items with probability proportional to the weight);
- history length: interactions per user, a log-normal shifted to the dataset's minimum
  (MicroLens keeps users with at least 5 items), rounded down;
- tags per item: the real distribution of `#hashtag` counts per title, as it is (a Poisson fit
  was tried: its spread is too wide, KS distance 0.16 against 0.01 for the empirical one);
- tag frequency: a Zipf law over the tag vocabulary (maximum likelihood for the exponent), and
  how the vocabulary grows with the catalogue (Heaps' law, V = K * n^beta, least squares);
- title length in words: a log-normal.

`write` draws a dataset from those parameters: `items.csv` (ids, titles of synthetic words,
tags), `interactions.csv` (user, item, unix seconds) and `embeddings.npy` (float32, L2-normalised,
384 dims: the mean of the item's tag directions plus noise, so items that share tags are close,
as with a real text encoder, and a million items need no text encoding). Each user has one
favourite tag (drawn by tag frequency); half of a user's items come from that tag, by
popularity, the rest from the whole catalogue, so the data has something to learn. Everything is
drawn from one numpy Generator seeded by `--seed`: the same arguments write the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, sparse, stats

from shared.data.types import Dataset

EMBED_DIM = 384
TOPIC_SHARE = 0.5       # share of a user's items drawn from their favourite tag
TAG_NOISE = 0.6         # noise scale of an item's embedding around its tags' mean direction
EPOCH = 1_700_000_000   # timestamps start here (unix seconds), one minute per interaction
_WORDS = ("the", "a", "my", "funny", "cat", "dog", "game", "food", "dance", "music", "day",
          "life", "new", "best", "super", "hot", "really", "when", "you", "see", "ending",
          "king", "glory", "cute", "baby", "home", "summer", "night", "city", "road", "trip",
          "make", "cook", "learn", "play", "win", "lose", "love", "story", "old", "young",
          "world", "team", "show", "live", "first", "last", "every", "time", "how", "why")


@dataclass
class Fit:
    """The fitted parameters (scipy's parameterisations) and the real dataset's sizes."""

    source: str
    items: int
    users: int
    interactions: int
    # popularity: interactions per item ~ lognorm(s, scale) (loc 0)
    popularity_s: float
    popularity_scale: float
    # history length: floor(min_len + lognorm(s, scale))
    history_min: int
    history_s: float
    history_scale: float
    history_mean: float
    # tags per item ~ categorical(tags_pmf) over 0..len(tags_pmf)-1
    tags_mu: float
    tags_pmf: list[float]
    # tag frequency by rank ~ Zipf(a) over `vocab` tags; vocabulary = heaps_k * items^heaps_beta
    zipf_a: float
    vocab: int
    heaps_k: float
    heaps_beta: float
    # title words ~ max(1, round(lognorm(s, scale)))
    title_s: float
    title_scale: float

    def vocab_for(self, n_items: int) -> int:
        return max(1, int(round(self.heaps_k * n_items ** self.heaps_beta)))

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Fit:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__})


# ---- fitting -----------------------------------------------------------------------------
def observed(ds: Dataset) -> dict[str, np.ndarray]:
    """The per-item, per-user and per-tag counts of a Dataset that the fit works on."""
    pop = Counter(i for seq in ds.sequences.values() for i in seq)
    tag_freq = Counter(t for it in ds.items for t in it.tags)
    return {
        "popularity": np.array([pop.get(it.item_id, 0) for it in ds.items], np.int64),
        "history": np.array([len(s) for s in ds.sequences.values()], np.int64),
        "tags_per_item": np.array([len(it.tags) for it in ds.items], np.int64),
        "tag_freq": np.array(sorted(tag_freq.values(), reverse=True), np.int64),
        "title_words": np.array([max(1, len(it.title.split())) for it in ds.items], np.int64),
    }


def zipf_exponent(freq_by_rank: np.ndarray) -> float:
    """Maximum-likelihood exponent of a finite Zipf law (ranks 1..V) for observed counts.

    scipy has the distribution (stats.zipfian) but its generic fit over a discrete family is
    slow and needs bounds; the likelihood itself is one line, so it is maximised directly."""
    freq = np.asarray(freq_by_rank, np.float64)
    ranks = np.arange(1, len(freq) + 1, dtype=np.float64)
    log_r = np.log(ranks)
    total, weighted = freq.sum(), float((freq * log_r).sum())

    def nll(a: float) -> float:
        return float(a * weighted + total * math.log(np.exp(-a * log_r).sum()))

    return float(optimize.minimize_scalar(nll, bounds=(0.01, 5.0), method="bounded").x)


def heaps(items_tags: list[tuple[str, ...]], seed: int = 0) -> tuple[float, float]:
    """Fit V(n) = K * n^beta: distinct tags among the first n items of a random order."""
    order = np.random.default_rng(seed).permutation(len(items_tags))
    sizes = np.unique(np.geomspace(200, len(items_tags), 12).astype(int))
    seen: set[str] = set()
    vocab, done = [], 0
    for n in sizes:
        for k in order[done:n]:
            seen.update(items_tags[k])
        done = n
        vocab.append(len(seen))
    (k, beta), _ = optimize.curve_fit(lambda n, k, b: k * np.power(n, b), sizes.astype(float),
                                      np.array(vocab, float), p0=(1.0, 0.8), maxfev=10_000)
    return float(k), float(beta)


def fit(ds: Dataset) -> Fit:
    obs = observed(ds)
    pop = obs["popularity"]
    pop_s, _, pop_scale = stats.lognorm.fit(pop[pop > 0], floc=0)
    hist = obs["history"]
    h_min = int(hist.min())
    # shifted so the smallest history maps to (0, 1]: floor(min + X), X > 0
    h_s, _, h_scale = stats.lognorm.fit(hist - h_min + 0.5, floc=0)
    tags = obs["tags_per_item"]
    title_s, _, title_scale = stats.lognorm.fit(obs["title_words"], floc=0)
    k, beta = heaps([it.tags for it in ds.items])
    return Fit(source=ds.name, items=len(ds.items), users=len(ds.sequences),
               interactions=int(hist.sum()),
               popularity_s=float(pop_s), popularity_scale=float(pop_scale),
               history_min=h_min, history_s=float(h_s), history_scale=float(h_scale),
               history_mean=float(hist.mean()),
               tags_mu=float(tags.mean()),
               tags_pmf=[round(float(p), 6) for p in np.bincount(tags) / len(tags)],
               zipf_a=zipf_exponent(obs["tag_freq"]), vocab=len(obs["tag_freq"]),
               heaps_k=k, heaps_beta=beta,
               title_s=float(title_s), title_scale=float(title_scale))


def fit_microlens(data_dir: Path | str | None = None) -> tuple[Fit, object]:
    from shared.data import load_dataset
    from shared.settings import Settings

    ds = load_dataset("microlens-50k", Path(data_dir or Settings().data_dir))
    return fit(ds), ds


# ---- generating --------------------------------------------------------------------------
@dataclass
class Synthetic:
    """A drawn dataset in arrays (the writer turns it into the custom folder format)."""

    item_ids: list[str]
    titles: list[str]
    item_tags: list[list[int]]       # tag numbers per item
    tag_names: list[str]
    user_items: np.ndarray           # int64 [interactions]: item row, users' histories in order
    user_offsets: np.ndarray         # int64 [users + 1]: user u's items are [off[u], off[u+1])


def generate(params: Fit, n_items: int, n_users: int, seed: int) -> Synthetic:
    rng = np.random.default_rng(seed)
    vocab = params.vocab_for(n_items)
    tag_p = 1.0 / np.arange(1, vocab + 1) ** params.zipf_a
    tag_p /= tag_p.sum()
    # tags per item, then which tags (by Zipf frequency, without repeats within an item)
    pmf = np.asarray(params.tags_pmf, np.float64)
    n_tags = rng.choice(len(pmf), size=n_items, p=pmf / pmf.sum())
    flat = rng.choice(vocab, size=int(n_tags.sum()), p=tag_p)
    starts = np.concatenate([[0], np.cumsum(n_tags)])
    item_tags = [sorted(set(flat[starts[i]:starts[i + 1]].tolist())) for i in range(n_items)]
    weights = stats.lognorm.rvs(params.popularity_s, scale=params.popularity_scale,
                                size=n_items, random_state=rng)
    lengths = params.history_min + np.floor(stats.lognorm.rvs(
        params.history_s, scale=params.history_scale, size=n_users, random_state=rng)
        ).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    user_items = _draw_histories(rng, weights, item_tags, vocab, tag_p, lengths)
    words = np.maximum(1, np.round(stats.lognorm.rvs(
        params.title_s, scale=params.title_scale, size=n_items, random_state=rng))).astype(int)
    wpick = rng.integers(0, len(_WORDS), int(words.sum()))
    wstart = np.concatenate([[0], np.cumsum(words)])
    titles = [" ".join(_WORDS[w] for w in wpick[wstart[i]:wstart[i + 1]]) for i in range(n_items)]
    return Synthetic(item_ids=[str(i + 1) for i in range(n_items)], titles=titles,
                     item_tags=item_tags, tag_names=[f"tag{t}" for t in range(vocab)],
                     user_items=user_items, user_offsets=offsets)


def _draw_histories(rng: np.random.Generator, weights: np.ndarray, item_tags: list[list[int]],
                    vocab: int, tag_p: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Vectorised: each draw is from the user's favourite tag (weighted by popularity) with
    probability TOPIC_SHARE, else from the whole catalogue by popularity."""
    n_users, total = len(lengths), int(lengths.sum())
    # items grouped by tag, one cumulative weight array over the groups
    pairs_t = np.fromiter((t for tags in item_tags for t in tags), np.int64)
    pairs_i = np.repeat(np.arange(len(item_tags)), [len(t) for t in item_tags])
    order = np.argsort(pairs_t, kind="stable")
    by_tag_item, by_tag_tag = pairs_i[order], pairs_t[order]
    cum = np.cumsum(weights[by_tag_item])
    seg_start = np.searchsorted(by_tag_tag, np.arange(vocab), side="left")
    seg_end = np.searchsorted(by_tag_tag, np.arange(vocab), side="right")
    global_cum = np.cumsum(weights)
    # a user's favourite tag must have items; tags nobody carries are redrawn as the top tag
    fav = rng.choice(vocab, size=n_users, p=tag_p)
    fav = np.where(seg_end[fav] > seg_start[fav], fav, int(np.argmax(seg_end - seg_start)))
    fav_per_draw = np.repeat(fav, lengths)
    topical = rng.random(total) < TOPIC_SHARE
    u = rng.random(total)
    out = np.searchsorted(global_cum, u * global_cum[-1], side="right")
    t = fav_per_draw[topical]
    lo = np.where(seg_start[t] > 0, cum[np.maximum(seg_start[t] - 1, 0)], 0.0)
    hi = cum[seg_end[t] - 1]
    pos = np.searchsorted(cum, lo + u[topical] * (hi - lo), side="right")
    out[topical] = by_tag_item[np.minimum(pos, seg_end[t] - 1)]
    drawn: np.ndarray = np.minimum(out, len(weights) - 1).astype(np.int64)
    return drawn


def write(syn: Synthetic, folder: Path, seed: int, chunk: int = 100_000) -> dict[str, Any]:
    """Write items.csv, interactions.csv and embeddings.npy; returns seconds and bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (folder / "items.csv").open("w", encoding="utf-8", newline="") as fh:
        fh.write("item_id,title,tags\n")
        for lo in range(0, len(syn.item_ids), chunk):
            fh.write("".join(
                f"{syn.item_ids[i]},{syn.titles[i]},"
                f"{'|'.join(syn.tag_names[t] for t in syn.item_tags[i])}\n"
                for i in range(lo, min(lo + chunk, len(syn.item_ids)))))
    n_users = len(syn.user_offsets) - 1
    lengths = np.diff(syn.user_offsets)
    with (folder / "interactions.csv").open("w", encoding="utf-8", newline="") as fh:
        fh.write("user_id,item_id,timestamp\n")
        for lo in range(0, n_users, chunk):
            hi = min(lo + chunk, n_users)
            a, b = syn.user_offsets[lo], syn.user_offsets[hi]
            users = np.repeat(np.arange(lo, hi) + 1, lengths[lo:hi])
            pos = np.arange(a, b) - np.repeat(syn.user_offsets[lo:hi], lengths[lo:hi])
            items = syn.user_items[a:b] + 1
            fh.write("".join(f"{u},{i},{EPOCH + 60 * p}\n"
                             for u, i, p in zip(users.tolist(), items.tolist(), pos.tolist(),
                                                strict=True)))
    _write_embeddings(syn, folder / "embeddings.npy", seed, chunk)
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return {"seconds": round(time.perf_counter() - start, 2), "bytes": sizes}


def _write_embeddings(syn: Synthetic, path: Path, seed: int, chunk: int) -> None:
    """Row i = normalise(mean of item i's tag directions + TAG_NOISE * noise), written in
    chunks into a memory-mapped .npy so a million rows never sit in memory twice."""
    rng = np.random.default_rng([seed, 1])
    tag_dirs = rng.standard_normal((len(syn.tag_names), EMBED_DIM)).astype(np.float32)
    tag_dirs /= np.linalg.norm(tag_dirs, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                    shape=(len(syn.item_ids), EMBED_DIM))
    for lo in range(0, len(syn.item_ids), chunk):
        hi = min(lo + chunk, len(syn.item_ids))
        block = rng.standard_normal((hi - lo, EMBED_DIM)).astype(np.float32)
        block *= TAG_NOISE / math.sqrt(EMBED_DIM)
        tags = syn.item_tags[lo:hi]
        counts = np.array([len(t) for t in tags])
        mean_of_tags = sparse.csr_matrix(
            (np.repeat(1.0 / np.maximum(counts, 1), counts).astype(np.float32),
             np.fromiter((t for ts in tags for t in ts), np.int64, int(counts.sum())),
             np.concatenate([[0], np.cumsum(counts)])), shape=(hi - lo, len(tag_dirs)))
        block += mean_of_tags @ tag_dirs
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        out[lo:hi] = block
    out.flush()
    del out


def synth(folder: Path, n_items: int, n_users: int, seed: int = 7,
          params: Fit | None = None, data_dir: Path | str | None = None) -> dict[str, Any]:
    """Fit (unless given), draw and write; also writes `synthetic.json` with the parameters."""
    params = params or fit_microlens(data_dir)[0]
    start = time.perf_counter()
    syn = generate(params, n_items, n_users, seed)
    drawn = time.perf_counter() - start
    facts = write(syn, folder, seed)
    doc = {"items": n_items, "users": n_users, "interactions": int(len(syn.user_items)),
           "tags": len(syn.tag_names), "seed": seed, "fit": params.to_json(),
           "draw_seconds": round(drawn, 2), "write_seconds": facts["seconds"],
           "bytes": facts["bytes"]}
    (Path(folder) / "synthetic.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def synthetic_observed(syn: Synthetic) -> dict[str, np.ndarray]:
    """observed() for a drawn dataset, without writing it."""
    pop = np.bincount(syn.user_items, minlength=len(syn.item_ids))
    tag_freq = np.bincount(np.fromiter((t for ts in syn.item_tags for t in ts), np.int64),
                           minlength=len(syn.tag_names))
    return {"popularity": pop, "history": np.diff(syn.user_offsets),
            "tags_per_item": np.array([len(t) for t in syn.item_tags]),
            "tag_freq": np.sort(tag_freq[tag_freq > 0])[::-1],
            "title_words": np.array([len(t.split()) for t in syn.titles])}


def add_write_args(w: argparse.ArgumentParser) -> None:
    w.add_argument("out", help="folder to write (custom dataset format)")
    w.add_argument("--items", type=int, required=True, help="catalogue size")
    w.add_argument("--users", type=int, required=True, help="number of users")
    w.add_argument("--seed", type=int, default=7)


def run_write(args: argparse.Namespace) -> None:
    if args.items < 1 or args.users < 1:
        raise SystemExit("--items and --users must be at least 1")
    doc = synth(Path(args.out), args.items, args.users, args.seed)
    print(f"wrote {args.out}: {doc['items']} items, {doc['users']} users, "
          f"{doc['interactions']} interactions, {doc['tags']} tags "
          f"(draw {doc['draw_seconds']} s, write {doc['write_seconds']} s)")
