""".ci/run gives tests/containers what it needs: the engine, a stand-in for every base image
`docker compose build` / `up` would pull, and the variable that makes a missing engine fail."""

from __future__ import annotations

import re
import shlex

from .manifests import REPO, compose
from .test_no_drift import dockerfile_instructions


def ci_lines() -> list[list[str]]:
    text = (REPO / ".ci" / "run").read_text().replace("\\\n", " ")  # join continued lines
    return [shlex.split(line, comments=True) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def stages_needed(targets: set[str]) -> set[str]:
    """The Dockerfile stages a BuildKit build of `targets` runs: each target, the stage it is
    FROM, and the stages it copies or mounts from (transitively)."""
    base_of: dict[str, str] = {}
    uses: dict[str, set[str]] = {}
    for stage, word, rest in dockerfile_instructions():
        if word == "FROM":
            base_of[stage] = rest.split(" AS ")[0].strip()
        uses.setdefault(stage, set()).update(re.findall(r"(?:--from=|,from=)([\w-]+)", rest))
    needed, todo = set(), list(targets)
    while todo:
        stage = todo.pop()
        if stage in needed:
            continue
        needed.add(stage)
        todo.extend(s for s in uses.get(stage, ()) | {base_of[stage]} if s in base_of)
    return needed


def pulled_images() -> set[str]:
    """Every image `docker compose build` and `docker compose --profile loadtest up` pull."""
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1]
            for stage, word, rest in dockerfile_instructions() if word == "ARG" and "=" in rest}
    services = compose()["services"].values()
    targets = {svc["build"]["target"] for svc in services if "build" in svc}
    images = {svc["image"] for svc in services if "build" not in svc}
    for stage, word, rest in dockerfile_instructions():
        if word == "FROM" and stage in stages_needed(targets):
            base = rest.split(" AS ")[0].strip()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
            if base not in stages_needed(targets):
                images.add(base)
    return images


def test_ci_stands_in_for_every_pulled_image() -> None:
    (line,) = [words for words in ci_lines() if words[0].endswith("/base-images")]
    assert line[0] == "../shared/tools/containers/base-images"
    assert set(line[1:]) == pulled_images() == {
        "python:3.11-slim-bookworm", "redis:7.4.2-alpine", "locustio/locust:2.47.0"}


def test_ci_starts_the_engine_and_requires_the_container_tests_before_make_test() -> None:
    lines = [" ".join(words) for words in ci_lines()]
    # the engine may come up beside the venv install, but is waited for before the tests
    engine = next(i for i, words in enumerate(ci_lines())
                  if "../shared/tools/containers/engine-up" in words)
    waited = next(i for i, line in enumerate(lines) if "wait" in line.split())
    required = lines.index("export VIDREC_REQUIRE_CONTAINERS=1")
    assert engine < waited < required < lines.index("make test")
