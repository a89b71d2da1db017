"""The gateway's live state: its three dependencies, the bundle catalog and the request path,
and the running experiment (its arms' pipelines, the impressions ledger).

One object so that a reload swaps catalog and pipelines together: a request holds the pipeline
it started with, so it never sees half a reload. The same holds for an experiments reload: the
active experiment and its arms' pipelines are swapped as one reference (`arms`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

from services.gateway.catalog import Catalog
from services.gateway.experiments.assignment import Assignment, assign, forced
from services.gateway.experiments.ledger import ARM_REQUESTS, ARM_SECONDS, Answer, Ledger
from services.gateway.experiments.registry import ExperimentsRegistry
from services.gateway.pipeline import RecContext, RecRequest, recommendation_pipeline
from services.gateway.pipeline.stage import Pipeline
from services.ranking.errors import RankerLoadError
from shared.bundle import Bundle, BundleError, resolve_bundle
from shared.contracts import FeatureStoreAPI, RankingAPI, RetrievalAPI, ServiceUnavailable
from shared.errors import InvalidRequest
from shared.experiments import (
    DEFAULT_CTR_K,
    ArmConfig,
    Experiment,
    ExperimentsConfig,
)
from shared.http_client import ErrorFactory, Failed, ServiceClient
from shared.memory import freeze_loaded
from shared.rollout import RolloutFollower
from shared.settings import Settings

log = logging.getLogger("vidrec.gateway")

READY_TIMEOUT_S = 1.0
RELOAD_TIMEOUT_S = 300.0
# what loading a bundle in-process raises when the bundle cannot be served
BUNDLE_ERRORS: tuple[type[Exception], ...] = (BundleError, RankerLoadError)


def _bundle_refused(f: Failed) -> Exception:
    return InvalidRequest("bundle", f"{f.where}: {f.detail}")


class AdminClient(ServiceClient):
    """The admin routes of a remote retrieval or ranking service: a bundle it refuses (422)
    is the caller's InvalidRequest, not an outage."""

    SERVICE = "admin"
    STATUS_ERRORS: ClassVar[dict[int, ErrorFactory]] = {422: _bundle_refused}


@dataclass(frozen=True)
class Arms:
    """The active experiment and a pipeline per arm (one reference, swapped whole)."""

    experiment: Experiment | None = None
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    catalogs: dict[str, Catalog] = field(default_factory=dict)  # bundle version -> catalog


def load_catalog(settings: Settings, version: str | None = None) -> Catalog:
    try:
        return Catalog.from_bundle(Bundle.open(settings.artifacts_dir, version or settings.bundle))
    except BundleError as exc:
        # The gateway can still serve from its dependencies; only its fallbacks need the bundle.
        log.warning("gateway: no bundle catalog (%s); fallbacks will be empty", exc)
        return Catalog.empty()


