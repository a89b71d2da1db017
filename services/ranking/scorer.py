"""`OnnxRanker`: a bundle's ranker.onnx in an onnxruntime session, scoring many users per call.

ranker.onnx is the candidate ranker (shared/onnx_graphs.py CANDIDATE_RANKER: it also reads
per-candidate features, built here by shared/ranker_features.py from exactly what is packed,
and answers its attention over the history), or in a bundle without one the tower's score
(RANKER): `info.kind` says which.

At start-up the model's declared inputs and outputs are checked against what `batch.pack`
feeds (names, ranks, dtypes, the content dim E of content_embeddings.npy, max_history and the
dims in model.json); any disagreement raises `ModelSchemaMismatch` naming it, so a wrong
bundle never starts serving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.ranking.batch import ItemTable, ModelInputs, pack, plan_batches
from services.ranking.errors import ModelSchemaMismatch, RankerLoadError, ScoreCountMismatch
from shared.bundle import (
    FIRST_ITEM_INDEX,
    PAD_INDEX,
    UNKNOWN_INDEX,
    Bundle,
    BundleError,
    files_bytes,
)
from shared.onnx_graphs import CANDIDATE_RANKER, RANKER, Graph, GraphMismatch, Session
from shared.onnx_session import SessionLoadError, make_session
from shared.ranker_features import NUM_FEATURES, SOURCES, STATS_FILE, ItemStats, union_ranks
from shared.ranker_features import build as build_features
from shared.settings import Settings
from shared.steps import Steps, finish
from shared.transitions import TRANSITIONS_FILE

log = logging.getLogger(__name__)

RANKER_FILE = RANKER.file
OUTPUT_NAME = RANKER.output_names[0]
# Padded cells (users x candidates) per model run; bigger requests run in several batches so
# that one request of 256 users x 5000 candidates cannot allocate gigabytes of inputs.
MAX_BATCH_CELLS = 16_384
SOURCE_INDEX = {name: i for i, name in enumerate(SOURCES)}


@dataclass(frozen=True)
class RankerInfo:
    version: str
    provider: str
    intra_threads: int
    inter_threads: int
    content_dim: int
    max_history: int
    items: int
    kind: str = "tower"  # "candidate": the candidate-aware ranker; "tower": its score only


def graph_of(session: Session) -> Graph:
    """CANDIDATE_RANKER when the graph reads candidate features, else RANKER (the tower)."""
    names = {a.name for a in session.get_inputs()}
    return CANDIDATE_RANKER if "cand_features" in names else RANKER


def check_io(session: Session, *, content_dim: int, max_history: int) -> None:
    """Raise ModelSchemaMismatch listing every way the model's I/O differs from its spec
    (shared/onnx_graphs.py: CANDIDATE_RANKER or RANKER).

    Axes the scorer varies per call (B, C) must be dynamic; L may be dynamic or exactly
    max_history (histories are then padded to it); E must match the content embeddings.
    """
    graph = graph_of(session)
    try:
        graph.check(session, fixed={"E": content_dim, "L": max_history, "F": NUM_FEATURES})
    except GraphMismatch as exc:
        hint = ("; the candidate ranker's features (shared/ranker_features.py) change between "
                "vidrec versions: rebuild the bundle with this one" if graph is CANDIDATE_RANKER
                else "")
        raise ModelSchemaMismatch(f"{exc}{hint}") from None


def check_model_json(info: Mapping[str, Any], *, items: int, content_dim: int,
                     item_dim: int) -> int:
    """Return max_history from model.json after checking its facts against the bundle's arrays
    and the index convention this scorer uses (docs/bundle.md)."""
    problems: list[str] = []
    given = info.get("max_history")
    max_history = given if isinstance(given, int) else 0
    if max_history < 1:
        problems.append(f"model.json max_history is {given!r}, expected an int >= 1")
    # D of item_vectors.npy: `vector_dim` (model dim + a bias dimension), or `dim` without one
    d_key = "vector_dim" if "vector_dim" in info else "dim"
    expected = {"content_dim": (content_dim, "content_embeddings.npy"),
                d_key: (item_dim, "item_vectors.npy"), "num_items": (items, "items.json"),
                "pad_index": (PAD_INDEX, "the scorer"),
                "unknown_index": (UNKNOWN_INDEX, "the scorer"),
                "first_item_index": (FIRST_ITEM_INDEX, "the scorer")}
    for key, (actual, source) in expected.items():
        if key in info and info[key] != actual:
            problems.append(f"model.json {key}={info[key]!r} but {source} has {actual}")
    for key in ("content_dim", d_key):
        if key not in info:
            problems.append(f"model.json has no {key!r}")
    graph = (info.get("graphs") or {}).get(RANKER_FILE)
    if graph is not None:
        spec = CANDIDATE_RANKER if "cand_features" in graph.get("inputs", []) else RANKER
        if list(graph.get("inputs", [])) != spec.input_names:
            problems.append(f"model.json lists {RANKER_FILE} inputs {graph.get('inputs')}, "
                            f"the scorer feeds {spec.input_names}")
        if list(graph.get("outputs", [])) != spec.output_names:
            problems.append(f"model.json lists {RANKER_FILE} outputs {graph.get('outputs')}, "
                            f"the scorer reads {spec.output_names}")
    if problems:
        raise ModelSchemaMismatch("; ".join(problems))
    return max_history


class OnnxRanker:
    """Scores candidate lists of one or many users with one bundle's ranker.onnx."""

    def __init__(self, bundle: Bundle, settings: Settings) -> None:
        self.version = bundle.version
        self.bundle = bundle
        try:
            # memory-mapped, copied once into the table; items.json streamed (1M items: the
            # cached list of dicts and a second float32 copy made ranking 4.3 GB resident)
            content = np.load(bundle.file("content_embeddings.npy"), mmap_mode="r")
            item_dim = int(np.load(bundle.file("item_vectors.npy"), mmap_mode="r").shape[1])
            item_ids = [it["item_id"] for it in bundle.iter_items()]
            model_path = bundle.file(RANKER_FILE)
            model_info = bundle.model_info
        except (BundleError, OSError, ValueError, KeyError) as exc:
            raise RankerLoadError(f"bundle {bundle.path}: {exc}") from exc
        try:
            self.table = ItemTable(item_ids, content)
        except ValueError as exc:
            raise ModelSchemaMismatch(f"bundle {bundle.path}: {exc}") from exc
        try:
            self.max_history = check_model_json(model_info, items=len(self.table),
                                                content_dim=self.table.dim, item_dim=item_dim)
        except ModelSchemaMismatch as exc:
            raise ModelSchemaMismatch(f"bundle {bundle.path}: {exc}") from None
        try:
            self.session = make_session(model_path, settings)
        except SessionLoadError as exc:
            raise RankerLoadError(str(exc)) from exc
        self.graph = graph_of(self.session)
        del content  # the table holds the rows: the statistics share them, no second copy
        self.stats = self._candidate_stats(bundle, self.table.content[:len(self.table)])
        try:
            check_io(self.session, content_dim=self.table.dim, max_history=self.max_history)
        except ModelSchemaMismatch as exc:
            raise ModelSchemaMismatch(f"{model_path}: {exc}") from None
        hist_axis = next(a.shape for a in self.session.get_inputs() if a.name == "hist_ids")
        self.history_width = hist_axis[1] if isinstance(hist_axis[1], int) else None
        self.info = RankerInfo(
            version=self.version, provider=self.session.get_providers()[0],
            intra_threads=settings.ort_intra_threads, inter_threads=settings.ort_inter_threads,
            content_dim=self.table.dim, max_history=self.max_history, items=len(self.table),
            kind="candidate" if self.stats is not None else "tower")
        self._smoke_test(item_ids)

    def _candidate_stats(self, bundle: Bundle, content: np.ndarray) -> ItemStats | None:
        """The feature statistics of a candidate ranker (None: ranker.onnx is the tower)."""
        if self.graph is not CANDIDATE_RANKER:
            return None
        try:
            return ItemStats.of_bundle(bundle.path, content)
        except (BundleError, OSError, ValueError, KeyError) as exc:
            raise RankerLoadError(f"bundle {bundle.path}: its ranker reads candidate features "
                                  f"but {STATS_FILE} or {TRANSITIONS_FILE} is not usable: {exc} "
                                  "(a bundle built by "
                                  "another vidrec version: rebuild it with this one)") from exc

    @classmethod
    def open(cls, settings: Settings, version: str | None = None) -> OnnxRanker:
        try:
            bundle = Bundle.open(settings.artifacts_dir, version or settings.bundle)
        except BundleError as exc:
            raise RankerLoadError(str(exc)) from exc
        return cls(bundle, settings)

    def memory_bytes(self) -> int:
        """Roughly what this model costs in memory: the content table and the ONNX graph."""
        return int(self.table.content.nbytes + files_bytes(self.bundle, [RANKER_FILE]))

    def _smoke_test(self, item_ids: list[str]) -> None:
        """Run once on real items: catches shape errors the declared I/O hides, warms up."""
        sample = item_ids[:3]
        try:
            scores = self.score([sample[:1], []], [sample, sample[1:]])
        except Exception as exc:
            raise ModelSchemaMismatch(f"{self.version}: trial run failed: {exc}") from exc
        if not all(np.isfinite(s).all() for s in scores):
            raise ModelSchemaMismatch(f"{self.version}: trial run gave non-finite scores")

    def unknown_items(self, histories: Sequence[Sequence[str]],
                      candidates: Sequence[Sequence[str]]) -> list[str]:
        """Ids the bundle does not hold (items upserted while serving), each once."""
        seen: dict[str, None] = {}
        for ids in (*histories, *candidates):
            seen.update(dict.fromkeys(self.table.unknown(ids)))
        return list(seen)

    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
              new_content: Mapping[str, np.ndarray] | None = None,
              sources: Sequence[Sequence[tuple[str, float]] | None] | None = None,
              ) -> list[np.ndarray]:
        """One float32 score array per user, one score per candidate in the given order."""
        return [s.scores for s in self.score_full(histories, candidates, new_content, sources)]

    def score_full(self, histories: Sequence[Sequence[str]],
                   candidates: Sequence[Sequence[str]],
                   new_content: Mapping[str, np.ndarray] | None = None,
                   sources: Sequence[Sequence[tuple[str, float]] | None] | None = None,
                   with_features: bool = False) -> list[Scored]:
        """`score_steps` run through at once."""
        return finish(self.score_steps(histories, candidates, new_content, sources,
                                       with_features))

    def score_steps(self, histories: Sequence[Sequence[str]],
                    candidates: Sequence[Sequence[str]],
                    new_content: Mapping[str, np.ndarray] | None = None,
                    sources: Sequence[Sequence[tuple[str, float]] | None] | None = None,
                    with_features: bool = False) -> Steps[list[Scored]]:
        """Scores per user, and from a candidate ranker also the history item each candidate
        attended to most and (with_features) the features it was given.

        `new_content` gives content embeddings of items not in the bundle; without one such an
        item is scored on the model's unknown-item embedding and a zero content row.
        `sources` gives per user (source, source score) per candidate, in retrieval's union
        order (the candidate ranker's source features); None: unknown.

        In steps (shared/steps.py): a pause before each run of the model, between building its
        inputs and running it (each about half of a request's scoring), so that an event loop
        scoring in process can read its sockets in between.
        """
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories for {len(candidates)} candidate lists")
        lengths = [len(c) for c in candidates]
        out = [Scored(np.empty(0, dtype=np.float32)) for _ in candidates]
        for users in plan_batches(lengths, MAX_BATCH_CELLS):
            inputs = pack(self.table, [histories[u] for u in users],
                          [candidates[u] for u in users], self.max_history, new_content,
                          self.history_width)
            if self.stats is None:
                yield
                scores = self.run(inputs)
                for row, u in enumerate(users):
                    out[u] = Scored(scores[row, : lengths[u]])
                continue
            feats = np.zeros((*inputs.cand_ids.shape, NUM_FEATURES), np.float32)
            for row, u in enumerate(users):
                feats[row, :lengths[u]] = candidate_features(
                    self.stats, inputs, row, lengths[u], sources[u] if sources else None)
            yield
            scores, attention = self.run_candidate(inputs, feats)
            top = attention.argmax(axis=-1)  # [B, C] history position
            ids = self.table.item_ids
            for row, u in enumerate(users):
                # the model index at each candidate's most-attended position, gathered by numpy
                # (indexing the array per candidate cost ~2 us each)
                at = inputs.hist_ids[row][top[row, : lengths[u]]].tolist()
                attended = [ids[h - FIRST_ITEM_INDEX] if h >= FIRST_ITEM_INDEX else None
                            for h in at]
                out[u] = Scored(scores[row, : lengths[u]], attended,
                                feats[row, :lengths[u]] if with_features else None)
        return out

    def run(self, inputs: ModelInputs) -> np.ndarray:
        """The model on packed inputs; a result that is not [B, C] is a typed failure."""
        scores = RANKER.run(self.session, **inputs.feeds())[OUTPUT_NAME]
        if scores.shape != inputs.cand_ids.shape:
            raise ScoreCountMismatch(f"ranker {self.version} returned scores of shape "
                                     f"{scores.shape} for candidates {inputs.cand_ids.shape}")
        return scores

    def run_candidate(self, inputs: ModelInputs, feats: np.ndarray,
                      ) -> tuple[np.ndarray, np.ndarray]:
        out = CANDIDATE_RANKER.run(self.session, **inputs.feeds(), cand_features=feats)
        scores, attention = out["scores"], out["attention"]
        if scores.shape != inputs.cand_ids.shape:
            raise ScoreCountMismatch(f"ranker {self.version} returned scores of shape "
                                     f"{scores.shape} for candidates {inputs.cand_ids.shape}")
        return scores, attention


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray                        # float32 [C]
    attended: list[str | None] | None = None  # per candidate: most-attended history item
    features: np.ndarray | None = None        # float32 [C, F] (asked for only)


def candidate_features(stats: ItemStats, inputs: ModelInputs, row: int, n: int,
                       sources: Sequence[tuple[str, float]] | None) -> np.ndarray:
    """shared/ranker_features.py for one packed user: exactly the history and candidates the
    model reads (newest max_history known items; unknown candidates by their content)."""
    hist = inputs.hist_ids[row]
    hist_rows = hist[hist >= FIRST_ITEM_INDEX] - FIRST_ITEM_INDEX
    ids = inputs.cand_ids[row, :n]
    rows = np.where(ids >= FIRST_ITEM_INDEX, ids - FIRST_ITEM_INDEX, -1)
    if sources:
        src = np.fromiter((SOURCE_INDEX.get(s, -1) for s, _ in sources), np.int64, n)
        score = np.fromiter((sc for _, sc in sources), np.float32, n)
    else:
        src, score = np.full(n, -1, np.int64), np.zeros(n, np.float32)
    return build_features(stats, hist_rows, rows, src, union_ranks(src.tolist()), score,
                          inputs.cand_content[row, :n])
