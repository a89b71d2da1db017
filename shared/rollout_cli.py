"""`vidrec promote BUNDLE` and `vidrec rollback`: the people's side of shared/rollout.py."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from shared.bundle import BundleError, resolve_bundle
from shared.redis_conn import AsyncRedis, make_redis
from shared.rollout import promote, rollback
from shared.settings import Settings

T = TypeVar("T")


def _bundle_path(settings: Settings, arg: str) -> Path:
    path = Path(arg)
    if path.is_dir() and (path / "manifest.json").is_file():
        path = path.resolve()
        if path.parent != Path(settings.artifacts_dir).resolve():
            raise BundleError(f"{path}: not under the artifacts dir {settings.artifacts_dir}; "
                              "replicas load bundles from there by version")
        return path
    return resolve_bundle(settings.artifacts_dir, arg)


def promote_command(settings: Settings, bundle: str, force: bool = False) -> int:
    try:
        path = _bundle_path(settings, bundle)
    except BundleError as exc:
        print(f"vidrec promote: {exc}", file=sys.stderr)
        return 2
    gate = path / "promotion.json"
    if gate.is_file() and not force:
        decision = json.loads(gate.read_text())
        if not decision.get("promote", False):
            print(f"vidrec promote: the promotion gate refused {path.name}: "
                  f"{decision.get('reason', 'see promotion.md')} (use --force to promote "
                  "anyway)", file=sys.stderr)
            return 3
    previous = asyncio.run(_redis_call(settings, lambda r: promote(r, settings.key_prefix,
                                                                    path.name)))
    print(f"active bundle: {path.name} (was {previous or 'unset'}); every replica follows "
          f"within {settings.rollout_check_s:.0f} s (`vidrec rollback` undoes it)")
    return 0


def rollback_command(settings: Settings) -> int:
    try:
        version = asyncio.run(_redis_call(settings, lambda r: rollback(r, settings.key_prefix)))
    except LookupError as exc:
        print(f"vidrec rollback: {exc}", file=sys.stderr)
        return 2
    print(f"active bundle: {version} (rolled back); every replica follows")
    return 0


async def _redis_call(settings: Settings, call: Callable[[AsyncRedis], Awaitable[T]]) -> T:
    redis = make_redis(settings, socket_timeout_s=5.0, retries=3)
    try:
        return await call(redis)
    finally:
        await redis.aclose()
