"""The archiver against real processes: its own redis-server (AOF), `vidrec archive` and the
feature store's HTTP app as separate processes, killed by pid.

- SIGKILL between writing a batch and acknowledging it, and at an arbitrary moment, then a
  restart: every event in the log exactly once (stream duplicates from retries included).
- Redis SIGKILLed and restarted from its AOF while events flow over HTTP: every event that got
  a 2xx is in the log.
- The stream trimmed below the archiver's backlog: counted on /metrics and logged.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.archiver.consumer import ENTRIES, ArchiverConfig, StreamArchiver
from services.archiver.eventlog import EVENTS, EventLog
from services.feature_store.codec import stream_fields
from services.feature_store.keys import Keys
from shared.contracts import Event
from shared.redis_conn import make_redis
from shared.settings import Settings
from tests.deploy.processes import Process, http_ok, vidrec_executable, wait_for
from tests.feature_store.conftest import ServerPool
from tests.support import free_port

PREFIX = "vidrec:arch"


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _env(tmp: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
    env.update({"VIDREC_REDIS_URL": redis_url, "VIDREC_KEY_PREFIX": PREFIX,
                "VIDREC_ENVIRONMENT": "development",
                "VIDREC_EVENT_LOG": str(tmp / "log"), "VIDREC_ARCHIVE_CONSUMER": "arch-1",
                "VIDREC_ARCHIVE_BLOCK_MS": "100", "VIDREC_ARCHIVE_CLAIM_IDLE_S": "1",
                **extra})
    return env


def _archiver(tmp: Path, env: dict[str, str], n: int) -> tuple[Process, str]:
    port = free_port()
    proc = Process(f"archiver-{n}", [vidrec_executable(), "archive", "--port", str(port)], env,
                   tmp / f"archiver-{n}.log")
    return proc, f"http://127.0.0.1:{port}"


def _event(k: int, user: int | None = None) -> Event:
    return Event(event_id=f"e{k}", user_id=f"u{k % 37 if user is None else user}",
                 item_id=f"v{k % 11}", type=("view", "like", "complete", "skip")[k % 4],
                 timestamp=1_700_000_000.0 + k, watch_fraction=0.5)


def _caught_up(client: redis.Redis, stream: str) -> bool:
    groups = {g["name"]: g for g in client.xinfo_groups(stream)}
    g = groups.get("archiver")
    return g is not None and g["pending"] == 0 and g["lag"] == 0


def _logged_ids(log_dir: Path) -> list[str]:
    return EventLog(str(log_dir)).read(EVENTS, ["event_id"]).column("event_id").to_pylist()


def test_sigkill_mid_batch_loses_and_duplicates_nothing(tmp_path: Path,
                                                        redis_servers: ServerPool) -> None:
    server = redis_servers("--appendonly", "yes", "--appendfsync", "always")
    client = redis.Redis(port=server.port, decode_responses=True)
    stream = Keys(PREFIX).events
    pipe = client.pipeline(transaction=False)
    for k in range(1200):
        pipe.xadd(stream, stream_fields(_event(k)))
        if k % 50 == 7:  # a client retry after a failure between XADD and its marker
            pipe.xadd(stream, stream_fields(_event(k)))
    pipe.execute()
    env = _env(tmp_path, server.url, VIDREC_ARCHIVE_BATCH="150")

    # 1. killed after its first batch is durably written, before the acknowledgement
    proc, _ = _archiver(tmp_path, {**env, "VIDREC_ARCHIVE_PAUSE_BEFORE_ACK_S": "30"}, 1)
    wait_for(lambda: "acknowledging in" in proc.log_tail(), "first batch written", proc, 60)
    proc.proc.kill()
    proc.stop()
    assert list((tmp_path / "log" / "events").rglob("*.parquet")), "nothing was written"

    # 2. restarted, killed again at an arbitrary moment while it works through the backlog
    proc, _ = _archiver(tmp_path, env, 2)
    wait_for(lambda: client.xinfo_groups(stream)[0]["entries-read"] >= 500, "archiving",
             proc, 60)
    proc.proc.kill()
    proc.stop()
    for k in range(1200, 1400):  # and events keep arriving while it is down
        client.xadd(stream, stream_fields(_event(k)))

    # 3. restarted: it finishes its pending batch first, then the rest
    proc, url = _archiver(tmp_path, env, 3)
    try:
        wait_for(lambda: _caught_up(client, stream), "archiver caught up", proc, 60)
        ids = _logged_ids(tmp_path / "log")
        assert len(ids) == len(set(ids)), "an event is in the log twice"
        assert set(ids) == {f"e{k}" for k in range(1400)}
        # the lag gauge is set by the archiver's next pass after the acknowledgement
        wait_for(lambda: 'vidrec_archiver_lag_entries{stream="events"} 0.0' in urllib.request
                 .urlopen(f"{url}/metrics", timeout=5).read().decode(), "lag 0 on /metrics",
                 proc, 30)
        # the documented query (docs/learning_loop.md) reads the log with no vidrec code
        import duckdb

        rows = duckdb.sql(f"""
            SELECT day, type, count(*) AS events, count(DISTINCT user_id) AS users
            FROM read_parquet('{tmp_path}/log/events/*/*.parquet', hive_partitioning = true)
            GROUP BY day, type ORDER BY day, type""").fetchall()
        assert sum(r[2] for r in rows) == 1400
        assert {r[1] for r in rows} == {"view", "like", "complete", "skip"}
    finally:
        proc.stop()
        client.close()


def test_every_2xx_event_is_logged_across_a_redis_restart(tmp_path: Path,
                                                          redis_servers: ServerPool) -> None:
    server = redis_servers("--appendonly", "yes", "--appendfsync", "always")
    client = redis.Redis(port=server.port, decode_responses=True)
    env = _env(tmp_path, server.url, VIDREC_ARCHIVE_BATCH="200")
    for v in range(11):
        client.set(Keys(PREFIX).item(f"v{v}"), '{"title": "t", "tags": ["a"], "available": true}')
    fs_port = free_port()
    fs = Process("feature-store", [vidrec_executable(), "serve", "feature-store", "--port",
                                   str(fs_port)], env, tmp_path / "fs.log")
    archiver, _ = _archiver(tmp_path, env, 1)
    accepted: list[str] = []
    stop = threading.Event()

    def send() -> None:
        k = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{fs_port}", timeout=5) as http:
            while not stop.is_set():
                batch = [_event(k + j).model_dump() for j in range(20)]
                k += 20
                try:
                    r = http.post("/v1/events", json={"events": batch})
                except httpx.TransportError:
                    continue
                if r.status_code == 200:
                    accepted.extend(o["event_id"] for o in r.json()["results"])
                time.sleep(0.01)

    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{fs_port}/readyz"), "feature store", fs, 60)
        sender = threading.Thread(target=send)
        sender.start()
        wait_for(lambda: len(accepted) >= 200, "events accepted", fs, 60)
        server.stop(kill=True)  # a crash: only the AOF survives
        time.sleep(0.5)
        server.start()
        n = len(accepted)
        wait_for(lambda: len(accepted) >= n + 200, "events accepted after the restart", fs, 60)
        stop.set()
        sender.join(10)
        client = redis.Redis(port=server.port, decode_responses=True)
        wait_for(lambda: _caught_up(client, Keys(PREFIX).events), "archiver caught up",
                 archiver, 60)
        logged = _logged_ids(tmp_path / "log")
        assert len(logged) == len(set(logged))
        missing = set(accepted) - set(logged)
        assert not missing, f"{len(missing)} accepted events not in the log"
    finally:
        stop.set()
        archiver.stop()
        fs.stop()
        client.close()


@pytest.mark.anyio
async def test_a_stream_trimmed_below_the_backlog_is_reported(
        tmp_path: Path, redis_servers: ServerPool, caplog: pytest.LogCaptureFixture) -> None:
    server = redis_servers()
    settings = Settings(redis_url=server.url, key_prefix=PREFIX)
    redis_client = make_redis(settings)
    stream = Keys(PREFIX).events
    archiver = StreamArchiver(redis_client, EventLog(str(tmp_path / "log")), EVENTS, stream,
                              lambda f: f"{PREFIX}:m:{f['event_id']}",
                              ArchiverConfig(consumer="t", batch=50, block_ms=10))
    try:
        await archiver.ensure_group()
        for k in range(100):
            await redis_client.xadd(stream, stream_fields(_event(k)))
        await redis_client.xtrim(stream, maxlen=10, approximate=False)
        before = ENTRIES.labels("events", "lost")._value.get()
        while await archiver.step():
            pass
        assert ENTRIES.labels("events", "lost")._value.get() - before == 90
        assert "90 entries LOST" in caplog.text
        assert sorted(_logged_ids(tmp_path / "log")) == sorted(f"e{k}" for k in range(90, 100))
    finally:
        await redis_client.aclose()
