"""The deployment files say only what the code can do.

For docker-compose.yml, every k8s overlay and the Dockerfile:
- each `vidrec ...` command a container runs is accepted by vidrec_cli's own parser;
- each `vidrec serve` listens where its probes, ports, Services and the URLs pointing at it say,
  and DEFAULT_PORTS gives the port when --port is absent;
- each probe / healthcheck path is a GET route of the app that command serves;
- each VIDREC_* variable set or read is a field of shared.settings.Settings;
- the locustfile only calls routes the gateway has.
"""

from __future__ import annotations

import ast
import os
import re
from urllib.parse import urlsplit

import pytest

from .manifests import (
    OVERLAYS,
    REPO,
    Container,
    as_argv,
    by_kind,
    compose,
    compose_containers,
    env_references,
    k8s_containers,
    parse_vidrec,
    pod_spec,
    render,
    routes,
    serve_target,
    settings_env,
)

SOURCES = ["compose", *(f"k8s/{o}" for o in OVERLAYS)]


def containers_of(source: str) -> list[Container]:
    return compose_containers() if source == "compose" else k8s_containers(source[4:])


def served(c: Container) -> tuple[str, int] | None:
    """(service, port) when the container runs `vidrec serve`."""
    for argv in c.invocations():
        args = parse_vidrec(argv)
        if args.command == "serve":
            return serve_target(args)
    return None


def test_every_source_has_vidrec_containers() -> None:
    # guards the tests below against passing on an empty list
    for source in SOURCES:
        served_services = {served(c)[0] for c in containers_of(source) if c.is_vidrec
                           and served(c)}
        assert {"gateway", "retrieval", "ranking", "feature-store"} <= served_services, source


@pytest.mark.parametrize("source", SOURCES)
def test_commands_parse_with_the_cli(source: str) -> None:
    seen = 0
    for c in containers_of(source):
        if not c.is_vidrec:
            continue
        for argv in c.invocations():
            parse_vidrec(argv)  # raises with argparse's own message
            seen += 1
    assert seen >= 5, f"{source}: expected the four services and the bundle job"


def test_bundle_job_builds_and_loads() -> None:
    for source in SOURCES:
        jobs = [c for c in containers_of(source) if c.is_vidrec
                and any(parse_vidrec(a).command == "load" for a in c.invocations())]
        assert jobs, f"{source}: nothing runs `vidrec load`"
        for job in jobs:
            commands = [parse_vidrec(a).command for a in job.invocations()]
            assert commands.index("build") < commands.index("load"), (source, commands)


@pytest.mark.parametrize("source", SOURCES)
def test_probe_paths_are_routes_of_the_served_app(source: str) -> None:
    checked = 0
    for c in containers_of(source):
        target = served(c) if c.is_vidrec else None
        if target is None:
            assert not c.probes or not c.is_vidrec, c
            continue
        service, port = target
        assert c.probes, f"{source} {c.workload}: `vidrec serve {service}` has no probe"
        for kind, path, probe_port in c.probes:
            assert ("GET", path) in routes(service), \
                f"{source} {c.workload}: {kind} {path} is not a GET route of {service}"
            if isinstance(probe_port, str):
                assert c.ports.get(probe_port) == port, \
                    f"{source} {c.workload}: probe port {probe_port!r} is not {port}"
            else:
                assert probe_port == port, f"{source} {c.workload}: probe port {probe_port}"
            checked += 1
        if source.startswith("k8s"):
            kinds = {k for k, _, _ in c.probes}
            assert kinds == {"startupProbe", "livenessProbe", "readinessProbe"}, c.workload
            paths = {k: p for k, p, _ in c.probes}
            assert paths["readinessProbe"] == "/readyz" and paths["livenessProbe"] == "/healthz"
            assert c.ports == {"http": port}, f"{c.workload}: containerPort is not {port}"
    assert checked >= 4


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_target_the_served_ports(overlay: str) -> None:
    docs = render(overlay)
    deployments = by_kind(docs, "Deployment")
    ports_by_workload = {}
    for c in k8s_containers(overlay):
        if c.is_vidrec and (target := served(c)):
            ports_by_workload[c.workload.split("/", 1)[1]] = target
    for name, svc in by_kind(docs, "Service").items():
        selector = svc["spec"]["selector"]
        matching = [d for d, dep in deployments.items()
                    if selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()]
        if name == "redis":
            continue
        assert matching == [name], f"Service {name} selects {matching}"
        service, port = ports_by_workload[name]
        assert service == name
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ("http", port)
            assert p["port"] == port, f"Service {name} port {p['port']} != served {port}"


