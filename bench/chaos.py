"""Chaos while traffic flows: the four-service topology as processes, a steady open-loop mix of
recommendations and events, and one fault after another:

    kill -9 + restart ranking, retrieval, feature store, gateway (same port)
    kill -9 + restart Redis (its own redis-server, AOF with appendfsync always)
    Redis slow and flaky, then ranking slow and flaky (a TCP proxy: 50-500 ms per chunk,
    5% of chunks drop the connection; tests/overload/proxy.py)

Checked for every fault: 0 gateway 5xx for recommendations (and no client timeouts; connection
errors only while the gateway itself is down), answers flagged `degraded` only while a fault
lasts (from requests in flight when it starts until the part is back plus `RECOVERY_S` = 5 s),
the fault visible while it lasts (the check can fail), and 0 accepted events lost: every event
answered 2xx has its dedupe marker "done" in Redis and its entry in the events stream.

    .venv/bin/python -m bench.chaos [--rate 40] [--hold 8] [--observe 8]

The CI test (tests/overload/test_chaos.py) runs the same phases on the small bundle at a lower
rate with short holds; this longer run uses VIDREC_BUNDLE (MicroLens-50k) and writes
bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.openloop import Outcome, Request, Run, open_loop
from tests.overload.proxy import FaultProxy
from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "chaos.json"
SERVICES = ("feature-store", "retrieval", "ranking", "gateway")
RECOVERY_S = 5.0
EVENT_EVERY = 4  # one request in 4 is an event
CLIENT_TIMEOUT_S = 3.0
# A request due this long before a fault may still be in flight when it starts (every stage
# waiting out its timeout): it meets the fault, so its degraded answer belongs to it.
IN_FLIGHT_S = 2.0


@dataclass
class Fault:
    name: str
    start: float  # seconds on the traffic's clock
    end: float = 0.0  # when the part was back (restarted and ready, or the proxy healed)


@dataclass
class Topology:
    """redis-server (AOF) <- Redis proxy <- services; gateway -> ranking proxy -> ranking."""

    tmp: Path
    artifacts_dir: Path
    bundle: str
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    redis_port: int = 0
    redis_proxy: FaultProxy | None = None
    ranking_proxy: FaultProxy | None = None
    prefix: str = field(default_factory=lambda: f"vidrec:chaos:{uuid.uuid4().hex[:8]}")

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def env(self, service: str) -> dict[str, str]:
        assert self.redis_proxy and self.ranking_proxy
        env = {k: v for k, v in os.environ.items() if not k.endswith("_URL")
               or not k.startswith("VIDREC_")}
        env.update({
            "PYTHONUNBUFFERED": "1", "VIDREC_ARTIFACTS_DIR": str(self.artifacts_dir),
            "VIDREC_BUNDLE": self.bundle, "VIDREC_KEY_PREFIX": self.prefix,
            "VIDREC_REDIS_URL": f"redis://127.0.0.1:{self.redis_proxy.port}/0",
            "VIDREC_STATE_DIR": str(self.tmp / "state"), "VIDREC_USE_GPU": "false",
            "VIDREC_ADMIN_TOKEN": "chaos-token", **self.extra_env})
        if service == "gateway":
            env.update({"VIDREC_FEATURE_STORE_URL": self.url("feature-store"),
                        "VIDREC_RETRIEVAL_URL": self.url("retrieval"),
                        "VIDREC_RANKING_URL": f"http://127.0.0.1:{self.ranking_proxy.port}"})
        return env

    # -- redis ---------------------------------------------------------------------------
    def start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.redis_port = self.redis_port or free_port()
        log = (self.tmp / "redis.log").open("ab")
        self.procs["redis"] = subprocess.Popen(
            [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.tmp)],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.redis().ping(), "redis", 20)

    def redis(self):
        import redis

        return redis.Redis(port=self.redis_port, decode_responses=True, socket_timeout=5)

    # -- services ------------------------------------------------------------------------
    def start(self, service: str, wait: bool = True) -> None:
        port = self.ports.setdefault(service, free_port())
        log = (self.tmp / f"{service}.log").open("ab")
        self.procs[service] = subprocess.Popen(
            [sys.executable, "-m", "vidrec_cli", "serve", service, "--port", str(port)],
            cwd=REPO, env=self.env(service), stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(service)

    def wait_ready(self, service: str, timeout_s: float = 180.0) -> None:
        proc = self.procs[service]

        def ready() -> bool:
            if proc.poll() is not None:
                log = (self.tmp / f"{service}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{service} exited with {proc.returncode}:\n{log}")
            return httpx.get(f"{self.url(service)}/readyz", timeout=2).status_code == 200

        wait_for(ready, service, timeout_s)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> Topology:
        from services.feature_store.loader import load_bundle
        from shared.settings import Settings

        self.redis_proxy = FaultProxy(0).__enter__()  # upstream set once Redis has a port
        self.ranking_proxy = None
        try:
            self.start_redis()
            self.redis_proxy.upstream = ("127.0.0.1", self.redis_port)
            load_bundle(Settings(artifacts_dir=self.artifacts_dir, bundle=self.bundle,
                                 redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
                                 key_prefix=self.prefix), self.bundle, progress=False)
            self.ports["ranking"] = free_port()
            self.ranking_proxy = FaultProxy(self.ports["ranking"]).__enter__()
            for service in ("feature-store", "retrieval", "ranking"):
                self.start(service, wait=False)
            for service in ("feature-store", "retrieval", "ranking"):
                self.wait_ready(service)
            self.start("gateway")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proxy in (self.redis_proxy, self.ranking_proxy):
            if proxy is not None:
                proxy.__exit__(None, None, None)


def wait_for(check: Callable[[], object], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError, ConnectionError) as exc:
            last = exc
        except Exception as exc:  # redis errors and the like: not ready yet
            if isinstance(exc, RuntimeError):
                raise
            last = exc
        else:
            last = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s} s ({last!r})")
        time.sleep(0.1)


# ---- traffic -----------------------------------------------------------------------------------
class Traffic:
    """Open-loop traffic in a thread: GET recommendations, and every 4th request an event."""

    def __init__(self, port: int, users: list[str], items: list[str], rate: float,
                 max_s: float) -> None:
        rng = random.Random(3)
        n = int(rate * max_s) + 1
        self.picks = [(rng.choice(users), rng.choice(items)) for _ in range(n)]
        self.tag = uuid.uuid4().hex[:6]
        self.port, self.rate, self.max_s = port, rate, max_s
        self.run = Run()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._started = threading.Event()

    def request(self, i: int) -> Request:
        user, item = self.picks[i]
        if i % EVENT_EVERY == EVENT_EVERY - 1:
            return Request("POST", "/v1/events", json.dumps({
                "event_id": self.event_id(i), "user_id": user, "item_id": item,
                "type": "view", "timestamp": time.time()}).encode())
        return Request("GET", f"/v1/users/{user}/recommendations?k=10")

    def event_id(self, i: int) -> str:
        return f"chaos-{self.tag}-{i}"

    def is_event(self, o: Outcome) -> bool:
        return o.index % EVENT_EVERY == EVENT_EVERY - 1

    def _main(self) -> None:
        async def go() -> None:
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            run_task = asyncio.ensure_future(open_loop(
                "127.0.0.1", self.port, self.request, self.rate, self.max_s, CLIENT_TIMEOUT_S,
                stop=self._stop, run=self.run))
            await asyncio.sleep(0.1)  # run.start is set by now
            self._started.set()
            await run_task

        asyncio.run(go())

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def now(self) -> float:
        """Seconds on the traffic's clock (what Outcome.due is measured on)."""
        return time.perf_counter() - self.run.start

    def stop(self) -> Run:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        return self.run


