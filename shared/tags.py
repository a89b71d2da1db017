"""Tag clusters: tags that mean the same thing (`king glory`, `kingglory`, `king of glory`) share
one cluster, named after its most used tag. The offline build (offline/tag_clusters.py) writes
them into the bundle; serving reads them here without torch.

The rule, used by the build and by serving alike (docs/tags.md), visits tags most used first.
Each tag first gets a canonical text (`canonical`): its words in lower case, filler words
(`of`, `video`, ...) dropped, simple plurals made singular, and a single run-together word split
into two words the catalogue uses elsewhere (`kinghonor` -> `king honor`). Then:

1. a tag whose squashed form (the canonical words without spaces: `King of Glory`,
   `kingglory` -> `kingglory`; `funny videos` -> `funny`) equals an earlier tag's joins that
   tag's cluster;
2. otherwise the embedding of its canonical text joins the cluster of the nearest *leader*
   (the first tag of a cluster) when their cosine similarity is at least `threshold`;
3. otherwise it leads a new cluster.

A tag only ever compares with leaders, so clusters cannot drift along chains of near
neighbours (`funny` -> `funny cat` -> `cat`). A tag first seen while serving (an upserted item)
is "the next tag" of the same rule: squashed match, else nearest leader, else its own cluster.

A cluster's key everywhere (tag profile fields, the tag source, explanations) is its name, the
leader tag, so a bundle without tags.json (`TagClusters.identity()`) serves exactly as before:
every tag is its own cluster.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

TAGS_FILE = "tags.json"
LEADERS_FILE = "tag_leaders.npy"
TAGS_FORMAT = 1
DEFAULT_THRESHOLD = 0.75  # chosen by measurement: docs/tags.md
INTEREST_THRESHOLD = 0.6  # a free-text interest reaches clusters at least this similar
INTEREST_CLUSTERS = 3     # ... and at most this many of them
MAX_REMEMBERED = 100_000  # tags first seen while serving, kept in memory per bundle


class TagsFileError(ValueError):
    """tags.json is malformed; the message names the file and the problem."""


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


# Words that do not change what a tag is about on a video platform. Kept short on purpose:
# every word here makes two tags the same whatever the encoder says.
FILLER = frozenset({"a", "an", "the", "of", "video", "videos", "clip", "clips"})
NOT_PLURAL = frozenset({"news", "series", "species", "physics", "politics", "mathematics",
                        "economics", "gymnastics", "athletics", "lens"})
MIN_SPLIT_PART = 3
_WORD = re.compile(r"\w+")


def singular(word: str) -> str:
    """`games` -> `game`, `kings` -> `king`; leaves `class`, `virus`, `this`, `yes`, `news`
    alone."""
    if (len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is"))
            and word not in NOT_PLURAL):
        return word[:-1]
    return word


def words(tag: str) -> list[str]:
    """The tag's words, lower case, filler dropped (unless nothing else is left), singular."""
    found = _WORD.findall(tag.lower())
    kept = [w for w in found if w not in FILLER] or found
    return [singular(w) for w in kept]


def split_word(word: str, vocabulary: Mapping[str, int]) -> list[str]:
    """A run-together word as two words the catalogue uses more often on their own
    (`kinghonor` -> `king honor`), the longest first part winning; unchanged when no split is
    found. `vocabulary`: word -> multi-word tags using it."""
    if len(word) < 2 * MIN_SPLIT_PART:
        return [word]
    own = vocabulary.get(word, 0)
    for cut in range(len(word) - MIN_SPLIT_PART, MIN_SPLIT_PART - 1, -1):
        head, tail = singular(word[:cut]), singular(word[cut:])
        if min(vocabulary.get(head, 0), vocabulary.get(tail, 0)) > own:
            return [head, tail]
    return [word]


def canonical(tag: str, vocabulary: Mapping[str, int] | None = None) -> str:
    """The text a tag is embedded as: `Kings of Glory` -> `king glory`, `kingglory hot` ->
    `king glory hot`."""
    ws = words(tag)
    if vocabulary:
        ws = [part for w in ws for part in split_word(w, vocabulary)]
    return " ".join(ws)


def squash(tag: str, vocabulary: Mapping[str, int] | None = None) -> str:
    """The canonical text without spaces: the strongest same-tag signal (`king glory`,
    `kingglory`, `king of glory` -> `kingglory`)."""
    return canonical(tag, vocabulary).replace(" ", "")


def vocabulary(tags: Iterable[str]) -> dict[str, int]:
    """Words that appear in at least two multi-word tags, with how many: the parts
    `split_word` may use."""
    seen: dict[str, int] = {}
    for tag in tags:
        ws = words(tag)
        if len(ws) > 1:
            for w in set(ws):
                seen[w] = seen.get(w, 0) + 1
    return {w: n for w, n in sorted(seen.items()) if n >= 2 and len(w) >= MIN_SPLIT_PART}


def nearest_leader(vector: np.ndarray, leaders: np.ndarray) -> tuple[int, float]:
    """(row, cosine) of the leader nearest a unit vector; (-1, -inf) when there is none."""
    if not len(leaders):
        return -1, float("-inf")
    sims = leaders @ vector
    row = int(np.argmax(sims))
    return row, float(sims[row])


