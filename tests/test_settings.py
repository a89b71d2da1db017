"""Settings fail at start-up, naming the field, not on every request; the default admin token
is refused outside a development setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import DEFAULT_ADMIN_TOKEN, Settings


@pytest.mark.parametrize(("field", "value"), [
    ("candidates_ann", -1), ("candidates_tags", 2001), ("timeout_score_s", 0),
    ("history_len", 0), ("ort_intra_threads", 0), ("tag_half_life_days", -1.0),
    ("max_per_tag", -1), ("admin_token", ""), ("environment", "staging"),
])
def test_a_value_out_of_bounds_fails_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_candidate_caps_are_one_mapping_by_source_name() -> None:
    settings = Settings(candidates_tags=7)
    assert settings.candidate_caps == {"ann": 300, "content": 100, "tags": 7, "popular": 50}


@pytest.mark.parametrize("service", ["gateway", "retrieval", "ranking"])
def test_the_default_admin_token_is_refused_outside_development(service: str) -> None:
    import importlib

    create_app = importlib.import_module(f"services.{service}.app").create_app
    with pytest.raises(ValueError, match="VIDREC_ADMIN_TOKEN is the default"):
        create_app(Settings(environment="production", admin_token=DEFAULT_ADMIN_TOKEN))
    create_app(Settings(environment="production", admin_token="a-real-secret"))  # starts
    create_app(Settings(environment="development", admin_token=DEFAULT_ADMIN_TOKEN))
