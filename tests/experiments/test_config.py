"""The experiments file: parsing, checks that name the line, and the registry's reload."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from services.gateway.experiments.registry import ExperimentsRegistry
from shared.contracts import sources_only
from shared.experiments import ConfigError, parse
from shared.sources import MAX_CANDIDATES_PER_SOURCE

GOOD = """\
[experiments.ranker]
control = "current"
ctr_k = 5

[experiments.ranker.guardrail]
p99_latency_margin = 0.5

[experiments.ranker.arms.current]
weight = 50

[experiments.ranker.arms.weak]
weight = 50
sources = ["popular"]
ranker = false
candidates = { popular = 80 }
max_per_tag = 0

[experiments.old]
active = false
[experiments.old.arms.a]
weight = 1
"""


def test_parses_arms_weights_and_pipeline_settings() -> None:
    config = parse(GOOD)
    exp = config.active
    assert exp is not None and exp.name == "ranker" and exp.control == "current"
    assert exp.ctr_k == 5 and exp.guardrail.p99_latency_margin == 0.5
    assert exp.guardrail.error_rate_margin == 0.01  # the default
    weak = exp.arm("weak")
    assert weak is not None and weak.ranker is False and weak.sources == ("popular",)
    caps = {"ann": 300, "cooc": 100, "content": 100, "tags": 50, "popular": 50}
    assert weak.settings_overrides(caps) == {
        "candidate_caps": sources_only(popular=80), "max_per_tag": 0}
    assert caps["popular"] == 50  # the gateway's own caps stay as they were
    # with the candidate ranker's budget, the arm's counts change it too
    budget = {"ann": 150, "cooc": 50, "content": 30, "tags": 15, "popular": 5}
    assert weak.settings_overrides(caps, budget)["ranker_caps"] == sources_only(popular=80)
    assert exp.arm("current").settings_overrides(caps) == {}
    assert not config.experiments["old"].active


@pytest.mark.parametrize(("text", "line", "words"), [
    ("[experiments.x]\ncontrol = \n", 2, "Invalid value"),  # tomllib's own syntax error
    ("[experiments.x.arms.a]\nweight = 1\nwieght = 2\n", 3, "unknown key 'wieght'"),
    ("[experiments.x.arms.a]\nweight = 0\n", 2, "weight must be a number > 0"),
    ("[experiments.x.arms.a]\nweight = true\n", 2, "weight must be a number > 0"),
    ("[experiments.x]\ncontrol = \"b\"\n[experiments.x.arms.a]\nweight = 1\n", 2,
     "control 'b' is not one of the arms"),
    ("[experiments.x]\n\n\n[experiments.x.arms.a]\nweight = 1\nsources = [\"ann\", \"web\"]\n",
     6, "sources must be a non-empty list"),
    ("[experiments.x.arms.a]\nweight = 1\n\n[experiments.x.arms.b]\nranker = true\n", 4,
     "needs a weight"),
    ("[experiments.x.arms.a]\nweight = 1\ncandidates = { ann = -1 }\n", 3, "candidates.ann"),
    ("[experiments.x]\nactive = true\n[experiments.x.arms.a]\nweight = 1\n"
     "[experiments.y]\nactive = true\n[experiments.y.arms.a]\nweight = 1\n", 6,
     "both active"),
    ("[experiments.x]\ndescription = \"no arms\"\n", 1, "needs arms"),
    ("[experiment.x.arms.a]\nweight = 1\n", 1, "unknown top-level key 'experiment'"),
    ("[experiments.x.arms.a]\nweight = 1\nbundle = \"../etc\"\n", 3, "bundle must be"),
    ("[experiments.x.arms.a]\nweight = 1\nbundle = \"v2\"\nranking_url = \"http://r:1\"\n", 4,
     "names both a bundle and its own deployment"),
    ("[experiments.x.arms.a]\nweight = 1\nretrieval_url = \"ftp://r\"\n", 3, "http:// or"),
])
def test_bad_file_is_refused_naming_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(text, "exp.toml")
    message = str(exc.value)
    assert words in message
    assert f"line {line}" in message, message


CAPS = """\
[experiments.ranker-v2.arms.current]
weight = 50