# ---- the faults --------------------------------------------------------------------------------
def run_chaos(topo: Topology, users: list[str], items: list[str], rate: float, hold_s: float,
              observe_s: float, slow: tuple[float, float] = (0.05, 0.5), drop: float = 0.05,
              log: Callable[[str], None] = print) -> dict:
    faults: list[Fault] = []
    total_s = 60 + 8 * (hold_s + observe_s + 60)  # an upper bound; stopped when done
    warm_up(topo.url("gateway"), users)
    traffic = Traffic(topo.ports["gateway"], users, items, rate, total_s)
    traffic.start()
    now = traffic.now
    time.sleep(observe_s)
    for service in ("ranking", "retrieval", "feature-store", "gateway"):
        fault = Fault(f"kill -9 {service}", now())
        topo.kill(service)
        time.sleep(hold_s)
        topo.start(service)
        fault.end = now()
        faults.append(fault)
        log(f"[chaos] {fault.name}: back after {fault.end - fault.start:.1f} s")
        time.sleep(observe_s)
    fault = Fault("kill -9 redis (AOF)", now())
    topo.kill("redis")
    time.sleep(hold_s)
    topo.start_redis()
    topo.wait_ready("feature-store")
    fault.end = now()
    faults.append(fault)
    log(f"[chaos] {fault.name}: back after {fault.end - fault.start:.1f} s")
    time.sleep(observe_s)
    assert topo.redis_proxy and topo.ranking_proxy
    for name, proxy in (("redis slow+flaky", topo.redis_proxy),
                        ("ranking slow+flaky", topo.ranking_proxy)):
        fault = Fault(name, now())
        proxy.slow(*slow)
        proxy.flaky(drop)
        time.sleep(hold_s)
        proxy.heal()
        fault.end = now()
        faults.append(fault)
        log(f"[chaos] {fault.name}: healed after {fault.end - fault.start:.1f} s")
        time.sleep(observe_s)
    return check(traffic.stop(), faults, traffic, topo)


