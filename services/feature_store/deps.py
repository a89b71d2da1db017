"""FastAPI dependencies of the feature store's HTTP API: the live store."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.feature_store.store import FeatureStore


async def get_store(request: Request) -> FeatureStore:
    # async: FastAPI would run a plain def dependency in a worker thread, on every request
    store: FeatureStore = request.app.state.store
    return store


Store = Annotated[FeatureStore, Depends(get_store)]
