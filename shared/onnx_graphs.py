"""The inputs and outputs of every ONNX graph a bundle ships, declared once (no torch here).

Export (offline/export.py, offline/text_encoder_export.py) takes names and dynamic axes from
these specs, the services check a loaded session against them at start-up (`Graph.check`), and
every caller builds its feeds through `Graph.feeds`/`Graph.run` (names and dtypes checked, arrays
made contiguous). Adding a model input means one `Tensor` line here, then the code that fills it.

Axes are letters (docs/bundle.md, "Model inputs"). B (batch), L (history), C (candidates),
N (items) and T (tokens) vary per call: the export makes them dynamic (under the longer names in
DYNAMIC) and `check` refuses a graph that fixes one, unless the caller says what it must be
(a ranker may fix L to max_history). E (content embedding size) and D (item vector size) are
fixed by the bundle, checked against the values the caller passes to `check`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# dynamic axis -> its symbolic name in the exported graphs
DYNAMIC = {"B": "batch", "L": "history", "C": "candidates", "N": "items", "T": "sequence"}
_ONNX_TYPE = {"int64": "tensor(int64)", "float32": "tensor(float)"}


class GraphMismatch(ValueError):
    """A graph's declared inputs/outputs, or the arrays fed to it, differ from its spec."""


class NodeArg(Protocol):  # what onnxruntime's NodeArg offers
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def shape(self) -> Sequence[Any]: ...