[experiments.ranker-v2.arms.candidate]
weight = 50
candidates = {{ ann = {ann}, popular = 20 }}
"""


BETWEEN = f"must be an integer between 0 and {MAX_CANDIDATES_PER_SOURCE}, got"


@pytest.mark.parametrize(("ann", "words"), [
    (MAX_CANDIDATES_PER_SOURCE + 1, f"{BETWEEN} {MAX_CANDIDATES_PER_SOURCE + 1}"),
    (5000, f"{BETWEEN} 5000"),
    (-1, f"{BETWEEN} -1"),
    ("300", f"{BETWEEN} '300'"),
    (2.5, f"{BETWEEN} 2.5"),
])
def test_an_arms_cap_outside_what_retrieval_accepts_is_refused(ann: object, words: str) -> None:
    """Retrieval refuses a cap above MAX_CANDIDATES_PER_SOURCE on every request: the file is
    refused instead, naming the experiment, the arm and the source."""
    value = f'"{ann}"' if isinstance(ann, str) else ann
    with pytest.raises(ConfigError) as exc:
        parse(CAPS.format(ann=value), "exp.toml")
    assert str(exc.value) == (f"exp.toml, line 6: experiments.ranker-v2.arms.candidate."
                              f"candidates.ann: {words}")


def test_an_arms_unknown_source_is_refused_at_its_line() -> None:
    text = ("[experiments.x.arms.\"v.2\"]\nweight = 1\n\n"
            "[experiments.x.arms.\"v.2\".candidates]\npopular = 3\nweb = 4\n")
    with pytest.raises(ConfigError) as exc:
        parse(text, "exp.toml")
    assert str(exc.value) == ("exp.toml, line 6: experiments.x.arms.\"v.2\".candidates.web: not "
                              "a candidate source (the sources are ann, cooc, content, tags, "
                              "popular)")


def test_an_arms_caps_at_the_bounds_are_kept() -> None:
    exp = parse(CAPS.format(ann=MAX_CANDIDATES_PER_SOURCE).replace("popular = 20",
                                                                   "popular = 0")).active
    assert exp is not None and exp.arm("candidate") is not None
    assert exp.arm("candidate").candidates == {"ann": MAX_CANDIDATES_PER_SOURCE, "popular": 0}


def test_a_file_with_a_cap_too_high_at_start_runs_no_experiment_and_says_why(
        tmp_path: Path) -> None:
    """Start-up (the gateway's ExperimentsRegistry.start): the file is refused with the same
    message; the gateway serves without an experiment and shows the error (docs/experiments.md)."""
    path = tmp_path / "experiments.toml"
    path.write_text(CAPS.format(ann=5000))
    applied: list[object] = []

    async def scenario() -> ExperimentsRegistry:
        registry = ExperimentsRegistry(path, check_s=0)

        async def on_change(old, new) -> None:
            applied.append(new)

        registry.on_change = on_change
        await registry.start()
        await registry.close()
        return registry

    registry = asyncio.run(scenario())
    assert registry.config.active is None and applied == []  # no arm pipeline was built
    assert registry.last_error == (f"{path}, line 6: experiments.ranker-v2.arms.candidate."
                                   f"candidates.ann: {BETWEEN} 5000")
    assert registry.status()["error"] == registry.last_error


def test_unknown_bundle_is_refused_at_its_line() -> None:
    text = "[experiments.x.arms.a]\nweight = 1\n\nbundle = \"nope\"\n"
    with pytest.raises(ConfigError, match=r"line 4: bundle 'nope' not found"):
        parse(text, "exp.toml", bundle_exists=lambda v: v == "latest")


def _write(path: Path, text: str, bump_s: int) -> None:
    path.write_text(text)
    st = path.stat()  # a new mtime even within the file system's timestamp granularity
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump_s * 1_000_000_000))


def test_registry_reloads_on_change_and_keeps_serving_after_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "experiments.toml"
    _write(path, GOOD, 0)
    applied: list[str | None] = []

    async def scenario() -> None:
        registry = ExperimentsRegistry(path, check_s=0.02)

        async def on_change(old, new) -> None:
            applied.append(new.active.name if new.active else None)

        registry.on_change = on_change
        await registry.start()
        try:
            assert registry.config.active.name == "ranker" and registry.last_error is None
            # a broken edit: refused, the error names the line, the old config still serves
            _write(path, GOOD.replace("weight = 50\n\n[experiments.ranker.arms.weak]",
                                      "weight = -5\n\n[experiments.ranker.arms.weak]"), 1)
            for _ in range(200):
                if registry.last_error:
                    break
                await asyncio.sleep(0.02)
            assert "line 9" in registry.last_error and "weight" in registry.last_error
            assert registry.config.active.name == "ranker"
            assert registry.config.active.arm("current").weight == 50
            # fixed: picked up without a restart
            _write(path, GOOD.replace("[experiments.ranker]\n",
                                      "[experiments.ranker]\nactive = false\n"), 2)
            for _ in range(200):
                if registry.config.active is None:
                    break
                await asyncio.sleep(0.02)
            assert registry.config.active is None and registry.last_error is None
        finally:
            await registry.close()

    asyncio.run(scenario())
    assert applied == ["ranker", None]


def test_registry_retries_a_file_it_could_not_apply(tmp_path: Path) -> None:
    """A good file whose arms cannot be served yet (retrieval still starting) is retried by
    the watcher without the file changing."""
    path = tmp_path / "experiments.toml"
    _write(path, GOOD, 0)
    attempts: list[int] = []

    async def scenario() -> ExperimentsRegistry:
        registry = ExperimentsRegistry(path, check_s=0.02)

        async def on_change(old, new) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise ConnectionError("retrieval at http://retrieval:8001: refused")

        registry.on_change = on_change
        await registry.start()
        assert registry.config.active is None and "refused" in registry.last_error
        for _ in range(200):
            if registry.config.active is not None:
                break
            await asyncio.sleep(0.02)
        await registry.close()
        return registry

    registry = asyncio.run(scenario())
    assert registry.config.active.name == "ranker" and registry.last_error is None
    assert len(attempts) == 3
