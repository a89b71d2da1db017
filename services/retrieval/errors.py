"""Typed failures of the retrieval service (importable without faiss/onnxruntime, for clients).

    ValueError
     +-- InvalidRequest       a query or upsert the service cannot accept; `field` names the
                              bad field (the API answers 422 naming it)
    LookupError
     +-- ItemNotFound         delete of an item id the service never had (404)
    PermissionError
     +-- AdminRejected        an admin call without a valid bearer token (401/403)
    RuntimeError
     +-- ServiceUnavailable   (shared.contracts) unreachable, timed out or 5xx
          +-- MetadataNotStored  an upsert/delete is applied and persisted by retrieval, but
                                 the feature store could not record the item's metadata (503;
                                 repeating the call is safe)
"""

from __future__ import annotations

from shared.contracts import ServiceUnavailable


class InvalidRequest(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ItemNotFound(LookupError):
    def __init__(self, item_id: str) -> None:
        super().__init__(f"item {item_id!r} is not in the catalogue")
        self.item_id = item_id


class AdminRejected(PermissionError):
    """The admin token was missing (status 401) or wrong (403)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class MetadataNotStored(ServiceUnavailable):
    """Retrieval applied the change but the feature store did not take the item's metadata."""
