"""The dataclasses of shared/contracts.py (Candidate, ItemMeta) are checked where they cross a
wire, as the pydantic models they replaced were: a malformed answer is refused, not served."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from pydantic import ValidationError

from shared.contracts import (
    Candidate,
    ItemMeta,
    ItemMetaResponse,
    RetrievalResult,
    RetrieveResponse,
)
from shared.errors import ServiceUnavailable
from shared.http_client import ServiceClient

CANDIDATE = {"item_id": "v1", "source": "ann", "score": 0.5, "nearest_history": "v0",
             "matched_tags": ["cats"]}


def answer(body: object) -> httpx.Response:
    return httpx.Response(200, content=json.dumps(body).encode())


def test_a_retrieval_answer_round_trips_as_dataclasses() -> None:
    sent = RetrieveResponse(results=[RetrievalResult.model_construct(
        candidates=[Candidate("v1", "ann", 0.5, "v0", ["cats"])], per_source={"ann": 1},
        resolved_tags={})], bundle="b1")
    got = RetrieveResponse.model_validate_json(sent.model_dump_json())
    assert got.results[0].candidates == [Candidate("v1", "ann", 0.5, "v0", ["cats"])]
    assert json.loads(sent.model_dump_json())["results"][0]["candidates"] == [CANDIDATE]


@pytest.mark.parametrize(("change", "field"), [
    ({"source": "nowhere"}, "source"), ({"score": "high"}, "score"), ({"item_id": None}, "item_id"),
])
def test_a_malformed_candidate_is_refused_naming_the_field(change: dict, field: str) -> None:
    body = {"results": [{"candidates": [{**CANDIDATE, **change}]}], "bundle": "b1"}
    with pytest.raises(ValidationError, match=field):
        RetrieveResponse.model_validate_json(json.dumps(body))


def test_the_client_reads_an_item_as_a_dataclass_and_refuses_a_malformed_one() -> None:
    client = ServiceClient("http://127.0.0.1:9", 1.0)
    try:
        meta = client.parse(ItemMeta, answer({"item_id": "v1", "title": "Cats", "tags": ["cats"]}))
        assert meta == ItemMeta("v1", "Cats", ["cats"], True, [])
        with pytest.raises(ServiceUnavailable, match="malformed answer"):
            client.parse(ItemMeta, answer({"item_id": "v1", "tags": ["cats"]}))  # no title
        with pytest.raises(ServiceUnavailable, match="malformed answer"):
            client.parse(ItemMetaResponse, answer({"items": {"v1": {"item_id": "v1",
                                                                     "title": "x",
                                                                     "tags": "cats"}}}))
    finally:
        asyncio.run(client.aclose())


def test_the_schemas_still_document_the_fields() -> None:
    schema = RetrieveResponse.model_json_schema()["$defs"]["Candidate"]
    assert schema["required"] == ["item_id", "source", "score"]
    assert "ann" in schema["properties"]["source"]["enum"]
    assert schema["properties"]["nearest_history"]["description"]
    item = ItemMetaResponse.model_json_schema()["$defs"]["ItemMeta"]
    assert item["required"] == ["item_id", "title"]
    assert item["properties"]["clusters"]["description"]
