"""The experiments file (settings.experiments_file): TOML read with the stdlib tomllib, checked
into frozen objects.

    [experiments.ranker-v2]
    active = true            # at most one experiment is active at a time
    control = "current"      # the arm the others are compared with
    ctr_k = 10               # CTR@k: a play at a position < k counts

    [experiments.ranker-v2.guardrail]
    p99_latency_margin = 0.25   # flag an arm whose p99 is > 25% above control's
    error_rate_margin = 0.01    # flag an arm whose error rate is > 1 pp above control's

    [experiments.ranker-v2.arms.current]
    weight = 50

    [experiments.ranker-v2.arms.candidate]
    weight = 50
    bundle = "20261203T0400"              # served side by side with the default bundle
    # or, instead of `bundle`, the arm's own deployment:
    # retrieval_url = "http://retrieval-v2:8001"
    # ranking_url = "http://ranking-v2:8002"
    candidates = { ann = 200, popular = 20 }
    max_per_tag = 2
    sources = ["ann", "tags", "popular"]
    ranker = true

Every problem is reported as a `ConfigError` whose message names the file's line: tomllib says
where the syntax breaks; for the checks after parsing, `locate` finds the table header or key
line (tomllib keeps no positions, so that lookup is done here by hand).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.admin import VERSION_PATTERN
from shared.sources import MAX_CANDIDATES_PER_SOURCE, SOURCE_NAMES

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # label- and key-safe
SOURCES = SOURCE_NAMES
DEFAULT_CTR_K = 10


class ConfigError(ValueError):
    """The experiments file cannot be used; the message names the line."""


@dataclass(frozen=True)
class ArmConfig:
    name: str
    weight: float
    bundle: str | None = None                # None: the default bundle (VIDREC_BUNDLE)
    candidates: Mapping[str, int] = field(default_factory=dict)  # per-source caps overrides
    max_per_tag: int | None = None
    sources: tuple[str, ...] | None = None   # None: every source
    ranker: bool = True
    # The arm's own deployment (a retrieval + ranking pair serving its bundle); None: the
    # gateway's own retrieval and ranking
    retrieval_url: str | None = None
    ranking_url: str | None = None

    def settings_overrides(self, caps: Mapping[str, int],
                           ranker_caps: Mapping[str, int] | None = None) -> dict[str, Any]:
        """Settings fields this arm changes (pipeline/config.py reads them), over the
        gateway's candidate caps `caps` and its candidate ranker's budget `ranker_caps`: a
        count the arm names is both (the arm asks for that many, ranked or not)."""
        out: dict[str, Any] = {}
        changed = dict(self.candidates)
        if self.sources is not None:
            changed.update({s: 0 for s in SOURCES if s not in self.sources})
        if changed:
            out["candidate_caps"] = {**caps, **changed}
            if ranker_caps is not None:
                out["ranker_caps"] = {**ranker_caps, **changed}
        if self.max_per_tag is not None:
            out["max_per_tag"] = self.max_per_tag
        return out


@dataclass(frozen=True)
class Guardrail:
    p99_latency_margin: float = 0.25  # relative: arm p99 > control p99 * (1 + margin)
    error_rate_margin: float = 0.01   # absolute: arm error rate > control's + margin


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[ArmConfig, ...]
    control: str
    active: bool = True
    ctr_k: int = DEFAULT_CTR_K
    guardrail: Guardrail = Guardrail()
    description: str = ""

    def arm(self, name: str) -> ArmConfig | None:
        return next((a for a in self.arms if a.name == name), None)


@dataclass(frozen=True)
class ExperimentsConfig:
    experiments: Mapping[str, Experiment] = field(default_factory=dict)
    source: str = ""  # the file it came from ("" for none)

    @property
    def active(self) -> Experiment | None:
        return next((e for e in self.experiments.values() if e.active), None)

    def bundles(self) -> set[str]:
        """Bundle versions the active experiment's arms name (to be served side by side)."""
        exp = self.active
        return {a.bundle for a in exp.arms if a.bundle} if exp else set()


# ---- locating lines ----------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$")


def _dotted(path: tuple[str, ...]) -> str:
    """A key path as TOML writes it: experiments.ranker-v2.arms."v.2".candidates.ann"""
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else f'"{p}"' for p in path)


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s]+)', dotted)
    return tuple(a or b or c for a, b, c in parts)


