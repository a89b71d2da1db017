"""`RankingService`: the in-process implementation of `RankingAPI` (shared/contracts.py).

The loaded `OnnxRanker` is held in one attribute. A call reads it once and uses that model to
the end, and `reload` builds the new model completely before replacing the reference, so a
request never sees half a swap and a failed reload leaves the old model serving.

The model runs on the event loop thread, not in a worker thread: a worker let the loop take
other requests while onnxruntime worked, but the result's way back waits for the GIL (up to
the 5 ms switch interval while the loop runs Python). Side by side in one process
(`vidrec serve all`) at 200 req/s: median p50 11.2 ms with the worker against 6.6 ms without,
p99 20.6 against 21.1 ms (bench/results/serving_side_by_side_ranker_inline.json).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from services.ranking.errors import ScoreCountMismatch
from services.ranking.scorer import OnnxRanker, RankerInfo
from shared.bundle import resolve_bundle
from shared.contracts import BundleNotServed, ScoreItem, ScoreResponse, ServiceUnavailable
from shared.memory import freeze_loaded
from shared.observability import BUNDLE_BYTES, DEGRADED, timed
from shared.settings import Settings
from shared.steps import run_in_steps

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
        # Rankers served side by side for experiment arms: version -> ranker, or None for a
        # version that is the main bundle under another name (e.g. "latest").
        self._extra: dict[str, OnnxRanker | None] = {}
        self._reload_lock = asyncio.Lock()
        # The candidate ranker's features multiply [candidates x 384] by the last few watched
        # items' vectors: big enough for OpenBLAS to split over its threads, far too small to
        # gain from it. As its own process (four services) the helper thread spun for 0.4 of
        # a core at 50 req/s, and goodput rose 20% without it (docs/capacity.md). The
        # retrieval service does the same (in one process, either one's call covers both).
        threadpool_limits(limits=1, user_api="blas")

    # ---- lifecycle ----------------------------------------------------------------------
    async def reload(self, version: str | None = None) -> str:
        """Load bundle `version` (default: settings.bundle) and swap it in; returns its version.

        Raises RankerLoadError (the old model keeps serving) when the bundle cannot be served.
        """
        async with self._reload_lock:
            ranker = await asyncio.to_thread(OnnxRanker.open, self.settings, version)
            old, self._ranker = self._ranker, ranker  # the swap: one reference assignment
            if old is not None and old.version != ranker.version:
                with contextlib.suppress(KeyError):
                    BUNDLE_BYTES.remove("ranking", old.version, "main")
            BUNDLE_BYTES.labels("ranking", ranker.version, "main").set(ranker.memory_bytes())
            freeze_loaded()  # the new model's tables: out of the collector's full passes
        log.info("ranking: serving %s on %s", ranker.version, ranker.info.provider)
        return ranker.version

    async def serve_bundles(self, versions: list[str]) -> dict[str, Any]:
        """Hold exactly these bundle versions besides the main one (experiment arms). A failed
        load changes nothing and raises."""
        async with self._reload_lock:
            main = self._ranker
            if main is None:
                raise ServiceUnavailable("ranking: no model loaded")
            extra: dict[str, OnnxRanker | None] = {}
            for version in dict.fromkeys(versions):
                if self._extra.get(version) is not None:
                    extra[version] = self._extra[version]
                    continue
                path = await asyncio.to_thread(resolve_bundle, self.settings.artifacts_dir,
                                               version)
                if path.name == main.version:
                    extra[version] = None
                    continue
                extra[version] = await asyncio.to_thread(OnnxRanker.open, self.settings, version)
            for version, ranker in self._extra.items():
                if ranker is not None and extra.get(version) is None:
                    with contextlib.suppress(KeyError):
                        BUNDLE_BYTES.remove("ranking", ranker.version, "extra")
            self._extra = extra
            for ranker in extra.values():
                if ranker is not None:
                    BUNDLE_BYTES.labels("ranking", ranker.version, "extra").set(
                        ranker.memory_bytes())
            freeze_loaded()  # arms' models too: out of the collector's full passes
        log.info("ranking: main bundle %s, extra %s", main.version, sorted(extra) or "none")
        return {"main": main.version, "extra": sorted(extra)}

    def _ranker_for(self, bundle: str | None) -> OnnxRanker:
        ranker = self._ranker
        if ranker is None:
            raise ServiceUnavailable("ranking: no model loaded")
        if bundle is None or bundle == ranker.version:
            return ranker
        if bundle not in self._extra:
            raise BundleNotServed(f"ranking: bundle {bundle!r} is not served here (main "
                                  f"{ranker.version}, extra {sorted(self._extra) or 'none'})")
        return self._extra[bundle] or ranker

    @property
    def info(self) -> RankerInfo | None:
        ranker = self._ranker
        return ranker.info if ranker else None

    # ---- RankingAPI ---------------------------------------------------------------------
    async def ready(self) -> bool:
        return self._ranker is not None

    async def score(self, requests: list[ScoreItem],
                    bundle: str | None = None) -> tuple[list[list[float]], str]:
        answer = await self.score_detailed(requests, bundle)
        return answer.scores, answer.model_version

    async def score_detailed(self, requests: list[ScoreItem], bundle: str | None = None,
                             features: bool = False) -> ScoreResponse:
        """Scores, and from a candidate ranker the most-attended history item per candidate
        (and its input features when asked); `ranker` says which model answered."""
        ranker = self._ranker_for(bundle)
        histories = [r.history for r in requests]
        candidates = [r.candidates for r in requests]
        sources = [list(zip(r.sources, r.source_scores, strict=True))
                   if r.sources is not None and r.source_scores is not None else None
                   for r in requests]
        with timed("ranking", "score"):
            unknown = ranker.unknown_items(histories, candidates)
            new_content = await self._content_of(unknown, ranker.info.content_dim)
            try:
                scored = await run_in_steps(ranker.score_steps(
                    histories, candidates, new_content, sources, features))
            except ScoreCountMismatch:
                raise
            except Exception as exc:  # onnxruntime's errors are untyped; degrade, not 500
                raise ServiceUnavailable(f"ranking: model run failed: {exc}") from exc
        if len(scored) != len(candidates) or any(
                len(s.scores) != len(c) for s, c in zip(scored, candidates, strict=True)):
            raise ScoreCountMismatch("ranking: scores do not line up with the candidates")
        candidate = ranker.info.kind == "candidate"
        return ScoreResponse(
            scores=[s.scores.tolist() for s in scored], model_version=ranker.version,
            ranker="candidate" if candidate else "tower",
            attended=[s.attended or [] for s in scored] if candidate else None,
            features=[s.features.tolist() for s in scored if s.features is not None]
            if candidate and features else None)

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
