"""Drive the real docker-compose.yml with the real `docker compose` CLI, for tests/containers.

    engine_problem()   why no Docker engine with Compose v2 answers here (None when one does)
    Stack              one compose project: `compose(...)`, HTTP through the published gateway
                       port, `inspect(service)`, waiting for health

Nothing here imitates the engine: every step is a `docker` / `docker compose` command line, so a
failure message is the engine's own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOW_TO_RUN = (
    "tests/containers needs a Docker engine with the Compose v2 plugin. Here: "
    "`../shared/tools/containers/engine-up && ../shared/tools/containers/base-images "
    "python:3.11-slim-bookworm redis:7.4.2-alpine locustio/locust:2.47.0`, then rerun "
    "`pytest tests/containers` (CI sets VIDREC_REQUIRE_CONTAINERS=1, so there it fails instead)")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"`docker {' '.join(args)}` exited {proc.returncode}:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
        if info.returncode != 0:
            return f"the Docker engine does not answer: {info.stderr.strip()[:300].rstrip('.')}"
        compose = docker("compose", "version", "--short", timeout=30, check=False)
        if compose.returncode != 0:
            return f"no Compose v2 plugin: {compose.stderr.strip()[:300]}"
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    return None


def engine_versions() -> dict[str, str]:
    return {"engine": docker("info", "--format", "{{.ServerVersion}}").stdout.strip(),
            "compose": docker("compose", "version", "--short").stdout.strip()}


@dataclass
class Stack:
    """One compose project of docker-compose.yml, configured only through its variables."""

    project: str
    env: dict[str, str]
    port: int
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "--project-directory", str(REPO), "-f",
               str(REPO / "docker-compose.yml"), "-p", self.project, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={**self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"`{' '.join(cmd[6:])}` exited {proc.returncode}:\n"
                                 f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
        return proc

    def timed(self, name: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        start = time.monotonic()
        proc = self.compose(*args, **kwargs)
        self.timings[name] = round(time.monotonic() - start, 1)
        return proc

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict:
        return json.loads(docker("inspect", self.container(service)).stdout)[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return (state.get("Health") or {}).get("Status") or state["Status"]

    def wait_healthy(self, *services: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            states = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout_s} s: {states}\n"
                                     + self.compose("logs", "--tail", "40", *services,
                                                    check=False).stdout[-4000:])
            time.sleep(1)

    # ---- HTTP through the published gateway port --------------------------------------------
    def call(self, method: str, path: str, body: dict | None = None,
             timeout_s: float = 30) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def ok(self, method: str, path: str, body: dict | None = None) -> dict:
        status, answer = self.call(method, path, body)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer
