"""Content embeddings for new items without torch: the exported text encoder (see
offline/text_encoder_export.py) run by onnxruntime, tokenized by the `tokenizers` package.

The ONNX graph already pools (mean over the attention mask) and L2-normalises, so the output
equals `SentenceTransformer.encode(..., normalize_embeddings=True)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from shared.onnx_graphs import TEXT_ENCODER, GraphMismatch
from shared.onnx_session import make_session
from shared.settings import Settings

ONNX_FILE = TEXT_ENCODER.file
TOKENIZER_FILE = "tokenizer.json"
BATCH_SIZE = 32


class TextEncoderMissing(FileNotFoundError):
    """The bundle has no exported text encoder (it is optional); the message names the file."""


class OnnxTextEncoder:
    def __init__(self, bundle_dir: Path, settings: Settings | None = None) -> None:
        """`settings`: threads and GPU as for every session (shared/onnx_session.py); without
        them one CPU thread."""
        bundle_dir = Path(bundle_dir)
        onnx_path, tok_path = bundle_dir / ONNX_FILE, bundle_dir / TOKENIZER_FILE
        for p in (onnx_path, tok_path):
            if not p.is_file():
                raise TextEncoderMissing(f"{p}: missing (bundle built without a text encoder)")
        self._tokenizer = Tokenizer.from_file(str(tok_path))
        settings = settings or Settings(ort_intra_threads=1, ort_inter_threads=1, use_gpu=False)
        self._session = make_session(onnx_path, settings)
        try:
            TEXT_ENCODER.check(self._session)
        except GraphMismatch as exc:
            raise GraphMismatch(f"{onnx_path}: {exc}") from None
        meta = self._session.get_modelmeta().custom_metadata_map
        out_shape = self._session.get_outputs()[0].shape
        self.dim = int(meta.get("dim") or out_shape[-1])
        self.max_seq_length = int(meta.get("max_seq_length", 0)) or None

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [n, dim], L2-normalised rows, in the order of `texts`."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Similar lengths batched together: less padding to run through the transformer.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start:start + BATCH_SIZE]
            out[rows] = self._run([texts[i] for i in rows])
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        return TEXT_ENCODER.run(
            self._session,
            input_ids=np.array([e.ids for e in encodings], dtype=np.int64),
            attention_mask=np.array([e.attention_mask for e in encodings], dtype=np.int64),
            token_type_ids=np.array([e.type_ids for e in encodings], dtype=np.int64),
        )["embedding"]
