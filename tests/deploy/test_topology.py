"""docker-compose.yml's topology, run as local processes: the bundle job's own script, then
each service's own command and environment, gated by its own healthcheck, in depends_on order.

Only what a container has and a test machine lacks is rewritten: host names become loopback
addresses with free ports, container paths become test folders, the bundle is the real small
one. The gateway then answers over real HTTP through the three services, and Redis connections
show which processes use Redis (the NetworkPolicy's clients).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import redis

from tests.support import thread_niceness

from .manifests import (
    as_argv,
    compose,
    compose_environment,
    parse_vidrec,
    serve_target,
    subprocess_env,
)
from .processes import Process, free_port, path_with_venv, redis_server, vidrec_executable, wait_for

pytestmark = pytest.mark.slow

APPS = ("feature-store", "retrieval", "ranking", "gateway")
# Stage budgets for a shared 2-core test machine (defaults are for a real deployment); these are
# Settings too, so they are set the same way as everything else.
GENEROUS = {"VIDREC_TIMEOUT_HYDRATE_S": "2", "VIDREC_TIMEOUT_RETRIEVE_S": "5",
            "VIDREC_TIMEOUT_SCORE_S": "5", "VIDREC_TIMEOUT_ITEMS_S": "2"}


def start_order(services: dict) -> list[str]:
    order: list[str] = []

    def visit(name: str) -> None:
        for dep in services[name].get("depends_on", {}):
            if dep in APPS:
                visit(dep)
        if name not in order:
            order.append(name)

    for name in APPS:
        visit(name)
    return order


class Topology:
    def __init__(self, spec: dict, bundle: Path, redis_url: str, tmp: Path) -> None:
        self.spec, self.tmp = spec, tmp
        self.services = spec["services"]
        self.ports = {name: free_port() for name in APPS}
        self.hosts: dict[str, str] = {"redis:6379": urlsplit(redis_url).netloc}
        for name in APPS:
            args = parse_vidrec(as_argv(self.services[name]["command"]))
            service, port = serve_target(args)
            assert service == name
            self.hosts[f"{name}:{port}"] = f"127.0.0.1:{self.ports[name]}"
        self.paths = {"/var/lib/vidrec/artifacts": str(bundle.parent),
                      "/var/lib/vidrec/state": str(tmp / "state"), "/data": str(tmp / "data")}
        self.processes: dict[str, Process] = {}

    def env(self, name: str) -> dict[str, str]:
        env = compose_environment(self.services[name])
        for key, value in env.items():
            for host, local in self.hosts.items():
                value = value.replace(f"//{host}", f"//{local}")
            if value.startswith("/"):
                value = next((local + value[len(p):] for p, local in self.paths.items()
                              if value == p or value.startswith(p + "/")), value)
                assert not value.startswith(("/var/lib/vidrec", "/data")), (name, key, value)
            env[key] = value
        return path_with_venv(subprocess_env(**{**env, **GENEROUS}))

    def healthcheck(self, name: str) -> bool:
        argv = as_argv(self.services[name]["healthcheck"]["test"])
        assert argv[:2] == ["CMD", "python"], argv
        script = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{self.ports[name]}", argv[3])
        return subprocess.run([sys.executable, "-c", script], capture_output=True,
                              timeout=30).returncode == 0

    def run_bundle_job(self) -> subprocess.CompletedProcess:
        job = self.services["bundle"]
        argv = [*as_argv(job["entrypoint"]), *as_argv(job["command"])]
        return subprocess.run(argv, env=self.env("bundle"), capture_output=True, text=True,
                              timeout=600)

    def start(self, name: str) -> Process:
        argv = as_argv(self.services[name]["command"])
        argv[argv.index("--port") + 1] = str(self.ports[name])
        argv[argv.index("--host") + 1] = "127.0.0.1"  # loopback only on a test machine
        proc = Process(name, [vidrec_executable(), *argv], self.env(name),
                       self.tmp / f"{name}.log")
        self.processes[name] = proc
        return proc

    def stop(self) -> None:
        for proc in reversed(self.processes.values()):
            proc.stop()


@pytest.fixture(scope="module")
def topology(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp = tmp_path_factory.mktemp("topology")
    with redis_server(tmp) as redis_url:
        topo = Topology(compose(), small_bundle, redis_url, tmp)
        try:
            before = sorted(p.name for p in small_bundle.parent.iterdir())
            job = topo.run_bundle_job()
            assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
            topo.job_output = job.stdout + job.stderr
            topo.bundle_folders = (before, sorted(p.name for p in small_bundle.parent.iterdir()))
            order = start_order(topo.services)
            assert order[-1] == "gateway", order
            for name in order[:-1]:  # the three services start side by side
                topo.start(name)
            for name in order[:-1]:
                wait_for(lambda n=name: topo.healthcheck(n), f"{name} healthy",
                         topo.processes[name])
            gateway = topo.start("gateway")
            wait_for(lambda: topo.healthcheck("gateway"), "gateway healthy", gateway)
            topo.redis_url = redis_url
            yield topo
        finally:
            topo.stop()


def call(topo: Topology, method: str, path: str, body: dict | None = None,
         admin: bool = False) -> dict:
    headers = {"Content-Type": "application/json"}
    if admin:
        token = compose_environment(topo.services["gateway"])["VIDREC_ADMIN_TOKEN"]
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{topo.ports['gateway']}{path}",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200, (path, resp.status)
        return json.loads(resp.read())


def test_bundle_job_loaded_redis_without_rebuilding(topology: Topology) -> None:
    client = redis.Redis.from_url(topology.redis_url)
    assert client.dbsize() > 0, f"`vidrec load` wrote nothing:\n{topology.job_output}"
    client.close()
    before, after = topology.bundle_folders  # a bundle was there: `vidrec build` did not run
    assert before == after


def test_gateway_answers_through_the_services(topology: Topology, small_bundle: Path) -> None:
    exercise(topology, small_bundle)


def exercise(topology: Topology, small_bundle: Path) -> None:
    """Reads and writes of every kind through the gateway, checking each answer."""
    users = json.loads((small_bundle / "users.json").read_text())
    user_id = next(u for u, seq in users.items() if len(seq) >= 3)
    recs = call(topology, "GET", f"/v1/users/{user_id}/recommendations?k=10")
    assert recs["degraded"] == [] and 0 < len(recs["items"]) <= 10, recs
    assert recs["model_version"] == small_bundle.name
    item_id = recs["items"][0]["item_id"]
    event_id = f"topology-{uuid.uuid4().hex}"
    accepted = call(topology, "POST", "/v1/events", {
        "event_id": event_id, "user_id": user_id, "item_id": item_id, "type": "like",
        "timestamp": 1_700_000_000, "watch_fraction": 0.9})
    assert accepted["results"] == [{"event_id": event_id, "status": "accepted"}]
    history = call(topology, "GET", f"/v1/users/{user_id}/history?limit=5")
    assert history["items"][-1]["item_id"] == item_id
    assert call(topology, "GET", f"/v1/items/{item_id}")["item_id"] == item_id
    assert call(topology, "GET", "/v1/popular?k=5")["items"]
    # similar videos come from retrieval over HTTP; a dislike goes to the feature store's
    other = recs["items"][1]["item_id"]
    similar = call(topology, "GET", f"/v1/items/{other}/similar?k=5")["items"]
    assert len(similar) == 5 and {s["source"] for s in similar} <= {"ann", "content"}
    call(topology, "POST", "/v1/events", {
        "event_id": f"topology-{uuid.uuid4().hex}", "user_id": user_id, "item_id": other,
        "type": "dislike", "timestamp": 1_700_000_050})
    # the pages and what they read are served by the gateway alone too
    assert call(topology, "GET", "/v1/tags?limit=3")["tags"]
    assert call(topology, "GET", "/v1/users?random=true&limit=1")["users"]
    assert "two_stage" in call(topology, "GET", "/v1/bundle")["metrics"]["models"]
    assert "samples" in call(topology, "GET", "/stats")
    for page, marker in (("/", b"Who is watching?"), ("/console", b"Offline metrics"),
                         ("/web/try.js", b"POST")):
        with urllib.request.urlopen(f"http://127.0.0.1:{topology.ports['gateway']}{page}",
                                    timeout=30) as resp:
            assert resp.status == 200 and marker in resp.read(), page
    # an admin upsert goes gateway -> retrieval with the admin token from the compose env
    new_id = f"topology-item-{uuid.uuid4().hex[:8]}"
    put = call(topology, "PUT", f"/v1/items/{new_id}",
               {"title": "A new video about cats", "tags": ["cats"]}, admin=True)
    assert put["item_id"] == new_id and put["available"]
    # once watched it is in a history: ranking reads its content from Redis (the overlay)
    call(topology, "POST", "/v1/events", {
        "event_id": f"topology-{uuid.uuid4().hex}", "user_id": user_id, "item_id": new_id,
        "type": "complete", "timestamp": 1_700_000_100, "watch_fraction": 1.0})
    again = call(topology, "GET", f"/v1/users/{user_id}/recommendations?k=10")
    assert again["degraded"] == [] and again["items"], again
    assert other not in {it["item_id"] for it in again["items"]}  # disliked: gone


def test_only_redis_clients_connect_to_redis(topology: Topology, small_bundle: Path) -> None:
    exercise(topology, small_bundle)  # traffic of every kind, so every client has connected
    redis_port = urlsplit(topology.redis_url).port
    connected = set()
    for name, proc in topology.processes.items():
        conns = psutil.Process(proc.pid).net_connections(kind="tcp")
        if any(c.raddr and c.raddr.port == redis_port for c in conns):
            connected.add(name)
    given_redis = {n for n in APPS if "VIDREC_REDIS_URL" in topology.services[n]["environment"]}
    # the pods the NetworkPolicy lets reach Redis are the compose services given Redis
    # settings (test_no_drift); here those are exactly the processes that connect (the gateway
    # too: it follows the active bundle and writes impressions, docs/learning_loop.md)
    assert connected == given_redis, f"connected {connected}, given Redis settings {given_redis}"


def test_the_services_behind_the_gateway_yield_it_the_cpu(topology: Topology,
                                                          small_bundle: Path) -> None:
    exercise(topology, small_bundle)  # every thread pool has started
    own = os.getpriority(os.PRIO_PROCESS, 0)
    niceness = {name: set(thread_niceness(proc.pid).values())
                for name, proc in topology.processes.items()}
    assert niceness == {"gateway": {own}, **{name: {max(own, 10)} for name in APPS
                                             if name != "gateway"}}, niceness
