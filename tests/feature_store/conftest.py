"""Fixtures for the feature store tests: real Redis only.

- `settings`: the shared Redis at 127.0.0.1:6379 with a key prefix unique to the test; every
  key under it is deleted afterwards.
- `redis_servers`: starts private `redis-server` processes (persistence, failures, a cluster)
  on free ports and stops them by pid afterwards.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.feature_store.codec import unpack_stream_events
from shared.settings import Settings

SHARED_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port(also_free: int = 0) -> int:
    """A free TCP port; with also_free=k, port+k must be free too (a cluster's bus port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not also_free:
            return port
        if port + also_free < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + also_free))
                    return port
                except OSError:
                    continue


async def streamed(redis, stream: str) -> list[dict]:
    """Every event the stream holds, in order, one dict per event (an entry holds a batch;
    its "skip" positions are left out, as the archiver leaves them out)."""
    out: list[dict] = []
    for _, fields in await redis.xrange(stream):
        cols, _ = unpack_stream_events(fields)
        out += [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]
    return out


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    deleted = 0
    for batch in _scan_batches(client, f"{prefix}:*"):
        deleted += client.unlink(*batch)
    return deleted


def _scan_batches(client: redis.Redis, pattern: str) -> Iterator[list[str]]:
    batch: list[str] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            yield batch
            batch = []
    if batch:
        yield batch


@pytest.fixture
def settings() -> Iterator[Settings]:
    prefix = f"vidrec:test:{uuid.uuid4().hex[:12]}"
    yield Settings(redis_url=SHARED_REDIS, key_prefix=prefix, redis_cluster=False,
                   redis_password=None, redis_tls=False)
    client = redis.Redis.from_url(SHARED_REDIS, decode_responses=True)
    delete_prefix(client, prefix)
    client.close()


@dataclass
class RedisServer:
    port: int
    dir: Path
    args: list[str]
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.dir), "--save", "", "--daemonize", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2,
                             retry=Retry(NoBackoff(), 0))  # we poll ourselves
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.AuthenticationError:
                break  # up, and wants a password
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (clean shutdown) or SIGKILL (a crash) of this server's own pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)


class ServerPool:
    """Starts redis-server processes under one folder; stop_all() kills them by pid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[RedisServer] = []

    def __call__(self, *args: str, port: int | None = None) -> RedisServer:
        port = port or free_port()
        d = self.root / f"redis-{port}"
        d.mkdir(exist_ok=True)
        server = RedisServer(port, d, list(args)).start()
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop(kill=True)


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path)
    yield pool
    pool.stop_all()


def _cluster_state(port: int) -> str:
    client = redis.Redis(port=port, decode_responses=True)
    try:
        info = client.execute_command("CLUSTER", "INFO")
    finally:
        client.close()
    text = info if isinstance(info, str) else "\n".join(f"{k}:{v}" for k, v in info.items())
    return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("cluster_state:"))


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """A real 3-master Redis Cluster of local redis-server processes (bus port = port+10000),
    slots assigned by `redis-cli --cluster create`."""
    pool = ServerPool(tmp_path_factory.mktemp("cluster"))
    try:
        servers = [pool("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000", "--appendonly", "no",
                        port=free_port(also_free=10000)) for _ in range(3)]
        subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
             *[f"127.0.0.1:{s.port}" for s in servers], "--cluster-replicas", "0",
             "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        for s in servers:
            while _cluster_state(s.port) != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not reach state ok")
                time.sleep(0.05)
        yield servers
    finally:
        pool.stop_all()