def locate(text: str, table: tuple[str, ...], key: str | None = None) -> int:
    """1-based line of `key` inside `[table]` (or of the header itself), falling back to the
    header of the longest enclosing table that is written out, then to line 1."""
    best_line, best_len = 1, -1
    current: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(line)
        if m:
            current = _split_key(m.group(1))
            if key is not None and current[:len(table) + 1] == (*table, key):
                return number  # the key is itself a table: [table.key] or [table.key.sub]
            n = len(current)
            if current == table[:n] and n > best_len:
                best_line, best_len = number, n
            continue
        if key is None or "=" not in line:
            continue
        lhs = _split_key(line.split("=", 1)[0])
        full = current + lhs
        if full[:len(table) + 1] == (*table, key):
            return number
        if table == full[:len(table)] and len(table) > best_len:  # a dotted key names the table
            best_line, best_len = number, len(table)
    return best_line


# ---- parsing -------------------------------------------------------------------------------
def parse(text: str, source: str = "<experiments>",
          bundle_exists: Callable[[str], bool] | None = None) -> ExperimentsConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
        raise ConfigError(f"{source}: {exc}") from None
    checker = _Checker(text, source)
    unknown = set(doc) - {"experiments"}
    if unknown:
        key = sorted(unknown)[0]
        checker.fail((), key, f"unknown top-level key {key!r} (expected [experiments.<name>])")
    tables = doc.get("experiments", {})
    if not isinstance(tables, dict):
        checker.fail((), "experiments", "'experiments' must be a table of experiments")
    experiments = {name: checker.experiment(name, body, bundle_exists)
                   for name, body in tables.items()}
    active = [e for e in experiments.values() if e.active]
    if len(active) > 1:
        checker.fail(("experiments", active[1].name), "active",
                     f"experiments {active[0].name!r} and {active[1].name!r} are both active; "
                     "at most one experiment may be active at a time")
    return ExperimentsConfig(experiments=experiments, source=source)


def load(path: Path, bundle_exists: Callable[[str], bool] | None = None) -> ExperimentsConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, str(path), bundle_exists)