@pytest.mark.parametrize("source", SOURCES)
def test_service_urls_point_at_serving_containers(source: str) -> None:
    """VIDREC_*_URL -> host is a compose service / k8s Service serving that part, on its port."""
    containers = containers_of(source)
    where = {}  # host name -> (service, port)
    for c in containers:
        if c.is_vidrec and (target := served(c)):
            where[c.workload.split("/", 1)[-1]] = target
    expected = {"VIDREC_FEATURE_STORE_URL": "feature-store", "VIDREC_RETRIEVAL_URL": "retrieval",
                "VIDREC_RANKING_URL": "ranking"}
    found = 0
    for c in containers:
        for var, service in expected.items():
            if var in c.env:
                url = urlsplit(c.env[var])
                assert where.get(url.hostname) == (service, url.port), \
                    f"{source} {c.workload}: {var}={c.env[var]} does not reach `{service}`"
                found += 1
    assert found >= 3, f"{source}: the gateway must get all three service URLs"


@pytest.mark.parametrize("source", SOURCES)
def test_vidrec_variables_are_settings(source: str) -> None:
    known = settings_env()
    for c in containers_of(source):
        names = {n for n in c.env_names if n.startswith("VIDREC_")}
        names |= env_references(" ".join(c.argv))
        unknown = names - known
        assert not unknown, f"{source} {c.workload}/{c.name}: not in Settings: {sorted(unknown)}"


def test_locust_settings_are_settings() -> None:
    svc = compose()["services"]["loadtest"]
    names = {n for n in svc["environment"] if n.startswith("VIDREC_")}
    text = (REPO / "loadtest" / "locustfile.py").read_text()
    names |= set(re.findall(r"""environ\.get\(["'](VIDREC_[A-Z0-9_]+)""", text))
    assert names and names <= settings_env(), names - settings_env()


def test_redis_url_points_at_redis() -> None:
    for source in SOURCES:
        hosts = {c.workload.split("/", 1)[-1] for c in containers_of(source)
                 if "redis" in c.image.rsplit("/", 1)[-1].split(":")[0]}
        for c in containers_of(source):
            url = c.env.get("VIDREC_REDIS_URL")
            if url and source != "k8s/external-redis":
                assert urlsplit(url).hostname in hosts and urlsplit(url).port == 6379, \
                    f"{source} {c.workload}: VIDREC_REDIS_URL={url}"


def test_redis_clients_are_the_same_in_compose_and_k8s() -> None:
    """The services given Redis settings in compose are the pods the NetworkPolicy lets in."""
    in_compose = {c.workload for c in compose_containers() if "VIDREC_REDIS_URL" in c.env
                  and c.is_vidrec}
    for overlay in OVERLAYS:
        labelled = {c.workload.split("/", 1)[1].removeprefix("vidrec-")
                    for c in k8s_containers(overlay)
                    if c.labels.get("vidrec.io/redis-client") == "true" and c.is_vidrec}
        assert labelled == in_compose, (overlay, labelled, in_compose)
        with_password = {c.workload.split("/", 1)[1].removeprefix("vidrec-")
                         for c in k8s_containers(overlay)
                         if "VIDREC_REDIS_PASSWORD" in c.env_names and c.is_vidrec}
        assert with_password == labelled, overlay
    assert in_compose == {"bundle", "gateway", "feature-store", "retrieval", "ranking",
                          "archiver", "retrain"}


# ---- Dockerfile ----------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with line continuations joined."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stage, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        out.append((stage, word.upper(), rest.strip()))
    return out


