"""The users of the served bundle (its users.json), for a person picking one on the page:
search by id prefix, or a random one.

Loaded on first use only (a worker thread; the request path never needs it), and only ids and
sequence lengths are kept. Reloaded when the gateway serves another bundle.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
from dataclasses import dataclass
from pathlib import Path

from shared.bundle import Bundle, BundleError


@dataclass(frozen=True)
class KnownUsers:
    version: str
    ids: list[str]            # sorted
    interactions: list[int]   # same order

    @classmethod
    def load(cls, artifacts_dir: Path, version: str) -> KnownUsers:
        try:
            path = Bundle.open(artifacts_dir, version).path / "users.json"
            users = json.loads(path.read_text())
        except (BundleError, OSError, ValueError):
            return cls(version, [], [])  # a gateway without the bundle folder knows no users
        ids = sorted(users)
        return cls(version, ids, [len(users[u]) for u in ids])

    def search(self, prefix: str, limit: int) -> list[tuple[str, int]]:
        start = bisect.bisect_left(self.ids, prefix)
        out = []
        for i in range(start, min(start + limit, len(self.ids))):
            if not self.ids[i].startswith(prefix):
                break
            out.append((self.ids[i], self.interactions[i]))
        return out

    def sample(self, n: int, rng: random.Random) -> list[tuple[str, int]]:
        picks = rng.sample(range(len(self.ids)), min(n, len(self.ids)))
        return [(self.ids[i], self.interactions[i]) for i in picks]


class KnownUsersCache:
    """One KnownUsers per served bundle version, loaded once even under concurrent requests."""

    def __init__(self, artifacts_dir: Path) -> None:
        self.artifacts_dir = artifacts_dir
        self._current: KnownUsers | None = None
        self._lock = asyncio.Lock()

    async def get(self, version: str) -> KnownUsers:
        current = self._current
        if current is not None and current.version == version:
            return current
        async with self._lock:
            if self._current is None or self._current.version != version:
                self._current = await asyncio.to_thread(KnownUsers.load, self.artifacts_dir,
                                                        version)
            return self._current