@dataclass
class TagClusters:
    cluster_of: dict[str, str]            # known tag -> cluster name
    names: list[str]                      # cluster names, row i of `leaders`
    leaders: np.ndarray                   # float32 [clusters, E] unit leader embeddings
    threshold: float = DEFAULT_THRESHOLD
    vocabulary: dict[str, int] = field(default_factory=dict)
    by_squash: dict[str, str] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    _interests: dict[str, list[tuple[str, float]]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.by_squash:
            for tag, cluster in self.cluster_of.items():
                self.by_squash.setdefault(squash(tag, self.vocabulary), cluster)
        if not self.members:
            for tag, cluster in self.cluster_of.items():
                self.members.setdefault(cluster, []).append(tag)

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def identity(cls) -> TagClusters:
        """No clusters: every tag is its own (a bundle without tags.json)."""
        return cls({}, [], np.zeros((0, 0), np.float32))

    @property
    def enabled(self) -> bool:
        return bool(self.names)

    @classmethod
    def load(cls, bundle_dir: Path | str) -> TagClusters:
        """The bundle's clusters; identity() when it has no tags.json."""
        bundle_dir = Path(bundle_dir)
        path = bundle_dir / TAGS_FILE
        if not path.is_file():
            return cls.identity()
        try:
            doc = json.loads(path.read_text())
            names = [c["name"] for c in doc["clusters"]]
            cluster_of = {tag: names[cid] for tag, cid in doc["tags"].items()}
            threshold = float(doc["threshold"])
            vocab = {str(w): int(n) for w, n in doc.get("words", {}).items()}
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise TagsFileError(f"{path}: not a tag cluster file ({exc!r})") from exc
        leaders_path = bundle_dir / LEADERS_FILE
        leaders = (np.load(leaders_path).astype(np.float32) if leaders_path.is_file()
                   else np.zeros((0, 0), np.float32))
        if len(leaders) and len(leaders) != len(names):
            raise TagsFileError(f"{leaders_path}: {len(leaders)} rows for {len(names)} clusters")
        return cls(cluster_of, names, leaders, threshold, vocab)

    # ---- lookups (no encoder) -----------------------------------------------------------
    def of(self, tag: str) -> str | None:
        """The cluster of a tag the bundle (or an earlier `assign`) knows, else None."""
        if not self.names:
            return tag
        cluster = self.cluster_of.get(tag)
        if cluster is None:
            cluster = self.by_squash.get(squash(tag, self.vocabulary))
        return cluster

    def name(self, tag: str) -> str:
        """The cluster of a known tag, else the tag itself (its own cluster)."""
        return self.of(tag) or tag

    def clusters(self, tags: Iterable[str]) -> list[str]:
        """Clusters of an item's tags, first appearance order, each once."""
        return list(dict.fromkeys(self.name(t) for t in tags))

    # ---- with the text encoder ----------------------------------------------------------
    def assign(self, tags: Iterable[str], encoder: Encoder | None) -> list[str]:
        """Clusters of an upserted item's tags: unknown tags are embedded and join the nearest
        leader (or become their own cluster), and are remembered so every later request and
        event agrees. Without an encoder an unknown tag is its own cluster."""
        tags = list(tags)
        unknown = [t for t in dict.fromkeys(tags) if self.of(t) is None]
        if unknown and encoder is not None and len(self.leaders):
            vectors = encoder.encode([canonical(t, self.vocabulary) for t in unknown])
            with self._lock:
                for tag, vec in zip(unknown, vectors, strict=True):
                    self._remember(tag, self._nearest_name(vec) or tag)
        return self.clusters(tags)

    def _nearest_name(self, vector: np.ndarray) -> str | None:
        row, sim = nearest_leader(vector, self.leaders)
        return self.names[row] if row >= 0 and sim >= self.threshold else None

    def _remember(self, tag: str, cluster: str) -> None:
        if len(self.cluster_of) < MAX_REMEMBERED + len(self.names) * 4:
            self.cluster_of[tag] = cluster
            self.by_squash.setdefault(squash(tag, self.vocabulary), cluster)

    def resolve(self, text: str, encoder: Encoder | None) -> list[tuple[str, float]]:
        """What a stated interest means: a known tag -> its cluster (similarity 1); otherwise,
        with an encoder, the nearest clusters at least INTEREST_THRESHOLD similar (up to
        INTEREST_CLUSTERS, best first), so "football" finds `soccer`; else nothing."""
        known = self.of(text)
        if known is not None:
            return [(known, 1.0)]
        if encoder is None or not len(self.leaders):
            return []
        cached = self._interests.get(text)
        if cached is not None:
            return cached
        sims = self.leaders @ encoder.encode([canonical(text, self.vocabulary)])[0]
        top = np.argsort(-sims, kind="stable")[:INTEREST_CLUSTERS]
        found = [(self.names[r], float(sims[r])) for r in top.tolist()
                 if sims[r] >= INTEREST_THRESHOLD]
        if len(self._interests) >= MAX_REMEMBERED:  # free text is unbounded: start over
            self._interests.clear()
        self._interests[text] = found
        return found
