"""Durable record of the catalogue changes made while serving (item upserts and deletes).

Each change is one JSON line appended to `<state_dir>/retrieval_overlay.jsonl` and fsynced
before the service applies it, so a restart (or a reload onto a new bundle) replays it. Lines
have the feature store's overlay shape (`OverlayItem`: meta, embedding, updated_at) so the file
and the Redis overlay hash can be merged: the newest change per item wins.

Several worker processes may share the file: appends and compaction hold an exclusive flock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.feature_store.codec import OverlayItem, pack_overlay, unpack_overlay

log = logging.getLogger(__name__)
FILE_NAME = "retrieval_overlay.jsonl"
COMPACT_RATIO = 2  # rewrite the file when it holds this many lines per live item id


class OverlayLog:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILE_NAME

    def append(self, entry: OverlayItem) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = pack_overlay(entry) + b"\n"
        with self._locked():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self) -> list[OverlayItem]:
        """The newest change per item id, oldest first; a torn last line is skipped."""
        if not self.path.is_file():
            return []
        with self._locked():  # held through compaction so no concurrent append is lost
            lines = self.path.read_bytes().splitlines()
            latest = _newest_per_item(_parse(lines, self.path))
            if len(lines) > COMPACT_RATIO * max(1, len(latest)):
                self._rewrite(latest)
        return latest

    def _rewrite(self, entries: list[OverlayItem]) -> None:
        """Caller holds the lock."""
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.writelines(pack_overlay(e) + b"\n" for e in entries)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / f"{FILE_NAME}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def merge(*sources: Iterable[OverlayItem]) -> list[OverlayItem]:
    """One change per item id (the newest across all sources), oldest first."""
    return _newest_per_item(e for source in sources for e in source)


def _newest_per_item(entries: Iterable[OverlayItem]) -> list[OverlayItem]:
    newest: dict[str, OverlayItem] = {}
    for e in entries:
        old = newest.get(e.meta.item_id)
        if old is None or e.updated_at >= old.updated_at:
            newest[e.meta.item_id] = e
    return sorted(newest.values(), key=lambda e: e.updated_at)


def _parse(lines: list[bytes], path: Path) -> Iterable[OverlayItem]:
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield unpack_overlay(line)
        except ValueError:
            # A crash mid-append leaves at most one torn line; skip it rather than refuse to start.
            log.warning("%s: line %d is not a valid overlay entry; skipped", path, n)