def warm_up(base: str, users: list[str], n: int = 100) -> None:
    """Connections, caches and the ranker's first runs, before anything is measured."""
    with httpx.Client(base_url=base, timeout=30) as http:
        for user in users[:n]:
            http.get(f"/v1/users/{user}/recommendations", params={"k": 10}).raise_for_status()


def check(run: Run, faults: list[Fault], traffic: Traffic, topo: Topology) -> dict:
    def fault_at(t: float, recovery: float = RECOVERY_S) -> Fault | None:
        for f in faults:
            if f.start - IN_FLIGHT_S <= t <= f.end + recovery:
                return f
        return None

    gateway_down = next(f for f in faults if f.name == "kill -9 gateway")
    recs = [o for o in run.outcomes if not traffic.is_event(o)]
    events = [o for o in run.outcomes if traffic.is_event(o)]
    problems: list[str] = []
    per_fault = {f.name: {"start_s": round(f.start, 2), "end_s": round(f.end, 2),
                          "seconds": round(f.end - f.start, 2), "recommendations": 0,
                          "degraded": 0, "degraded_stages": {}, "events_2xx": 0,
                          "events_503": 0, "last_degraded_after_end_s": None,
                          "connection_errors": 0} for f in faults}
    for o in recs:
        f = fault_at(o.due)
        if 500 <= o.status < 600:
            problems.append(f"recommendation {o.index} at {o.due:.1f} s: HTTP {o.status}")
        elif o.status == 0:
            # due before the kill but still in flight when it came also fails
            in_gateway_gap = gateway_down.start - CLIENT_TIMEOUT_S <= o.due <= gateway_down.end
            if o.error == "TimeoutError" or not in_gateway_gap:
                problems.append(f"recommendation {o.index} at {o.due:.1f} s: {o.error}")
            if f is not None:
                per_fault[f.name]["connection_errors"] += 1
            continue
        if f is not None:
            stats = per_fault[f.name]
            stats["recommendations"] += 1
            if o.degraded:
                stats["degraded"] += 1
                for s in o.degraded:
                    stats["degraded_stages"][s] = stats["degraded_stages"].get(s, 0) + 1
                after = round(o.due - f.end, 2)
                if stats["last_degraded_after_end_s"] is None or after > \
                        stats["last_degraded_after_end_s"]:
                    stats["last_degraded_after_end_s"] = after
        elif o.degraded:
            problems.append(f"recommendation {o.index} at {o.due:.1f} s degraded "
                            f"{list(o.degraded)} with no fault in the last {RECOVERY_S} s")
    for f in faults:
        if f is not gateway_down and per_fault[f.name]["degraded"] == 0:
            problems.append(f"{f.name}: no answer was degraded while it lasted (not a fault?)")
    accepted = []
    for o in events:
        f = fault_at(o.due)
        if 200 <= o.status < 300:
            accepted.append(o)
            if f is not None:
                per_fault[f.name]["events_2xx"] += 1
        elif o.status == 503 and f is not None:
            per_fault[f.name]["events_503"] += 1
        elif o.status == 0 and (gateway_down.start - CLIENT_TIMEOUT_S <= o.due
                                <= gateway_down.end):
            pass  # the gateway was down: the client saw it fail and would retry
        else:
            problems.append(f"event {o.index} at {o.due:.1f} s: {o.status or o.error}")
    lost = lost_events(topo, traffic, accepted)
    if lost:
        problems.append(f"{len(lost)} accepted event(s) not in Redis: {lost[:5]}")
    return {"requests": len(run.outcomes), "recommendations": len(recs),
            "recommendations_5xx": sum(500 <= o.status < 600 for o in recs),
            "recommendations_degraded": sum(bool(o.degraded) for o in recs),
            "events_sent": len(events), "events_accepted": len(accepted),
            "events_lost": len(lost), "generator_late_starts": run.late_starts,
            "faults": per_fault, "problems": problems}


