"""POST /v1/events: one event, or {"events": [...]}; idempotent on event_id.

The body is parsed here rather than by FastAPI so that a 422 points at the exact field
(["body", "events", 3, "watch_fraction"]) instead of at a branch of a union.
"""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from services.feature_store.errors import UnknownItems
from services.gateway.deps import GatewayDep
from services.gateway.errors import field_error
from services.gateway.responses import JSON
from services.gateway.schemas import EventBatchIn, EventIn, EventsAccepted
from shared.errors import validation_error

router = APIRouter(tags=["events"])

# Writes are not on the latency-critical path: give Redis a moment rather than answer 503.
EVENTS_TIMEOUT_S = 2.0

BODY_SCHEMA = {"oneOf": [{"$ref": "#/components/schemas/EventIn"},
                         {"$ref": "#/components/schemas/EventBatchIn"}]}


def parse_events(raw: bytes) -> tuple[list[EventIn], tuple[str, ...]]:
    """The events, and where each event sits in the body: ("body",) or ("body", "events")."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise field_error(("body",), f"invalid JSON: {exc}", "json_invalid") from None
    if not isinstance(data, dict):
        raise field_error(("body",), 'expected an event object or {"events": [...]}',
                          "model_type", data)
    try:
        if "events" in data:
            return EventBatchIn.model_validate(data).events, ("body", "events")
        return [EventIn.model_validate(data)], ("body",)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def unknown_items(exc: UnknownItems, where: tuple[str, ...]) -> RequestValidationError:
    def loc(i: int) -> tuple[str | int, ...]:
        return (*where, i, "item_id") if len(where) > 1 else (*where, "item_id")

    return RequestValidationError([validation_error(loc(i), "unknown item id", "unknown_item",
                                                    item_id) for i, item_id in exc.bad])


@router.post("/v1/events", response_model=EventsAccepted,
             summary="Record views, likes, skips, dislikes and completes (retry on 503)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": BODY_SCHEMA}}}})
async def post_events(gateway: GatewayDep, request: Request) -> JSON:
    events_in, where = parse_events(await request.body())
    events = [e.to_event() for e in events_in]
    try:
        async with asyncio.timeout(EVENTS_TIMEOUT_S):
            outcomes = await gateway.feature_store.record_events(events)
    except UnknownItems as exc:
        raise unknown_items(exc, where) from None
    if gateway.ledger is not None:  # experiments: counted for the answer's arm, off the path
        gateway.ledger.attribute_soon(events)
    # Any other failure is a dependency error -> 503 (errors.py): the client retries, and
    # retries are safe because events are idempotent on event_id.
    return JSON({"results": [{"event_id": o.event_id, "status": o.status} for o in outcomes]})
