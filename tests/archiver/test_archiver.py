"""The archiver against real processes: its own redis-server (AOF), `vidrec archive` and the
feature store's HTTP app as separate processes, killed by pid.

- SIGKILL between writing a batch and acknowledging it, and at an arbitrary moment, then a
  restart: every event in the log exactly once (stream duplicates from retries included),
  with batch entries claimed per event and whole ("once") ones claimed per entry; a whole
  entry replayed into a differently cut batch after a SIGKILL is still archived once.
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
from services.archiver.eventlog import EVENTS, IMPRESSIONS, EventLog
from services.feature_store.codec import stream_entry
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


def _entry(first: int, n: int, once: bool = False, **extra: str) -> dict:
    """A batch entry of events first .. first+n-1, as the gateway writes it (codec)."""
    fields: dict = stream_entry([_event(k) for k in range(first, first + n)])
    return {**fields, **({"once": "1"} if once else {}), **extra}


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
    for c in range(120):  # 1,200 events in entries of 10
        if c % 4 == 3:  # written by the batch script: claimed as a whole
            pipe.xadd(stream, _entry(10 * c, 10, once=True))
        else:  # appended outside the script (a cluster): claimed event by event
            pipe.xadd(stream, _entry(10 * c, 10))
        if c % 4 == 3:
            continue  # its events are "done": no retry can append them again
        if c % 5 == 2:  # a client retry after a failure between XADD and the markers
            pipe.xadd(stream, _entry(10 * c + 4, 6))
        if c % 9 == 1:  # a retry's entry, written once, with two "pending" replays in it
            pipe.xadd(stream, _entry(10 * c, 2, once=True, replayed="0,1"))
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
    wait_for(lambda: client.xinfo_groups(stream)[0]["entries-read"] >= 60, "archiving",
             proc, 60)
    proc.proc.kill()
    proc.stop()
    for c in range(120, 140):  # and events keep arriving while it is down
        client.xadd(stream, _entry(10 * c, 10, once=c % 2 == 0))

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


def test_a_whole_batch_entry_replayed_in_another_cut_is_archived_once(
        tmp_path: Path, redis_servers: ServerPool) -> None:
    """Entries of 1,000 events written once (the gateway's batches). Killed between writing
    its first file (two entries) and acknowledging; restarted with bigger reads, it replays
    those entries inside a batch of another cut, so a file of another name: the entry markers
    keep every event in the log once."""
    server = redis_servers("--appendonly", "yes", "--appendfsync", "always")
    client = redis.Redis(port=server.port, decode_responses=True)
    stream = Keys(PREFIX).events
    for c in range(6):
        client.xadd(stream, _entry(1000 * c, 1000, once=True))
    env = _env(tmp_path, server.url, VIDREC_ARCHIVE_BATCH="2000")
    proc, _ = _archiver(tmp_path, {**env, "VIDREC_ARCHIVE_PAUSE_BEFORE_ACK_S": "30"}, 1)
    wait_for(lambda: "acknowledging in" in proc.log_tail(), "first batch written", proc, 60)
    proc.proc.kill()
    proc.stop()
    (first,) = (tmp_path / "log" / "events").rglob("*.parquet")
    assert len(_logged_ids(tmp_path / "log")) == 2000  # two whole entries, not acknowledged

    proc, _ = _archiver(tmp_path, {**env, "VIDREC_ARCHIVE_BATCH": "3000"}, 2)
    try:
        wait_for(lambda: _caught_up(client, stream), "archiver caught up", proc, 60)
        files = sorted((tmp_path / "log" / "events").rglob("*.parquet"))
        assert first in files and len(files) >= 3  # the replay was cut differently
        ids = _logged_ids(tmp_path / "log")
        assert len(ids) == len(set(ids)) == 6000
        assert set(ids) == {f"e{k}" for k in range(6000)}
        # each event keeps its place: <entry id>-<position in the entry>
        table = EventLog(str(tmp_path / "log")).read(EVENTS, ["event_id", "stream_id"])
        assert [s.rsplit("-", 1)[1] for s in table.column("stream_id").to_pylist()[:3]] == [
            "0", "1", "2"]
        assert table.column("event_id").to_pylist()[:3] == ["e0", "e1", "e2"]
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
        for c in range(100):  # entries of 3 events
            await redis_client.xadd(stream, _entry(3 * c, 3, once=True))
        await redis_client.xtrim(stream, maxlen=10, approximate=False)
        before = ENTRIES.labels("events", "lost")._value.get()
        while await archiver.step():
            pass
        # lost counts stream entries: how many events they held is gone with them
        assert ENTRIES.labels("events", "lost")._value.get() - before == 90
        assert "90 entries LOST" in caplog.text
        assert sorted(_logged_ids(tmp_path / "log")) == sorted(f"e{k}" for k in range(270, 300))
    finally:
        await redis_client.aclose()


@pytest.mark.anyio
async def test_one_record_entries_are_archived_once(tmp_path: Path,
                                                    redis_servers: ServerPool) -> None:
    """Impressions are one record per entry, claimed one by one."""
    server = redis_servers()
    redis_client = make_redis(Settings(redis_url=server.url, key_prefix=PREFIX))
    stream = f"{PREFIX}:impressions"
    log = EventLog(str(tmp_path / "log"))
    archiver = StreamArchiver(redis_client, log, IMPRESSIONS, stream,
                              lambda f: f"{PREFIX}:m:{f['request_id']}",
                              ArchiverConfig(consumer="t", batch=4, block_ms=10))

    def impression(k: int) -> dict[str, str]:
        return {"request_id": f"r{k}", "user_id": "u", "experiment": "x", "arm": "a",
                "model_version": "m", "items": '["v1", "v2"]', "timestamp": "1.5",
                "ctr_k": "10", "forced": "0"}

    try:
        await archiver.ensure_group()
        for k in [0, 1, 2, 1, 3, 4, 0, 5]:  # r0 and r1 twice
            await redis_client.xadd(stream, impression(k))
        while await archiver.step():
            pass
        table = log.read(IMPRESSIONS)
        assert table.column("request_id").to_pylist() == [f"r{k}" for k in range(6)]
        assert table.column("items").to_pylist()[0] == ["v1", "v2"]
        assert table.column("forced").to_pylist()[0] is False
    finally:
        await redis_client.aclose()