def lost_events(topo: Topology, traffic: Traffic, accepted: list[Outcome]) -> list[str]:
    from services.feature_store.codec import unpack_stream_events
    from services.feature_store.keys import Keys

    keys = Keys(topo.prefix)
    client = topo.redis()
    try:
        # one stream entry per recorded batch (docs/feature_store.md)
        streamed = {event_id for _, fields in client.xrange(keys.events)
                    for event_id in unpack_stream_events(fields)[0]["event_id"]}
        pipe = client.pipeline(transaction=False)
        for o in accepted:
            user, _ = traffic.picks[o.index]
            pipe.get(keys.dedupe(user, traffic.event_id(o.index)))
        markers = pipe.execute()
    finally:
        client.close()
    return [traffic.event_id(o.index) for o, m in zip(accepted, markers, strict=True)
            if m != "done" or traffic.event_id(o.index) not in streamed]


def bundle_users_items(artifacts_dir: Path, bundle: str) -> tuple[list[str], list[str]]:
    from shared.bundle import Bundle

    b = Bundle.open(artifacts_dir, bundle)
    users = [u for u, seq in b.users().items() if seq]
    items = [str(it["item_id"]) for it in b.items]
    rng = random.Random(9)
    return rng.sample(users, min(2000, len(users))), rng.sample(items, min(2000, len(items)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=40.0, help="Requests/s (1 in 4 an event).")
    p.add_argument("--hold", type=float, default=8.0, help="Seconds each fault lasts.")
    p.add_argument("--observe", type=float, default=8.0, help="Seconds between faults.")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    from shared.settings import get_settings

    settings = get_settings()
    users, items = bundle_users_items(settings.artifacts_dir, settings.bundle)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidrec-chaos-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with Topology(tmp, Path(settings.artifacts_dir).resolve(), settings.bundle,
                  extra_env=CHAOS_ENV) as topo:
        result = run_chaos(topo, users, items, args.rate, args.hold, args.observe)
    result.update({"rate": args.rate, "hold_s": args.hold, "observe_s": args.observe,
                   "bundle": settings.bundle, "env": CHAOS_ENV, "logs": str(tmp),
                   "seconds": round(time.time() - started, 1),
                   "load_avg_1m": round(os.getloadavg()[0], 2),
                   "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "faults"}, indent=2))
    for name, stats in result["faults"].items():
        print(f"  {name:24s} {json.dumps(stats)}")
    print(f"written to {out}")
    return 1 if result["problems"] else 0


# Stage timeouts as shipped, and the in-flight bound sized for the slowest fault: a request
# may wait out every stage timeout (~0.3 s) plus the gateway's own work, and at 40 req/s that is
# ~16 requests in flight (Little's law; docs/capacity.md). Past it (a CPU-starved box while a
# service restarts next door) recommendations get the flagged popular list, not a 503: the
# setting for a deployment that must never answer recommendations with 5xx. Such answers
# count as degraded, so outside a fault they are reported as problems.
CHAOS_ENV = {"VIDREC_MAX_IN_FLIGHT": "32", "VIDREC_SHED_RECOMMENDATIONS": "popular"}

if __name__ == "__main__":
    sys.exit(main())
