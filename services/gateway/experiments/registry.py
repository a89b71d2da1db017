"""The live experiments configuration: loaded at start, reloaded when the file changes (its
mtime, checked every few seconds) or on POST /admin/experiments/reload.

A file that fails to parse or check is refused: the error (naming the line) is logged, kept in
`last_error` for /readyz and the admin route, and the previous configuration keeps serving.
`on_change` runs before the new configuration is visible (the gateway loads the arms' bundles
and builds their pipelines there); if it raises, the new file is refused the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from shared import experiments as cfg
from shared.experiments import ConfigError, ExperimentsConfig

log = logging.getLogger("vidrec.gateway")

RELOADS = Counter("vidrec_experiments_reloads_total",
                  "Experiments file reloads by outcome.", ["outcome"])

OnChange = Callable[[ExperimentsConfig, ExperimentsConfig], Awaitable[None]]


class ExperimentsRegistry:
    def __init__(self, path: Path | None, check_s: float = 2.0,
                 bundle_exists: Callable[[str], bool] | None = None) -> None:
        self.path = path
        self.check_s = check_s
        self.bundle_exists = bundle_exists
        self.config = ExperimentsConfig()
        self.last_error: str | None = None
        self.loaded_at: float | None = None
        self._mtime: int | None = None
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self.on_change: OnChange | None = None

    def _stat(self) -> int | None:
        try:
            return os.stat(self.path).st_mtime_ns if self.path else None
        except OSError:
            return None

    async def reload(self) -> dict[str, Any]:
        """Read the file now. Raises ConfigError (previous configuration kept) when refused."""
        async with self._lock:
            mtime = self._stat()
            try:
                if self.path is None:
                    new = ExperimentsConfig()
                else:
                    new = await asyncio.to_thread(cfg.load, self.path, self.bundle_exists)
                if self.on_change is not None:
                    await self.on_change(self.config, new)
            except ConfigError as exc:
                self._mtime = mtime  # do not retry the same broken file every few seconds
                self.last_error = str(exc)
                RELOADS.labels("refused").inc()
                log.error("experiments: file refused, previous configuration kept: %s", exc)
                raise
            except Exception as exc:  # e.g. retrieval not up yet, or an arm's bundle failed
                # to load there: mtime not recorded, so the watcher tries again
                self.last_error = f"{self.path}: {exc}"
                RELOADS.labels("refused").inc()
                log.error("experiments: could not apply %s (%s: %s); previous configuration "
                          "kept, retrying in %s s", self.path, type(exc).__name__, exc,
                          self.check_s)
                raise ConfigError(self.last_error) from exc
            self.config, self._mtime = new, mtime
            self.last_error, self.loaded_at = None, time.time()
            RELOADS.labels("loaded").inc()
            active = new.active
            log.info("experiments: loaded %s (%d experiment(s), active: %s)", self.path,
                     len(new.experiments), active.name if active else "none")
            return self.status()

    def status(self) -> dict[str, Any]:
        active = self.config.active
        return {"file": str(self.path) if self.path else None,
                "experiments": sorted(self.config.experiments),
                "active": active.name if active else None,
                "loaded_at": self.loaded_at, "error": self.last_error}

    async def start(self) -> None:
        """First load (a bad file leaves no experiment running, and says why), then watch."""
        with contextlib.suppress(ConfigError):
            await self.reload()
        if self.path is not None and self.check_s > 0:
            self._watcher = asyncio.create_task(self._watch(), name="experiments-watcher")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            if self._stat() != self._mtime:
                with contextlib.suppress(ConfigError):  # logged and kept in last_error
                    await self.reload()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