def test_dockerfile_commands_and_settings() -> None:
    import json

    import vidrec_cli

    for stage, word, rest in dockerfile_instructions():
        if word == "CMD":
            parse_vidrec(json.loads(rest))
        if word == "ENV":
            names = set(re.findall(r"(?:^|\s)(VIDREC_[A-Z0-9_]+)=", rest))
            assert names <= settings_env(), (stage, names - settings_env())
        if word == "EXPOSE":
            assert {int(p) for p in rest.split()} == set(vidrec_cli.DEFAULT_PORTS.values())
        if word == "HEALTHCHECK":
            path = re.search(r"127\.0\.0\.1:\{p\}(/\w+)", rest).group(1)
            assert ("GET", path) in routes("all")
            for service in vidrec_cli.SERVICES:
                assert ("GET", path) in routes(service)


# ---- loadtest --------------------------------------------------------------------------------
def test_locustfile_routes_exist_in_the_gateway() -> None:
    tree = ast.parse((REPO / "loadtest" / "locustfile.py").read_text())
    assigned = [n for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == "ROUTES" for t in n.targets)]
    assert assigned, "locustfile.py has no ROUTES"
    locust_routes = ast.literal_eval(assigned[0].value)
    gateway_paths = {path for _, path in routes("gateway")}
    for name, path in locust_routes.items():
        assert path in gateway_paths, f"locustfile route {name} {path} is not a gateway route"


def test_make_loadtest_runs_locust_like_the_compose_service() -> None:
    import subprocess

    # Under `make test` this is a sub-make: keep it from printing "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "loadtest",
                           "HOST=http://127.0.0.1:9"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.replace("\\\n", " ")
    make_env = dict(re.findall(r"\b(LOCUST_[A-Z_]+)=(\S+)", text))
    assert re.search(r"\S*/locust\s*$", text.strip()), "make loadtest must end in `locust`"
    compose_env = {k: v for k, v in compose()["services"]["loadtest"]["environment"].items()
                   if k.startswith("LOCUST_")}
    assert set(make_env) == set(compose_env), set(make_env) ^ set(compose_env)
    assert make_env["LOCUST_HOST"] == "http://127.0.0.1:9"
    assert make_env["LOCUST_LOCUSTFILE"] == "loadtest/locustfile.py"
    assert make_env["LOCUST_CSV"].startswith("bench/results/loadtest")
    assert make_env["LOCUST_SUMMARY_JSON"].startswith("bench/results/loadtest")
    for same in ("LOCUST_HEADLESS", "LOCUST_ONLY_SUMMARY"):
        assert make_env[same] == compose_env[same], same


# ---- who runs what: compose (run for real by tests/containers) and Kubernetes agree ----------
def _dockerfile_user(target: str) -> str:
    return [rest for stage, word, rest in dockerfile_instructions()
            if word == "USER" and stage == target][-1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_compose_and_k8s_run_the_same_users_on_read_only_roots(overlay: str) -> None:
    """tests/containers checks the running containers against compose; this keeps the pods'
    securityContext saying the same (uid:gid, read-only root, the image's own user)."""
    docs = render(overlay)
    services = compose()["services"]
    checked = 0
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        name = doc["metadata"]["name"].removeprefix("vidrec-")
        if name not in services:
            continue
        svc = services[name]
        user = str(svc.get("user") or _dockerfile_user(svc["build"]["target"]))
        pod = spec["securityContext"]
        assert f"{pod['runAsUser']}:{pod['runAsGroup']}" == user, (overlay, name, user)
        assert svc["read_only"] is True, name
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, (overlay, name)
        checked += 1
    assert checked >= (6 if overlay != "external-redis" else 5), (overlay, checked)


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "external-redis"])
def test_compose_and_k8s_redis_keep_the_same_append_only_file(overlay: str) -> None:
    (redis,) = [c for c in k8s_containers(overlay) if c.workload == "StatefulSet/redis"]
    compose_args = " ".join(as_argv(compose()["services"]["redis"]["command"]))
    for option in ("--appendonly yes", "--appendfsync everysec", "--dir /data"):
        assert option in compose_args and option in " ".join(redis.argv), (overlay, option)
