"""`RankingService`: the in-process implementation of `RankingAPI` (shared/contracts.py).

The loaded `OnnxRanker` is held in one attribute. A call reads it once and uses that model to
the end, and `reload` builds the new model completely before replacing the reference, so a
request never sees half a swap and a failed reload leaves the old model serving.

Model runs go through one worker thread: the event loop stays free while onnxruntime works,
and runs do not compete for the cores their intra-op threads already use.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.ranking.errors import ScoreCountMismatch
from services.ranking.scorer import OnnxRanker, RankerInfo
from shared.contracts import ScoreItem, ServiceUnavailable
from shared.observability import DEGRADED, timed
from shared.settings import Settings

log = logging.getLogger(__name__)

# item ids -> content embedding [E] of those of them it knows (items upserted while serving);
# async (a Redis read) or a plain function (an in-memory table).
NewItemContent = Callable[[list[str]],
                          Awaitable[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray]]


class RankingService:
    def __init__(self, settings: Settings, new_item_content: NewItemContent | None = None,
                 ranker: OnnxRanker | None = None) -> None:
        self.settings = settings
        self._new_item_content = new_item_content
        self._ranker = ranker
        self._reload_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranker")

    # ---- lifecycle ----------------------------------------------------------------------
    async def reload(self, version: str | None = None) -> str:
        """Load bundle `version` (default: settings.bundle) and swap it in; returns its version.

        Raises RankerLoadError (the old model keeps serving) when the bundle cannot be served.
        """
        async with self._reload_lock:
            ranker = await asyncio.to_thread(OnnxRanker.open, self.settings, version)
            self._ranker = ranker  # the swap: one reference assignment
        log.info("ranking: serving %s on %s", ranker.version, ranker.info.provider)
        return ranker.version

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def info(self) -> RankerInfo | None:
        ranker = self._ranker
        return ranker.info if ranker else None

    # ---- RankingAPI ---------------------------------------------------------------------
    async def ready(self) -> bool:
        return self._ranker is not None

    async def score(self, requests: list[ScoreItem]) -> tuple[list[list[float]], str]:
        ranker = self._ranker
        if ranker is None:
            raise ServiceUnavailable("ranking: no model loaded")
        histories = [r.history for r in requests]
        candidates = [r.candidates for r in requests]
        with timed("ranking", "score"):
            unknown = ranker.unknown_items(histories, candidates)
            new_content = await self._content_of(unknown, ranker.info.content_dim)
            loop = asyncio.get_running_loop()
            try:
                scores = await loop.run_in_executor(
                    self._executor, ranker.score, histories, candidates, new_content)
            except ScoreCountMismatch:
                raise
            except Exception as exc:  # onnxruntime's errors are untyped; degrade, not 500
                raise ServiceUnavailable(f"ranking: model run failed: {exc}") from exc
        if len(scores) != len(candidates) or any(
                len(s) != len(c) for s, c in zip(scores, candidates, strict=True)):
            raise ScoreCountMismatch("ranking: scores do not line up with the candidates")
        return [s.tolist() for s in scores], ranker.version

    async def _content_of(self, item_ids: list[str], dim: int) -> dict[str, np.ndarray]:
        """Content of items not in the bundle; on any failure they fall back to zero content."""
        if not item_ids or self._new_item_content is None:
            return {}
        try:
            with timed("ranking", "new_item_content"):
                found = self._new_item_content(item_ids)
                if inspect.isawaitable(found):
                    found = await asyncio.wait_for(found, self.settings.timeout_items_s)
        except Exception as exc:  # degrade: score them on the unknown-item embedding alone
            DEGRADED.labels("ranking", "new_item_content").inc()
            log.warning("ranking: no content for %d new item(s): %r", len(item_ids), exc)
            return {}
        usable: dict[str, np.ndarray] = {}
        for item_id, vec in found.items():
            arr = np.asarray(vec, dtype=np.float32).reshape(-1)
            if arr.shape == (dim,) and np.isfinite(arr).all():
                usable[item_id] = arr
            else:
                log.warning("ranking: ignoring content of %s (shape %s, expected %d)",
                            item_id, arr.shape, dim)
        return usable