class _Checker:
    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source

    def fail(self, table: tuple[str, ...], key: str | None, message: str) -> None:
        line = locate(self.text, table, key)
        raise ConfigError(f"{self.source}, line {line}: {message}")

    def keys(self, table: tuple[str, ...], body: dict[str, Any], allowed: set[str]) -> None:
        for key in body:
            if key not in allowed:
                self.fail(table, key, f"unknown key {key!r} in [{'.'.join(table)}] "
                          f"(allowed: {', '.join(sorted(allowed))})")

    def typed(self, table: tuple[str, ...], body: dict[str, Any], key: str, kinds: tuple[type, ...],
              what: str, ok: Callable[[Any], bool] = lambda v: True) -> Any:
        value = body[key]
        # bool is an int in Python; TOML keeps them apart, so do we
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if wrong_bool or not isinstance(value, kinds) or not ok(value):
            self.fail(table, key, f"{key} must be {what}, got {value!r}")
        return value

    def experiment(self, name: str, body: Any,
                   bundle_exists: Callable[[str], bool] | None) -> Experiment:
        table = ("experiments", name)
        if not NAME_PATTERN.match(name):
            self.fail(table, None, f"experiment name {name!r} must be 1-64 letters, digits, "
                      "'_', '-' or '.'")
        if not isinstance(body, dict):
            self.fail(("experiments",), name, f"experiment {name!r} must be a table")
        self.keys(table, body, {"active", "control", "ctr_k", "guardrail", "arms",
                                "description"})
        arms_body = body.get("arms")
        if not isinstance(arms_body, dict) or not arms_body:
            self.fail(table, "arms" if "arms" in body else None,
                      f"experiment {name!r} needs arms: [experiments.{name}.arms.<arm>]")
        arms = tuple(self.arm(name, arm, a, bundle_exists) for arm, a in arms_body.items())
        control = arms[0].name
        if "control" in body:
            control = self.typed(table, body, "control", (str,), "an arm name")
            if control not in arms_body:
                self.fail(table, "control", f"control {control!r} is not one of the arms "
                          f"({', '.join(arms_body)})")
        return Experiment(
            name=name, arms=arms, control=control,
            active=self.typed(table, body, "active", (bool,), "true or false")
            if "active" in body else True,
            ctr_k=self.typed(table, body, "ctr_k", (int,), "an integer from 1 to 100",
                             lambda v: 1 <= v <= 100) if "ctr_k" in body else DEFAULT_CTR_K,
            guardrail=self.guardrail(name, body.get("guardrail", {})),
            description=self.typed(table, body, "description", (str,), "a string")
            if "description" in body else "")

    def guardrail(self, name: str, body: Any) -> Guardrail:
        table = ("experiments", name, "guardrail")
        if not isinstance(body, dict):
            self.fail(table[:2], "guardrail", "guardrail must be a table")
        self.keys(table, body, {"p99_latency_margin", "error_rate_margin"})
        values = {key: float(self.typed(table, body, key, (int, float), "a number >= 0",
                                        lambda v: v >= 0))
                  for key in body}
        return Guardrail(**values)

    def arm(self, exp: str, name: str, body: Any,
            bundle_exists: Callable[[str], bool] | None) -> ArmConfig:
        table = ("experiments", exp, "arms", name)
        if not NAME_PATTERN.match(name):
            self.fail(table, None, f"arm name {name!r} must be 1-64 letters, digits, '_', '-' "
                      "or '.'")
        if not isinstance(body, dict):
            self.fail(table[:3], name, f"arm {name!r} must be a table")
        self.keys(table, body, {"weight", "bundle", "candidates", "max_per_tag", "sources",
                                "ranker", "retrieval_url", "ranking_url"})
        if "weight" not in body:
            self.fail(table, None, f"arm {name!r} needs a weight (a number > 0)")
        weight = float(self.typed(table, body, "weight", (int, float), "a number > 0",
                                  lambda v: v > 0))
        bundle = None
        if "bundle" in body:
            bundle = self.typed(table, body, "bundle", (str,), "a bundle version (folder name)",
                                lambda v: re.match(VERSION_PATTERN, v) is not None)
            if bundle_exists is not None and not bundle_exists(bundle):
                self.fail(table, "bundle", f"bundle {bundle!r} not found (no manifest.json "
                          "under the artifacts folder)")
        candidates: dict[str, int] = {}
        if "candidates" in body:
            caps = self.typed(table, body, "candidates", (dict,),
                              f"a table of source = count (sources: {', '.join(SOURCES)})")
            for source, n in caps.items():
                candidates[source] = self.cap((*table, "candidates"), source, n)
        sources = None
        if "sources" in body:
            listed = self.typed(table, body, "sources", (list,), "a list of sources")
            bad = [s for s in listed if s not in SOURCES]
            if bad or not listed:
                self.fail(table, "sources", f"sources must be a non-empty list of {SOURCES}, "
                          f"got {listed!r}")
            sources = tuple(dict.fromkeys(listed))
        urls = {}
        for key in ("retrieval_url", "ranking_url"):
            if key in body:
                urls[key] = self.typed(table, body, key, (str,), "an http:// or https:// URL",
                                       lambda v: re.match(r"^https?://[^\s/]+", v) is not None)
                if bundle is not None:
                    self.fail(table, key, f"arm {name!r} names both a bundle and its own "
                              f"deployment ({key}); the deployment serves its own bundle")
        return ArmConfig(
            name=name, weight=weight, bundle=bundle, candidates=candidates, **urls,
            max_per_tag=self.typed(table, body, "max_per_tag", (int,), "an integer >= 0",
                                   lambda v: v >= 0) if "max_per_tag" in body else None,
            sources=sources,
            ranker=self.typed(table, body, "ranker", (bool,), "true or false")
            if "ranker" in body else True)

    def cap(self, table: tuple[str, ...], source: str, n: Any) -> int:
        """One per-source cap of an arm, held to what retrieval accepts (shared/sources.py):
        refused here, naming the experiment, arm and source, rather than by retrieval on every
        request of the arm (a degraded answer)."""
        where = _dotted((*table, source))
        if source not in SOURCES:
            self.fail(table, source, f"{where}: not a candidate source (the sources are "
                      f"{', '.join(SOURCES)})")
        if isinstance(n, bool) or not isinstance(n, int) \
                or not 0 <= n <= MAX_CANDIDATES_PER_SOURCE:
            self.fail(table, source, f"{where}: must be an integer between 0 and "
                      f"{MAX_CANDIDATES_PER_SOURCE}, got {n!r}")
        return int(n)


def bundles_to_serve(path: Path | None) -> list[str]:
    """Bundles the active experiment's arms name, for retrieval and ranking to load at start
    (the gateway also pushes them on every change). A bad or missing file: none (the gateway
    reports the error)."""
    if path is None:
        return []
    try:
        return sorted(load(path).bundles())
    except ConfigError:
        return []
