"""docker-compose.yml run for real: images built from the Dockerfile by `docker compose build`,
the stack brought up by `docker compose up -d --wait`, and every check made through the
published gateway port or with `docker inspect` / `docker compose exec`.

The tests run in file order against one stack (module fixture); the load test goes last because
its traffic changes users' histories.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.deploy.manifests import compose
from tests.deploy.test_no_drift import dockerfile_instructions

from .stack import Stack

APP_SERVICES = ("gateway", "retrieval", "ranking", "feature-store")
pytestmark = pytest.mark.timeout(900)


def bundle_users(small_bundle: Path) -> list[str]:
    users = json.loads((small_bundle / "users.json").read_text())
    return [u for u, seq in users.items() if len(seq) >= 3]


def item_ids(answer: dict) -> list[str]:
    return [it["item_id"] for it in answer["items"]]


def event(user_id: str, item_id: str, kind: str = "complete") -> dict:
    return {"event_id": f"containers-{uuid.uuid4().hex}", "user_id": user_id,
            "item_id": item_id, "type": kind, "timestamp": 1_700_000_000,
            "watch_fraction": 1.0}


def test_bundle_job_copied_the_host_bundle_and_loaded_redis(stack: Stack,
                                                            small_bundle: Path) -> None:
    job = stack.inspect("bundle")
    assert job["State"]["Status"] == "exited" and job["State"]["ExitCode"] == 0
    logs = stack.compose("logs", "bundle").stdout
    assert "[build]" not in logs, "the job rebuilt although a host bundle was given"
    keys = stack.compose("exec", "-T", "redis", "redis-cli", "dbsize").stdout
    assert int(keys.strip()) > 0, f"`vidrec load` wrote nothing:\n{logs[-3000:]}"
    # the services serve that very bundle (its version is the folder name)
    known = stack.ok("GET", f"/v1/users/{bundle_users(small_bundle)[0]}/recommendations?k=5")
    assert known["model_version"] == small_bundle.name


def test_recommendations_for_a_bundle_user_and_a_cold_start_user(stack: Stack,
                                                                  small_bundle: Path) -> None:
    user_id = bundle_users(small_bundle)[0]
    known = stack.ok("GET", f"/v1/users/{user_id}/recommendations?k=10")
    assert known["degraded"] == [] and 0 < len(known["items"]) <= 10, known
    assert len(set(item_ids(known))) == len(known["items"])
    new_user = f"new-{uuid.uuid4().hex[:10]}"
    cold = stack.ok("GET", f"/v1/users/{new_user}/recommendations?k=10")
    assert cold["degraded"] == [] and cold["items"], cold
    assert stack.ok("GET", f"/v1/users/{new_user}/history")["items"] == []


def test_an_event_changes_the_users_next_list(stack: Stack, small_bundle: Path) -> None:
    user_id = bundle_users(small_bundle)[1]
    before = item_ids(stack.ok("GET", f"/v1/users/{user_id}/recommendations?k=10"))
    watched = before[0]
    answer = stack.ok("POST", "/v1/events", event(user_id, watched))
    assert answer["results"][0]["status"] == "accepted", answer
    after = stack.ok("GET", f"/v1/users/{user_id}/recommendations?k=10")
    assert after["degraded"] == [] and after["items"], after
    assert watched not in item_ids(after), "a watched item is recommended again"
    assert item_ids(after) != before
    assert stack.ok("GET", f"/v1/users/{user_id}/history?limit=5")["items"][-1]["item_id"] \
        == watched


@pytest.mark.parametrize(("service", "stage"), [("ranking", "score"), ("retrieval", "retrieve")])
def test_a_killed_service_degrades_the_answer_and_start_makes_it_whole(
        stack: Stack, small_bundle: Path, service: str, stage: str) -> None:
    user_id = bundle_users(small_bundle)[2]
    path = f"/v1/users/{user_id}/recommendations?k=10"
    stack.compose("kill", service)
    assert stack.inspect(service)["State"]["Running"] is False
    status, answer = stack.call("GET", path)
    assert status == 200, answer
    assert stage in answer["degraded"] and answer["items"], answer
    stack.compose("start", service)
    stack.wait_healthy(service)
    whole = stack.ok("GET", path)
    assert whole["degraded"] == [] and whole["items"], whole


def test_events_survive_a_redis_restart(stack: Stack, small_bundle: Path) -> None:
    user_id = bundle_users(small_bundle)[3]
    items = [it["item_id"] for it in json.loads((small_bundle / "items.json").read_text())]
    accepted = []
    for item_id in items[:25]:
        status, answer = stack.call("POST", "/v1/events", event(user_id, item_id, "view"))
        if 200 <= status < 300 and answer["results"][0]["status"] == "accepted":
            accepted.append(item_id)
    assert len(accepted) == 25
    stack.compose("restart", "-t", "10", "redis")
    stack.wait_healthy("redis", "feature-store")
    persistence = stack.compose("exec", "-T", "redis", "redis-cli", "info", "persistence").stdout
    assert "aof_enabled:1" in persistence and "loading:0" in persistence, persistence
    history = stack.ok("GET", f"/v1/users/{user_id}/history?limit=1000")
    kept = {h["item_id"] for h in history["items"]}
    assert set(accepted) <= kept, f"lost in the restart: {sorted(set(accepted) - kept)}"
    assert stack.ok("GET", f"/v1/users/{user_id}/recommendations?k=5")["degraded"] == []


def declared_user(service: str) -> str:
    """The user docker-compose.yml gives a service, else the serving stage's USER."""
    spec = compose()["services"][service]
    if "user" in spec:
        return str(spec["user"])
    users = [rest for stage, word, rest in dockerfile_instructions()
             if word == "USER" and stage == spec["build"]["target"]]
    return users[-1]


