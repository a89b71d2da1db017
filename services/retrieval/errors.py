"""Typed failures of the retrieval service (importable without faiss/onnxruntime, for clients).
The shared ones are defined in shared/errors.py and re-exported here:

    ValueError
     +-- InvalidRequest       a query or upsert the service cannot accept; `field` names the
                              bad field (the API answers 422 naming it)
    LookupError
     +-- ItemNotFound         delete of an item id the service never had (404)
    Exception
     +-- AdminRejected        an admin call without a valid bearer token (401/403); not an
                              OSError, so never mistaken for an outage
    RuntimeError
     +-- ServiceUnavailable   (shared.contracts) unreachable, timed out or 5xx
          +-- MetadataNotStored  an upsert/delete is applied and persisted by retrieval, but
                                 the feature store could not record the item's metadata (503;
                                 repeating the call is safe)
"""

from __future__ import annotations

from shared.errors import AdminRejected, InvalidRequest, ItemNotFound, ServiceUnavailable

__all__ = ["AdminRejected", "InvalidRequest", "ItemNotFound", "MetadataNotStored"]


class MetadataNotStored(ServiceUnavailable):
    """Retrieval applied the change but the feature store did not take the item's metadata."""
