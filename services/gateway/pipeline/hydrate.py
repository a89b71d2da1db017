"""hydrate: the user's recent history, tag profile and seen set, in one feature-store call."""

from __future__ import annotations

from services.gateway.pipeline.context import RecContext
from shared.contracts import FeatureStoreAPI, UserState


class Hydrate:
    name = "hydrate"

    def __init__(self, feature_store: FeatureStoreAPI, history_len: int) -> None:
        self.feature_store = feature_store
        self.history_len = history_len

    async def run(self, ctx: RecContext) -> None:
        ctx.user_state = await self.feature_store.hydrate(ctx.request.user_id, self.history_len)

    def fallback(self, ctx: RecContext) -> None:
        # Without Redis we know nothing about the user: answer as for a new user.
        ctx.user_state = UserState(user_id=ctx.request.user_id, known=False)
