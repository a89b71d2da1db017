"""Settings fail at start-up, naming the field, not on every request; the default admin token
is refused outside a development setting."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from shared.settings import DEFAULT_ADMIN_TOKEN, Settings
from shared.sources import DEFAULT_CAPS, MAX_CANDIDATES_PER_SOURCE, RANKER_CAPS, ranked_caps


@pytest.mark.parametrize(("field", "value"), [
    ("timeout_score_s", 0), ("history_len", 0), ("ort_intra_threads", 0),
    ("tag_half_life_days", -1.0), ("max_per_tag", -1), ("admin_token", ""),
    ("environment", "staging"),
])
def test_a_value_out_of_bounds_fails_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


@pytest.fixture
def no_cap_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without candidate-cap variables (the developer's own left out)."""
    for name in list(os.environ):
        if name.upper().startswith(("VIDREC_CANDIDATES_", "VIDREC_CANDIDATE_CAPS",
                                    "VIDREC_RANKER_CAPS")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_candidate_caps_are_one_mapping_by_source_name(no_cap_variables: object) -> None:
    assert Settings().candidate_caps == dict(DEFAULT_CAPS)
    assert list(DEFAULT_CAPS) == ["ann", "cooc", "content", "tags", "popular"]  # union order
    partial = Settings(candidate_caps={"tags": 7})
    assert partial.candidate_caps == {**DEFAULT_CAPS, "tags": 7}
    assert Settings(candidates_tags=7).candidate_caps == partial.candidate_caps  # a keyword


@pytest.mark.parametrize(("caps", "where"), [
    ({"ann": -1}, "candidate_caps.ann"), ({"tags": MAX_CANDIDATES_PER_SOURCE + 1},
                                          "candidate_caps.tags"),
    ({"popular": "many"}, "candidate_caps.popular"),
])
def test_a_cap_out_of_bounds_fails_at_start_up_naming_the_source(
        no_cap_variables: object, caps: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError, match=where.replace(".", r"\.")):
        Settings(candidate_caps=caps)
    Settings(candidate_caps={"ann": 0, "tags": MAX_CANDIDATES_PER_SOURCE})  # the bounds: fine


def test_the_caps_come_from_json_and_from_one_variable_per_source(
        no_cap_variables: pytest.MonkeyPatch) -> None:
    env = no_cap_variables
    env.setenv("VIDREC_CANDIDATES_ANN", "120")     # the variables the caps had before
    env.setenv("vidrec_candidates_popular", "5")   # any case, as every VIDREC_ variable
    assert Settings().candidate_caps == {**DEFAULT_CAPS, "ann": 120, "popular": 5}
    env.setenv("VIDREC_CANDIDATE_CAPS", '{"content": 7, "ann": 9}')
    # the JSON mapping wins for a source both name
    assert Settings().candidate_caps == {**DEFAULT_CAPS, "ann": 9, "content": 7, "popular": 5}


def test_the_rankers_budget_is_a_mapping_by_source_within_the_caps(
        no_cap_variables: pytest.MonkeyPatch) -> None:
    assert Settings().ranker_caps == dict(RANKER_CAPS)
    assert list(RANKER_CAPS) == list(DEFAULT_CAPS)  # every source, in the union's order
    assert all(RANKER_CAPS[s] <= DEFAULT_CAPS[s] for s in DEFAULT_CAPS)
    no_cap_variables.setenv("VIDREC_RANKER_CAPS", '{"ann": 400}')
    assert Settings().ranker_caps == {**RANKER_CAPS, "ann": 400}
    # what the ranker is given: the budget within the caps
    caps = Settings(candidate_caps={"ann": 200, "popular": 0})
    assert ranked_caps(caps.candidate_caps, caps.ranker_caps) == {
        **RANKER_CAPS, "ann": 200, "popular": 0}


@pytest.mark.parametrize(("name", "value", "words"), [
    ("VIDREC_RANKER_CAPS", '{"bogus": 5}', r"not a candidate source: bogus \(from VIDREC_RANK"),
    ("VIDREC_RANKER_CAPS", '{"ann": 2001}', "ranker_caps.ann"),
    ("VIDREC_CANDIDATES_BOGUS", "5", "not a candidate source: bogus"),
    ("VIDREC_CANDIDATE_CAPS", '{"bogus": 5}', "not a candidate source: bogus"),
    ("VIDREC_CANDIDATES_TAGS", "2001", "candidate_caps.tags"),
    ("VIDREC_CANDIDATES_TAGS", "lots", "candidate_caps.tags"),
    ("VIDREC_CANDIDATE_CAPS", "tags=5", "candidate_caps"),
])
def test_a_bad_cap_variable_stops_start_up_with_a_clear_message(
        no_cap_variables: pytest.MonkeyPatch, name: str, value: str, words: str) -> None:
    no_cap_variables.setenv(name, value)
    with pytest.raises((ValidationError, ValueError), match=words) as exc:
        Settings()
    if "bogus" in words:  # it also says which sources there are
        assert ", ".join(DEFAULT_CAPS) in str(exc.value)


@pytest.mark.parametrize("service", ["gateway", "retrieval", "ranking"])
def test_the_default_admin_token_is_refused_outside_development(service: str) -> None:
    import importlib

    create_app = importlib.import_module(f"services.{service}.app").create_app
    with pytest.raises(ValueError, match="VIDREC_ADMIN_TOKEN is the default"):
        create_app(Settings(environment="production", admin_token=DEFAULT_ADMIN_TOKEN))
    create_app(Settings(environment="production", admin_token="a-real-secret"))  # starts
    create_app(Settings(environment="development", admin_token=DEFAULT_ADMIN_TOKEN))


def test_the_gateways_bound_is_set_or_follows_how_it_reaches_the_services() -> None:
    local = {"feature_store_url": None, "retrieval_url": None, "ranking_url": None}
    assert Settings(max_in_flight=None, **local).gateway_max_in_flight() == 4
    for name in local:  # any one service over HTTP: the gateway's requests mostly wait on it
        remote = {**local, name: "http://127.0.0.1:9"}
        assert Settings(max_in_flight=None, **remote).gateway_max_in_flight() == 6
    assert Settings(max_in_flight=9, **local).gateway_max_in_flight() == 9
    assert Settings(max_in_flight=2, retrieval_url="http://x:1").gateway_max_in_flight() == 2


def test_the_gateways_bound_moves_by_latency_over_http_unless_told_otherwise() -> None:
    local = {"feature_store_url": None, "retrieval_url": None, "ranking_url": None}
    remote = {**local, "ranking_url": "http://127.0.0.1:9"}
    assert Settings(**local).admission_rule() == "fixed"
    assert Settings(**remote).admission_rule() == "latency"
    assert Settings(admission_limit="fixed", **remote).admission_rule() == "fixed"
    assert Settings(admission_limit="latency", **local).admission_rule() == "latency"
    # the deprecated switch still means what it did, unless the new one is set
    assert Settings(admission_adaptive=True, **remote).admission_rule() == "loop-lag"
    assert Settings(admission_adaptive=True, admission_limit="fixed",
                    **local).admission_rule() == "fixed"
    with pytest.raises(ValueError, match="admission_limit"):
        Settings(admission_limit="sometimes")  # type: ignore[arg-type]