@pytest.mark.parametrize("service", [*APP_SERVICES, "redis"])
def test_containers_run_as_the_declared_non_root_user_on_a_read_only_root(
        stack: Stack, service: str) -> None:
    declared = declared_user(service)
    uid, gid = declared.split(":")
    assert int(uid) > 0
    info = stack.inspect(service)
    assert info["Config"]["User"] == declared
    assert info["HostConfig"]["ReadonlyRootfs"] is True, f"{service}: root filesystem writable"
    assert compose()["services"][service]["read_only"] is True
    ids = stack.compose("exec", "-T", service, "id", "-u").stdout.strip()
    assert ids == uid, f"{service} runs as uid {ids}, declared {declared}"
    assert stack.compose("exec", "-T", service, "id", "-g").stdout.strip() == gid
    write = stack.compose("exec", "-T", service, "touch", "/probe", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write


def test_bundle_job_ran_as_the_build_images_user(stack: Stack) -> None:
    info = stack.inspect("bundle")
    assert info["Config"]["User"] == declared_user("bundle")
    assert info["HostConfig"]["ReadonlyRootfs"] is True


def test_locust_profile_runs_30_s_without_failures(stack: Stack, results: dict) -> None:
    env = {"LOADTEST_RUN_TIME": "30s", "LOADTEST_USERS": "10", "LOADTEST_SPAWN_RATE": "5"}
    run = stack.compose("--profile", "loadtest", "run", "--rm", "loadtest", env=env,
                        timeout=240)
    out_dir = Path(stack.env["LOADTEST_RESULTS_DIR"])
    summary = json.loads((out_dir / "loadtest.json").read_text())
    total = summary["total"]
    results["loadtest"] = {"users": 10, "spawn_rate": 5, "duration_s": summary["duration_s"],
                           **total, "degraded_responses": summary["degraded_responses"]}
    assert total["requests"] > 0, run.stdout[-3000:]
    assert total["failures"] == 0, f"locust failures: {summary['failures']}"
    assert summary["duration_s"] >= 29, summary  # counted from test_start, as --run-time is


def cpu_weight(stack: Stack, service: str) -> int:
    """The CPU weight the kernel gives the container's cgroup (v2 cpu.weight, v1 cpu.shares)."""
    read = stack.compose("exec", "-T", service, "sh", "-c",
                         "cat /sys/fs/cgroup/cpu.weight 2>/dev/null || "
                         "cat /sys/fs/cgroup/cpu/cpu.shares")
    return int(read.stdout.strip())


def test_the_services_behind_the_gateway_run_with_less_cpu_weight(stack: Stack) -> None:
    from services.topology import BEHIND_GATEWAY

    declared = {name: compose()["services"][name]["cpu_shares"]
                for name in ("gateway", *BEHIND_GATEWAY)}
    for name, shares in declared.items():
        assert stack.inspect(name)["HostConfig"]["CpuShares"] == shares, name
    gateway = cpu_weight(stack, "gateway")
    behind = {name: cpu_weight(stack, name) for name in BEHIND_GATEWAY}
    assert all(w * 4 <= gateway for w in behind.values()), (gateway, behind)
