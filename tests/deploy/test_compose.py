"""docker-compose.yml against the Compose specification (check-jsonschema carries the schema),
and the properties the deployment relies on: durable Redis, start order, healthchecks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .manifests import REPO, as_argv, compose, compose_environment

APP_SERVICES = ("gateway", "retrieval", "ranking", "feature-store")


def test_compose_file_matches_the_compose_spec() -> None:
    tool = Path(sys.executable).parent / "check-jsonschema"
    binary = str(tool) if tool.exists() else shutil.which("check-jsonschema")
    assert binary, "check-jsonschema is missing: install the dev extra"
    proc = subprocess.run([binary, "--builtin-schema", "vendor.compose-spec",
                           str(REPO / "docker-compose.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_redis_is_append_only_on_a_named_volume() -> None:
    spec = compose()
    redis = spec["services"]["redis"]
    command = " ".join(as_argv(redis["command"]))
    assert "--appendonly yes" in command
    (mount,) = [v for v in redis["volumes"] if v.endswith(":/data")]
    assert mount.split(":")[0] in spec["volumes"], "Redis data must be on a named volume"
    assert "redis-cli" in " ".join(as_argv(redis["healthcheck"]["test"]))


def test_bundle_job_writes_artifacts_after_redis_is_healthy() -> None:
    spec = compose()
    job = spec["services"]["bundle"]
    assert job["build"]["target"] == "build"
    assert job["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "artifacts:/var/lib/vidrec/artifacts" in job["volumes"]
    assert job["restart"] == "no"


def test_services_start_after_the_bundle_and_gateway_after_the_services() -> None:
    services = compose()["services"]
    for name in APP_SERVICES:
        svc = services[name]
        assert svc["build"]["target"] == "serving", name
        assert svc["healthcheck"]["test"], name
        assert "artifacts:/var/lib/vidrec/artifacts:ro" in svc["volumes"], name
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"], name
        if name != "gateway":
            assert svc["depends_on"]["bundle"]["condition"] == \
                "service_completed_successfully", name
    gateway_deps = services["gateway"]["depends_on"]
    for name in APP_SERVICES[1:]:
        assert gateway_deps[name]["condition"] == "service_healthy"
    assert services["gateway"]["ports"], "the gateway is the one published port"
    # published on loopback unless the user says otherwise (VIDREC_BIND_ADDRESS)
    assert all(str(p).startswith("127.0.0.1:") for p in services["gateway"]["ports"])
    assert not any(services[n].get("ports") for n in APP_SERVICES[1:])


def test_no_secret_value_is_committed() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert re.search(r"VIDREC_ADMIN_TOKEN: \$\{VIDREC_ADMIN_TOKEN:\?", text), \
        "the admin token must come from the environment, with no default"
    for svc in compose()["services"].values():
        env = compose_environment(svc)
        assert env.get("VIDREC_ADMIN_TOKEN", "test-admin-token") == "test-admin-token"


def test_loadtest_profile_runs_locust_on_the_gateway() -> None:
    spec = compose()
    lt = spec["services"]["loadtest"]
    assert lt["profiles"] == ["loadtest"]
    assert lt["image"].startswith("locustio/locust:")
    env = compose_environment(lt)
    assert env["LOCUST_HOST"] == "http://gateway:8000"
    assert env["LOCUST_LOCUSTFILE"] == "/mnt/loadtest/locustfile.py"
    assert "./loadtest:/mnt/loadtest:ro" in lt["volumes"]
    assert lt["depends_on"]["gateway"]["condition"] == "service_healthy"
    # the locust image and the dev extra run the same locust
    pinned = [d for d in _dev_extra() if d.startswith("locust==")]
    assert pinned == [f"locust=={lt['image'].split(':')[1]}"], pinned


def _dev_extra() -> list[str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dev"]


def test_the_services_behind_the_gateway_have_less_cpu_weight() -> None:
    """What VIDREC_BEHIND_GATEWAY_NICE does for processes on one box, cpu_shares does for
    containers (niceness only ranks threads within their own container)."""
    from services.topology import BEHIND_GATEWAY

    services = compose()["services"]
    gateway = services["gateway"]["cpu_shares"]
    weights = {name: services[name].get("cpu_shares", 1024) for name in BEHIND_GATEWAY}
    assert all(w * 4 <= gateway for w in weights.values()), (gateway, weights)
