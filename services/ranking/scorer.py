"""`OnnxRanker`: a bundle's ranker.onnx in an onnxruntime session, scoring many users per call.

At start-up the model's declared inputs and outputs are checked against what `batch.pack`
feeds (names, ranks, dtypes, the content dim E of content_embeddings.npy, max_history and the
dims in model.json); any disagreement raises `ModelSchemaMismatch` naming it, so a wrong
bundle never starts serving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

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
from shared.ranker_features import NUM_FEATURES, SOURCES, STATS_FILE, ItemStats, union_ranks
from shared.ranker_features import build as build_features
from shared.settings import Settings

log = logging.getLogger(__name__)

RANKER_FILE = "ranker.onnx"
OUTPUT_NAME = "scores"
ATTENTION_NAME = "attention"  # candidate ranker: each candidate's weights over the history
# name -> (rank, onnx type, symbolic meaning of each axis)
INPUT_SPEC: dict[str, tuple[str, tuple[str, ...]]] = {
    "hist_ids": ("tensor(int64)", ("B", "L")),
    "hist_content": ("tensor(float)", ("B", "L", "E")),
    "cand_ids": ("tensor(int64)", ("B", "C")),
    "cand_content": ("tensor(float)", ("B", "C", "E")),
}
OUTPUT_SPEC: tuple[str, tuple[str, ...]] = ("tensor(float)", ("B", "C"))
# The candidate ranker (offline/ranker_model.py) reads per-candidate features as well and
# also answers its attention; a bundle whose ranker.onnx lacks them serves the tower's score.
FEATURES_SPEC: tuple[str, tuple[str, ...]] = ("tensor(float)", ("B", "C", "F"))
ATTENTION_SPEC: tuple[str, tuple[str, ...]] = ("tensor(float)", ("B", "C", "L"))
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


def check_io(inputs: Sequence[ort.NodeArg], outputs: Sequence[ort.NodeArg], *,
             content_dim: int, max_history: int, num_features: int | None = None) -> None:
    """Raise ModelSchemaMismatch listing every way the model's I/O differs from what we feed.

    Axes the scorer varies per call (B, C) must be dynamic; L may be dynamic or exactly
    max_history (histories are then padded to it); E must match the content embeddings.
    """
    fixed = {"E": content_dim, "L": max_history, "F": num_features}
    spec = dict(INPUT_SPEC)
    out_spec = {OUTPUT_NAME: OUTPUT_SPEC}
    if num_features is not None:
        spec["cand_features"] = FEATURES_SPEC
        out_spec[ATTENTION_NAME] = ATTENTION_SPEC
    problems: list[str] = []

    def check_arg(kind: str, arg: ort.NodeArg, dtype: str, axes: tuple[str, ...]) -> None:
        if arg.type != dtype:
            problems.append(f"{kind} {arg.name!r} has type {arg.type}, expected {dtype}")
        shape = list(arg.shape)
        if len(shape) != len(axes):
            problems.append(f"{kind} {arg.name!r} has rank {len(shape)} ({shape}), "
                            f"expected rank {len(axes)} [{', '.join(axes)}]")
            return
        for axis, (label, dim) in enumerate(zip(axes, shape, strict=True)):
            if not isinstance(dim, int):
                continue  # symbolic or unknown: anything goes
            if label == "L" and kind == "output":
                continue  # attention's history axis follows the batch's padding
            if label in fixed and dim != fixed[label]:
                problems.append(f"{kind} {arg.name!r} axis {axis} ({label}) is {dim}, "
                                f"expected {fixed[label]}")
            elif label not in fixed:
                problems.append(f"{kind} {arg.name!r} axis {axis} ({label}) is fixed at {dim}, "
                                "expected a dynamic axis")

    by_name = {a.name: a for a in inputs}
    missing = sorted(set(spec) - set(by_name))
    unexpected = sorted(set(by_name) - set(spec))
    if missing:
        problems.append(f"missing input(s) {missing}")
    if unexpected:
        problems.append(f"unexpected input(s) {unexpected}")
    for name, (dtype, axes) in spec.items():
        if name in by_name:
            check_arg("input", by_name[name], dtype, axes)

    out_names = [o.name for o in outputs]
    if out_names != list(out_spec):
        problems.append(f"outputs are {out_names}, expected {list(out_spec)}")
    else:
        for out in outputs:
            check_arg("output", out, *out_spec[out.name])
    if problems:
        raise ModelSchemaMismatch("; ".join(problems))


def check_model_json(info: Mapping, *, items: int, content_dim: int, item_dim: int) -> int:
    """Return max_history from model.json after checking its facts against the bundle's arrays
    and the index convention this scorer uses (docs/bundle.md)."""
    problems: list[str] = []
    max_history = info.get("max_history")
    if not isinstance(max_history, int) or max_history < 1:
        problems.append(f"model.json max_history is {max_history!r}, expected an int >= 1")
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
        candidate = "cand_features" in graph.get("inputs", [])
        inputs = [*INPUT_SPEC, "cand_features"] if candidate else list(INPUT_SPEC)
        outputs = [OUTPUT_NAME, ATTENTION_NAME] if candidate else [OUTPUT_NAME]
        if list(graph.get("inputs", [])) != inputs:
            problems.append(f"model.json lists {RANKER_FILE} inputs {graph.get('inputs')}, "
                            f"the scorer feeds {inputs}")
        if list(graph.get("outputs", [])) != outputs:
            problems.append(f"model.json lists {RANKER_FILE} outputs {graph.get('outputs')}, "
                            f"the scorer reads {outputs}")
    if problems:
        raise ModelSchemaMismatch("; ".join(problems))
    return int(max_history)  # type: ignore[arg-type]


def make_session(path: Path, settings: Settings) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = settings.ort_intra_threads
    opts.inter_op_num_threads = settings.ort_inter_threads
    if settings.ort_inter_threads > 1:  # inter-op threads only matter in parallel mode
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    # Sleeping (not spinning) worker threads: in one process retrieval and Redis I/O share the
    # same cores, and spinning threads starve them.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if settings.use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own (untyped) errors
        raise RankerLoadError(f"{path}: onnxruntime cannot load it: {exc}") from exc


class OnnxRanker:
    """Scores candidate lists of one or many users with one bundle's ranker.onnx."""

    def __init__(self, bundle: Bundle, settings: Settings) -> None:
        self.version = bundle.version
        self.bundle = bundle
        try:
            content = np.asarray(bundle.content_embeddings(), dtype=np.float32)
            item_dim = int(np.load(bundle.file("item_vectors.npy"), mmap_mode="r").shape[1])
            item_ids = [it["item_id"] for it in bundle.items]
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
        self.session = make_session(model_path, settings)
        self.stats = self._candidate_stats(bundle, content)
        try:
            check_io(self.session.get_inputs(), self.session.get_outputs(),
                     content_dim=self.table.dim, max_history=self.max_history,
                     num_features=NUM_FEATURES if self.stats is not None else None)
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
        if "cand_features" not in {a.name for a in self.session.get_inputs()}:
            return None
        try:
            return ItemStats.load(bundle.file(STATS_FILE), content)
        except (BundleError, OSError, ValueError, KeyError) as exc:
            raise RankerLoadError(f"bundle {bundle.path}: its ranker reads candidate features "
                                  f"but {STATS_FILE} is not usable: {exc}") from exc

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
        """Scores per user, and from a candidate ranker also the history item each candidate
        attended to most and (with_features) the features it was given.

        `new_content` gives content embeddings of items not in the bundle; without one such an
        item is scored on the model's unknown-item embedding and a zero content row.
        `sources` gives per user (source, source score) per candidate, in retrieval's union
        order (the candidate ranker's source features); None: unknown.
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
                scores = self.run(inputs)
                for row, u in enumerate(users):
                    out[u] = Scored(scores[row, : lengths[u]])
                continue
            feats = np.zeros((*inputs.cand_ids.shape, NUM_FEATURES), np.float32)
            for row, u in enumerate(users):
                feats[row, :lengths[u]] = candidate_features(
                    self.stats, inputs, row, lengths[u], sources[u] if sources else None)
            scores, attention = self.run_candidate(inputs, feats)
            top = attention.argmax(axis=-1)  # [B, C] history position
            for row, u in enumerate(users):
                hist = inputs.hist_ids[row]
                ids = self.table.item_ids
                attended = [ids[hist[p] - FIRST_ITEM_INDEX] if hist[p] >= FIRST_ITEM_INDEX
                            else None for p in top[row, : lengths[u]].tolist()]
                out[u] = Scored(scores[row, : lengths[u]], attended,
                                feats[row, :lengths[u]] if with_features else None)
        return out

    def run(self, inputs: ModelInputs) -> np.ndarray:
        """The model on packed inputs; a result that is not [B, C] is a typed failure."""
        (scores,) = self.session.run([OUTPUT_NAME], inputs.feeds())
        if scores.shape != inputs.cand_ids.shape:
            raise ScoreCountMismatch(f"ranker {self.version} returned scores of shape "
                                     f"{scores.shape} for candidates {inputs.cand_ids.shape}")
        return scores

    def run_candidate(self, inputs: ModelInputs, feats: np.ndarray,
                      ) -> tuple[np.ndarray, np.ndarray]:
        scores, attention = self.session.run([OUTPUT_NAME, ATTENTION_NAME],
                                             {**inputs.feeds(), "cand_features": feats})
        if scores.shape != inputs.cand_ids.shape:
            raise ScoreCountMismatch(f"ranker {self.version} returned scores of shape "
                                     f"{scores.shape} for candidates {inputs.cand_ids.shape}")
        return scores, attention


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray                     # float32 [C]
    attended: list[str | None] | None = None  # per candidate: most-attended history item
    features: np.ndarray | None = None     # float32 [C, F] (asked for only)


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