@dataclass
class Gateway:
    settings: Settings
    feature_store: FeatureStoreAPI
    retrieval: RetrievalAPI
    ranking: RankingAPI
    catalog: Catalog
    pipeline: Pipeline = field(init=False)
    # Called on shutdown (close clients, stop executors), in order.
    closers: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    experiments: ExperimentsRegistry = field(init=False)
    arms: Arms = field(default_factory=Arms)
    ledger: Ledger | None = None  # set by start(): impressions and per-arm counters in Redis
    rollout: RolloutFollower | None = None  # set by start(): follows the active bundle
    # Wraps a bundle change: admission control holds a moving limit still meanwhile
    # (shared/admission.py, Admission.steady), so a reload is not read as overload.
    bundle_change: Callable[[], AbstractContextManager[None]] = nullcontext
    # HTTP clients of arms' own deployments (experiments), by URL
    _arm_clients: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pipeline = self._build_pipeline(self.catalog)
        self.experiments = ExperimentsRegistry(
            self.settings.experiments_file, self.settings.experiments_check_s,
            bundle_exists=self._bundle_exists)
        self.experiments.on_change = self._apply_experiments

    def _build_pipeline(self, catalog: Catalog, arm: ArmConfig | None = None) -> Pipeline:
        if arm is None:
            return recommendation_pipeline(self.settings, self.feature_store, self.retrieval,
                                           self.ranking, catalog)
        settings = self.settings.model_copy(
            update=arm.settings_overrides(self.settings.candidate_caps,
                                          self.settings.ranker_caps))
        retrieval = self._arm_client("retrieval", arm.retrieval_url) or self.retrieval
        ranking = self._arm_client("ranking", arm.ranking_url) or self.ranking
        return recommendation_pipeline(settings, self.feature_store, retrieval, ranking,
                                       catalog, bundle=arm.bundle, ranker=arm.ranker)

    def _arm_client(self, kind: str, url: str | None) -> Any:
        """The client of an arm's own retrieval or ranking deployment (one per URL)."""
        if url is None:
            return None
        if url not in self._arm_clients:
            from services.gateway.wiring import CLIENT_TIMEOUT_S
            from shared.http_transport import transport_for

            if kind == "retrieval":
                from services.retrieval.client import RetrievalClient

                client: Any = RetrievalClient(url, CLIENT_TIMEOUT_S,
                                              admin_token=self.settings.admin_token,
                                              transport=transport_for(url))
            else:
                from services.ranking.client import RankingClient

                client = RankingClient(url, CLIENT_TIMEOUT_S, transport=transport_for(url))
            self._arm_clients[url] = client
        return self._arm_clients[url]

    async def _close_arm_clients(self, keep: set[str]) -> None:
        for url in [u for u in self._arm_clients if u not in keep]:
            await self._arm_clients.pop(url).aclose()

    # ---- experiments -----------------------------------------------------------------------
    async def start(self, redis: Any | None = None) -> None:
        """Connect the impressions ledger (the feature store's Redis when in-process, else a
        connection of its own), then load the experiments file and start watching it."""
        if redis is None:
            redis = getattr(self.feature_store, "redis", None)
        if redis is None:
            from shared.redis_conn import make_redis

            redis = make_redis(self.settings)
            self.closers.append(redis.aclose)
        s = self.settings
        self.ledger = Ledger(redis, s.key_prefix, stream=s.impressions_stream,
                             stream_maxlen=s.impressions_stream_maxlen,
                             impression_ttl_s=s.impression_ttl_s,
                             window_s=s.attribution_window_s,
                             dedupe_ttl_s=s.event_dedupe_ttl_s)
        self.ledger.start()
        await self.experiments.start()
        self.closers.insert(0, self.experiments.close)
        if s.rollout_follow:
            self.rollout = RolloutFollower(s, "gateway", self.follow,
                                           lambda: self.catalog.version or None)
            self.rollout.start()
            self.closers.insert(0, self.rollout.close)

    def _bundle_exists(self, version: str) -> bool:
        try:
            resolve_bundle(self.settings.artifacts_dir, version)
        except BundleError:
            return False
        return True

    def assign(self, user_id: str, header: str | None = None) -> Assignment | None:
        """The user's arm in the active experiment (None when none is active). `header` is the
        QA override (X-Vidrec-Arm); UnknownArm when it names no arm of the experiment."""
        exp = self.arms.experiment
        if exp is None:
            return None
        if header:
            chosen = forced(exp, header)
            if chosen is not None:
                return chosen
        return assign(exp, user_id)

    async def _apply_experiments(self, old: ExperimentsConfig, new: ExperimentsConfig) -> None:
        """Serve the new arms' bundles in retrieval and ranking (besides the old ones, which
        requests may still be using), build the arms' pipelines, swap, then drop the bundles
        no arm names any more."""
        keep, wanted = old.bundles(), new.bundles()
        if keep | wanted:
            await self._serve_bundles(keep | wanted)
        self.arms = await asyncio.to_thread(self._build_arms, new.active, self.catalog)
        freeze_loaded()  # the arms' catalogues: out of the collector's full passes
        if keep - wanted:
            await self._serve_bundles(wanted)
        exp = new.active
        await self._close_arm_clients({u for a in (exp.arms if exp else ())
                                       for u in (a.retrieval_url, a.ranking_url) if u})

    def _build_arms(self, exp: Experiment | None, catalog: Catalog) -> Arms:
        if exp is None:
            return Arms()
        catalogs = dict(self.arms.catalogs)
        pipelines = {}
        for arm in exp.arms:
            if arm.bundle and arm.bundle not in catalogs:
                catalogs[arm.bundle] = Catalog.from_bundle(
                    Bundle.open(self.settings.artifacts_dir, arm.bundle))
            arm_catalog = catalogs[arm.bundle] if arm.bundle else catalog
            pipelines[arm.name] = self._build_pipeline(arm_catalog, arm)
        named = {a.bundle for a in exp.arms if a.bundle}
        return Arms(exp, pipelines, {v: c for v, c in catalogs.items() if v in named})

    async def _serve_bundles(self, versions: set[str]) -> None:
        for name, service in (("retrieval", self.retrieval), ("ranking", self.ranking)):
            serve = getattr(service, "serve_bundles", None)
            base_url: str | None = getattr(service, "base_url", None)  # an HTTP client
            if serve is not None:
                await serve(sorted(versions))
            elif base_url:
                await self._admin_call(base_url, "PUT", "/admin/bundles",
                                       {"bundles": sorted(versions)})
            elif versions:
                raise ServiceUnavailable(f"{name} cannot serve several bundles at once")

    def log_answer(self, ctx: RecContext, request_id: str, assignment: Assignment | None,
                   latency_s: float) -> None:
        """Impression and per-arm counters, written off the request path (a slow or absent
        Redis costs the answer nothing; a lost impression is counted and logged)."""
        if assignment is not None and not assignment.forced:  # QA answers count nowhere
            ARM_REQUESTS.labels(assignment.experiment, assignment.arm,
                                "degraded" if ctx.degraded else "ok").inc()
            ARM_SECONDS.labels(assignment.experiment, assignment.arm).observe(latency_s)
        if self.ledger is not None:
            exp = self.arms.experiment
            self.ledger.add_answer(Answer(
                request_id=request_id, user_id=ctx.request.user_id, assignment=assignment,
                ctr_k=exp.ctr_k if exp else DEFAULT_CTR_K,
                items=tuple(p.meta.item_id for p in ctx.picks), model_version=ctx.model_version,
                latency_s=latency_s, degraded=bool(ctx.degraded), now=time.time()))

    def log_error(self, assignment: Assignment, latency_s: float) -> None:
        if assignment.forced:
            return
        ARM_REQUESTS.labels(assignment.experiment, assignment.arm, "error").inc()
        ARM_SECONDS.labels(assignment.experiment, assignment.arm).observe(latency_s)
        if self.ledger is not None:
            self.ledger.add_error(assignment, latency_s)

    async def recommend(self, request: RecRequest,
                        assignment: Assignment | None = None) -> RecContext:
        pipeline = self.pipeline
        if assignment is not None:
            pipeline = self.arms.pipelines.get(assignment.arm, pipeline)
        return await pipeline.run(RecContext(request))

    def swap_catalog(self, catalog: Catalog) -> None:
        """Items upserted through this gateway stay known across a bundle change."""
        catalog.keep_upserts_from(self.catalog)
        pipeline = self._build_pipeline(catalog)
        arms = self._build_arms(self.arms.experiment, catalog)
        self.catalog, self.pipeline, self.arms = catalog, pipeline, arms
        freeze_loaded()  # the new catalogue: out of the collector's full passes

    async def reload(self, version: str | None = None) -> dict[str, Any]:
        """New bundle in retrieval and ranking (each swaps atomically), then in the gateway."""
        with self.bundle_change():
            return await self._reload(version)

    async def _reload(self, version: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, service in (("retrieval", self.retrieval), ("ranking", self.ranking)):
            reload = getattr(service, "reload", None)
            base_url: str | None = getattr(service, "base_url", None)
            try:
                if reload is not None:
                    out[name] = await reload(version)
                elif base_url:  # an HTTP client without reload()
                    out[name] = await self._reload_remote(base_url, version)
            except BUNDLE_ERRORS as exc:  # in-process: the bundle cannot be served
                raise InvalidRequest("bundle", f"{name}: {exc}") from exc
        try:
            catalog = await asyncio.to_thread(load_catalog, self.settings, version)
        except BundleError as exc:
            raise InvalidRequest("bundle", f"gateway: {exc}") from exc
        self.swap_catalog(catalog)
        out["bundle"] = catalog.version
        if self.rollout is not None and catalog.version:
            await self.rollout.announce(catalog.version)  # every replica follows
        return out

    async def follow(self, version: str) -> None:
        """The active bundle changed (shared/rollout.py): the parts in this process swap it in;
        remote retrieval and ranking replicas follow by themselves."""
        with self.bundle_change():
            await self._follow(version)

    async def _follow(self, version: str) -> None:
        for service in (self.retrieval, self.ranking):
            reload = getattr(service, "reload", None)
            if reload is not None and not getattr(service, "base_url", None):
                await reload(version)
        catalog = await asyncio.to_thread(Catalog.from_bundle,
                                          Bundle.open(self.settings.artifacts_dir, version))
        self.swap_catalog(catalog)

    async def _reload_remote(self, base_url: str, version: str | None) -> str:
        answer = await self._admin_call(base_url, "POST", "/admin/reload", {"bundle": version})
        return str(answer["bundle"])

    async def _admin_call(self, base_url: str, method: str, path: str, body: dict[str, Any]) -> Any:
        client = AdminClient(base_url, RELOAD_TIMEOUT_S, admin_token=self.settings.admin_token)
        try:
            return (await client.send(method, path, json=body, admin=True)).json()
        finally:
            await client.aclose()

    async def readiness(self) -> dict[str, Any]:
        parts = await asyncio.gather(*(_ready(s) for s in
                                       (self.feature_store, self.retrieval, self.ranking)))
        state = dict(zip(("feature_store", "retrieval", "ranking"), parts, strict=True))
        return {"ready": all(parts), **state, "bundle": self.catalog.version,
                "experiments": self.experiments.status(),
                "rollout": self.rollout.status() if self.rollout else None}

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.aclose()  # the last impressions reach Redis
        await self._close_arm_clients(set())
        for close in self.closers:
            try:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # shutting down: report, keep closing the rest
                log.exception("gateway: error while closing")


async def _ready(service: Any) -> bool:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            return bool(await service.ready())
    except Exception:
        return False
