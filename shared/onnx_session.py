"""The one way an onnxruntime session is made: providers, threads, spinning.

Every session (retrieval's encoders, the ranker, the text encoder, the offline evaluation)
comes from `make_session`, so a setting means the same everywhere:
- `ort_intra_threads`/`ort_inter_threads` threads; parallel execution only with inter > 1;
- idle pool threads sleep instead of spinning: in one process retrieval, FAISS, numpy and Redis
  I/O share the same cores right after a run (spinning made a whole retrieval 3x slower with
  2 intra-op threads on a busy 2-core machine);
- CUDA first when `use_gpu` is set and onnxruntime has the CUDA provider, the CPU otherwise.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from shared.settings import Settings

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class SessionLoadError(RuntimeError):
    """onnxruntime could not load a graph file (missing, corrupt, unsupported operator)."""


def providers(use_gpu: bool) -> list[str]:
    if use_gpu and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def make_session(path: Path, settings: Settings, *, use_gpu: bool | None = None,
                 intra_threads: int | None = None) -> ort.InferenceSession:
    """A session on `path` set up from `settings`; `use_gpu`/`intra_threads` override them
    (the offline evaluation asks for the CPU and its own thread count)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_threads or settings.ort_intra_threads
    opts.inter_op_num_threads = settings.ort_inter_threads
    if settings.ort_inter_threads > 1:  # inter-op threads only matter in parallel mode
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    gpu = settings.use_gpu if use_gpu is None else use_gpu
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers(gpu))
    except Exception as exc:  # onnxruntime raises its own (untyped) errors
        raise SessionLoadError(f"{path}: onnxruntime cannot load it: {exc}") from exc


def device_of(session: ort.InferenceSession) -> str:
    """"gpu" when the session runs on CUDA, else "cpu"."""
    return "gpu" if session.get_providers()[0] == CUDA else "cpu"
