"""The Dockerfile, checked without a Docker engine: hadolint, what each stage installs, who it
runs as, and that its build context (.dockerignore) holds every file it copies."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from .manifests import REPO
from .test_no_drift import dockerfile_instructions


def stage(name: str) -> list[tuple[str, str]]:
    out = [(word, rest) for s, word, rest in dockerfile_instructions() if s == name]
    assert out, f"no stage {name!r} in the Dockerfile"
    return out


def runs(name: str) -> str:
    return "\n".join(rest for word, rest in stage(name) if word == "RUN")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint is missing: install the dev extra (pip install -e '.[dev]')"
    proc = subprocess.run([binary, str(REPO / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_target_is_the_serving_image() -> None:
    stages = [rest.split(" AS ")[-1] for s, word, rest in dockerfile_instructions()
              if word == "FROM"]
    assert stages[-1] == "serving", stages
    assert set(stages) == {"wheels", "build", "gpu", "serving"}


def test_serving_image_has_no_torch_and_no_compilers() -> None:
    install = runs("serving")
    assert "--no-index" in install and "--find-links /wheels" in install, install
    assert not re.search(r"torch|\[build|apt-get|gcc|build-essential", install), install
    # its wheels are the base dependencies only: the builder never names an extra
    assert "[" not in runs("wheels")


def test_images_run_as_a_numeric_non_root_user() -> None:
    for name in ("build", "gpu", "serving"):
        users = [rest for word, rest in stage(name) if word == "USER"]
        assert users, name
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) > 0, f"{name}: USER {users[-1]} (Kubernetes' " \
                                               "runAsNonRoot needs a numeric uid)"


def test_serving_images_have_entrypoint_and_healthcheck() -> None:
    for name in ("gpu", "serving"):
        words = dict(stage(name))
        assert words["ENTRYPOINT"] == '["vidrec"]', name
        assert words["CMD"].startswith('["serve"'), name
        assert "/healthz" in words["HEALTHCHECK"], name
    assert dict(stage("build"))["ENTRYPOINT"] == '["vidrec"]'


def test_build_stage_torch_is_the_cpu_build_the_extra_allows() -> None:
    install = runs("build")
    m = re.search(r"pip install [^&]*torch==([\w.]+)\+cpu\b", install)
    assert m, install
    # from PyTorch's CPU index by default, or from a local wheel folder (wheels/README.md)
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1]
            for s, word, rest in dockerfile_instructions() if word == "ARG" and "=" in rest}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert '--extra-index-url "$index"' in install and "--find-links /mnt/wheels" in install
    (torch,) = [Requirement(r) for r in pyproject()["project"]["optional-dependencies"]["build"]
                if Requirement(r).name == "torch"]
    assert torch.specifier.contains(m.group(1)), f"torch=={m.group(1)} vs {torch}"
    assert "[build,encoder]" in install


def test_build_context_mounts_exist_and_reach_the_context() -> None:
    """RUN --mount=type=bind sources from the build context (not from a stage) exist in the
    repository and are let through .dockerignore, like COPY sources."""
    mounted = re.findall(r"--mount=type=bind,source=([^,\s]+)",
                         "\n".join(rest for _, word, rest in dockerfile_instructions()
                                   if word == "RUN"))
    assert mounted == ["wheels"], mounted
    for src in mounted:
        assert (REPO / src / "README.md").is_file(), f"{src}/ must exist (its README keeps it)"
        assert dockerignore_allows(f"{src}/README.md"), src


def test_gpu_stage_pins_match_the_gpu_extra() -> None:
    words = stage("gpu")
    assert words[0][0] == "FROM" and words[0][1].startswith("${CUDA_IMAGE}")
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1]
            for s, word, rest in dockerfile_instructions() if word == "ARG" and "=" in rest}
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    pinned = set(re.findall(r"([a-z0-9-]+==[\w.]+)", runs("gpu")))
    extra = set(pyproject()["project"]["optional-dependencies"]["gpu"])
    assert extra <= pinned, f"gpu extra {sorted(extra)} vs Dockerfile {sorted(pinned)}"
    assert "pip uninstall -y faiss-cpu onnxruntime" in runs("gpu")


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(p, pat) or (pat.startswith("**/") and
               fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pat[3:])) for p in prefixes):
            included = negate
    return included


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    copied = 0
    for _, word, rest in dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert dockerignore_allows(src), f"COPY {src}: excluded by .dockerignore"
            copied += 1
    assert copied >= 4
    for secret_or_bulky in (".env", ".venv/bin/python", "artifacts/latest", ".git/HEAD",
                            "data/x.csv", "tests/conftest.py"):
        assert not dockerignore_allows(secret_or_bulky), secret_or_bulky
    assert not dockerignore_allows("shared/__pycache__/x.pyc")


def test_copied_packages_are_the_distribution() -> None:
    """The Dockerfile copies every package pyproject ships (a new top-level package would
    otherwise be missing from the image)."""
    copied = {rest.split()[0] for _, word, rest in dockerfile_instructions()
              if word == "COPY" and not rest.startswith("--from")}
    includes = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = {p.rstrip("*") for p in includes if (REPO / p.rstrip("*")).is_dir()}
    assert shipped <= copied, shipped - copied
