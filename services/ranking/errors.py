"""Typed failures of the ranking service (importable without onnxruntime, for the client).

    RuntimeError
     +-- RankerLoadError            a bundle's ranker cannot be served; the service refuses to start
     |    +-- ModelSchemaMismatch   the ONNX model's inputs/outputs disagree with what we feed it
     +-- ServiceUnavailable         (shared.contracts) the ranking stage gave no usable answer
          +-- ScoreCountMismatch    not exactly one score per candidate came back
          +-- ScoreRequestRejected  the ranking service answered 4xx to a request we built
"""

from __future__ import annotations

from shared.contracts import ServiceUnavailable


class RankerLoadError(RuntimeError):
    """The ranker in a bundle cannot be loaded; the message says which file and why."""


class ModelSchemaMismatch(RankerLoadError):
    """The model declares inputs/outputs that differ from what the scorer will feed it."""


class ScoreCountMismatch(ServiceUnavailable):
    """A scorer returned a different number of scores than candidates.

    A subclass of ServiceUnavailable so that callers degrade exactly as for an outage instead
    of pairing scores with the wrong items.
    """


class ScoreRequestRejected(ServiceUnavailable):
    """The remote ranking service refused a request (4xx): a caller bug, reported but degraded."""
