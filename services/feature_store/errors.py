"""Feature store errors.

    UnknownItems        events name item ids the store has no meta for; nothing was written.
                        HTTP: 422 with one FastAPI-style error per bad event
                        (loc ["body", "events", i, "item_id"]).
    ServiceUnavailable  (shared.contracts) Redis refused, timed out or the cluster is down.
                        HTTP: 503. The gateway degrades on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import ServiceUnavailable, validation_error


class UnknownItems(ValueError):
    """Some events name items the catalog does not hold."""

    def __init__(self, bad: list[tuple[int, str]]) -> None:
        self.bad = bad  # (index in the batch, item_id)
        super().__init__("unknown item ids: " + ", ".join(
            f"{field}={item_id!r}" for field, (_, item_id) in zip(self.fields, bad, strict=True)))

    @property
    def fields(self) -> list[str]:
        return [f"events[{i}].item_id" for i, _ in self.bad]

    def to_detail(self) -> list[dict[str, Any]]:
        """The 422 body's `detail`, shaped like FastAPI's own validation errors."""
        return [validation_error(["body", "events", i, "item_id"], "unknown item id",
                                 "unknown_item", item_id) for i, item_id in self.bad]

    @classmethod
    def from_detail(cls, detail: object) -> UnknownItems | None:
        """The inverse of to_detail; None when the body is some other 422."""
        if not isinstance(detail, list) or not detail:
            return None
        bad = []
        for err in detail:
            if not isinstance(err, dict) or err.get("type") != "unknown_item":
                return None
            bad.append((int(err["loc"][2]), str(err["input"])))
        return cls(bad)


# Errors that mean "Redis cannot answer now" (BusyLoadingError and MaxConnectionsError are
# ConnectionErrors). Anything else (a wrong command, CROSSSLOT) is a bug and stays loud.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ClusterDownError, SlotNotCoveredError,
              TryAgainError, OSError)


def is_redis_down(exc: BaseException) -> bool:
    if isinstance(exc, REDIS_DOWN):
        return True
    # the cluster client wraps "no startup node reachable" and "slots not covered"
    return isinstance(exc, RedisClusterException) and (
        isinstance(exc.__cause__, REDIS_DOWN) or "slots are not covered" in str(exc))


@contextmanager
def redis_unavailable_as_service_unavailable() -> Iterator[None]:
    try:
        yield
    except (*REDIS_DOWN, RedisClusterException) as exc:
        if not is_redis_down(exc):
            raise
        raise ServiceUnavailable(f"redis: {exc}") from exc