class Session(Protocol):  # what onnxruntime's InferenceSession offers that we use
    def get_inputs(self) -> Sequence[NodeArg]: ...
    def get_outputs(self) -> Sequence[NodeArg]: ...
    def run(self, output_names: Sequence[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> Sequence[Any]: ...


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str              # numpy dtype name: "int64" or "float32"
    axes: tuple[str, ...]   # one name per axis

    @property
    def onnx_type(self) -> str:
        return _ONNX_TYPE[self.dtype]


@dataclass(frozen=True)
class Graph:
    file: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    optional_inputs: frozenset[str] = frozenset()  # a graph may leave these out

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """For torch.onnx.export: every tensor's axes that vary per call."""
        return {t.name: {i: DYNAMIC[a] for i, a in enumerate(t.axes) if a in DYNAMIC}
                for t in (*self.inputs, *self.outputs)}

    def feeds(self, arrays: Mapping[str, np.ndarray],
              accepted: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The input feed: exactly the declared inputs (those in `accepted` when given: the
        optional ones a session lacks are left out), each of its dtype and rank."""
        wanted = [t for t in self.inputs if accepted is None or t.name in accepted]
        names = {t.name for t in self.inputs}
        unknown = sorted(set(arrays) - names)
        missing = [t.name for t in wanted if t.name not in arrays]
        if unknown or missing:
            raise GraphMismatch(f"{self.file}: inputs {sorted(arrays)} fed, expected "
                                f"{self.input_names} (missing {missing}, unknown {unknown})")
        out: dict[str, np.ndarray] = {}
        for t in wanted:
            value = np.ascontiguousarray(arrays[t.name], dtype=t.dtype)
            if value.ndim != len(t.axes):
                raise GraphMismatch(f"{self.file}: input {t.name!r} has rank {value.ndim}, "
                                    f"expected {len(t.axes)} [{', '.join(t.axes)}]")
            out[t.name] = value
        return out

    def run(self, session: Session, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """Run `session` on these inputs; the outputs by name."""
        accepted = [a.name for a in session.get_inputs()] if self.optional_inputs else None
        results = session.run(self.output_names, self.feeds(arrays, accepted))
        return dict(zip(self.output_names, results, strict=True))

    def check(self, session: Session, fixed: Mapping[str, int] | None = None) -> None:
        """Raise GraphMismatch listing every way the session's I/O differs from this spec.

        Dynamic axes must be dynamic in the graph unless `fixed` names them; an axis in `fixed`
        may be symbolic or must equal `fixed[axis]`."""
        fixed = dict(fixed or {})
        problems: list[str] = []

        def check_arg(kind: str, arg: NodeArg, spec: Tensor) -> None:
            if arg.type != spec.onnx_type:
                problems.append(f"{kind} {arg.name!r} has type {arg.type}, "
                                f"expected {spec.onnx_type}")
            shape = list(arg.shape)
            if len(shape) != len(spec.axes):
                problems.append(f"{kind} {arg.name!r} has rank {len(shape)} ({shape}), "
                                f"expected rank {len(spec.axes)} [{', '.join(spec.axes)}]")
                return
            for axis, (label, dim) in enumerate(zip(spec.axes, shape, strict=True)):
                if not isinstance(dim, int):
                    continue  # symbolic or unknown: anything goes
                if label in fixed and dim != fixed[label]:
                    problems.append(f"{kind} {arg.name!r} axis {axis} ({label}) is {dim}, "
                                    f"expected {fixed[label]}")
                elif label in DYNAMIC and label not in fixed:
                    problems.append(f"{kind} {arg.name!r} axis {axis} ({label}) is fixed at "
                                    f"{dim}, expected a dynamic axis")

        by_name = {a.name: a for a in session.get_inputs()}
        missing = sorted(set(self.input_names) - set(by_name) - self.optional_inputs)
        unexpected = sorted(set(by_name) - set(self.input_names))
        if missing:
            problems.append(f"missing input(s) {missing}")
        if unexpected:
            problems.append(f"unexpected input(s) {unexpected}")
        for spec in self.inputs:
            if spec.name in by_name:
                check_arg("input", by_name[spec.name], spec)
        outputs = list(session.get_outputs())
        names = [o.name for o in outputs]
        if names != self.output_names:
            problems.append(f"outputs are {names}, expected {self.output_names}")
        else:
            for arg, spec in zip(outputs, self.outputs, strict=True):
                check_arg("output", arg, spec)
        if problems:
            raise GraphMismatch("; ".join(problems))


_HIST = (Tensor("hist_ids", "int64", ("B", "L")),
         Tensor("hist_content", "float32", ("B", "L", "E")))

QUERY_ENCODER = Graph("query_encoder.onnx", inputs=_HIST,
                      outputs=(Tensor("user_vec", "float32", ("B", "D")),))
ITEM_ENCODER = Graph("item_encoder.onnx",
                     inputs=(Tensor("item_ids", "int64", ("N",)),
                             Tensor("item_content", "float32", ("N", "E"))),
                     outputs=(Tensor("item_vec", "float32", ("N", "D")),))
RANKER = Graph("ranker.onnx",
               inputs=(*_HIST, Tensor("cand_ids", "int64", ("B", "C")),
                       Tensor("cand_content", "float32", ("B", "C", "E"))),
               outputs=(Tensor("scores", "float32", ("B", "C")),))
# The candidate ranker (offline/ranker_model.py, docs/ranker.md) in the same file: it also reads
# per-candidate features (F = shared.ranker_features.NUM_FEATURES, fixed by the bundle) and
# answers each candidate's attention over the history. A bundle without it ships RANKER.
CANDIDATE_RANKER = Graph("ranker.onnx",
                         inputs=(*RANKER.inputs,
                                 Tensor("cand_features", "float32", ("B", "C", "F"))),
                         outputs=(Tensor("scores", "float32", ("B", "C")),
                                  Tensor("attention", "float32", ("B", "C", "L"))))
TEXT_ENCODER = Graph("text_encoder.onnx",
                     inputs=(Tensor("input_ids", "int64", ("B", "T")),
                             Tensor("attention_mask", "int64", ("B", "T")),
                             Tensor("token_type_ids", "int64", ("B", "T"))),
                     outputs=(Tensor("embedding", "float32", ("B", "E")),),
                     # some BERT-like encoders take no token types
                     optional_inputs=frozenset({"token_type_ids"}))

# The graphs the model build exports from the trained ranker (offline/export.py).
MODEL_GRAPHS: tuple[Graph, ...] = (QUERY_ENCODER, ITEM_ENCODER, RANKER)
