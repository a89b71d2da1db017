"""The serving topology: `vidrec serve [all|gateway|retrieval|ranking|feature-store]` runs one
app under uvicorn (uvloop + httptools). "all" is the gateway with every part in-process; a
single name runs that service's own app, and the gateway alone reaches the others through
VIDREC_*_URL."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from fastapi import FastAPI

from shared.settings import Settings, get_settings

SERVICE_ENV = "VIDREC_SERVE_SERVICE"  # tells each worker process which app to build


def build_app(settings: Settings, service: str) -> FastAPI:
    if service in ("all", "gateway"):
        from services.gateway.app import create_app

        if service == "all":  # one process: ignore URLs that might be set in the environment
            settings = settings.model_copy(update={"feature_store_url": None,
                                                   "retrieval_url": None, "ranking_url": None})
        return create_app(settings)
    if service == "retrieval":
        from services.retrieval.app import create_app as retrieval_app

        return retrieval_app(settings)
    if service == "ranking":
        from services.ranking.app import create_app as ranking_app

        return ranking_app(settings)
    if service == "feature-store":
        from services.feature_store.app import create_app as feature_store_app

        return feature_store_app(settings)
    if service == "archiver":
        from services.archiver.app import create_app as archiver_app

        return archiver_app(settings)
    raise ValueError(f"unknown service {service!r}; use all, gateway, retrieval, ranking, "
                     "feature-store or archiver")


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask (taskset, a cpuset), capped by a cgroup v2
    CPU quota (compose's `cpus:`, a pod's CPU limit), rounded up. os.cpu_count() counts the
    host's: a process limited to one CPU kept two onnxruntime threads beside its event loop."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
    except (OSError, ValueError):  # no cgroup v2 (or not Linux): no quota to read
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def fit_ort_threads(settings: Settings, workers: int) -> Settings:
    """Each serving process needs a core for its event loop; onnxruntime's intra-op threads get
    what is left of its share of the machine, at most the configured number. On 2 cores, one
    process with 2 intra-op threads plus its loop oversubscribes them: p99 at 200 req/s went
    from 105 ms to 22 ms with 1 thread (bench/results/serving.json). An explicit
    VIDREC_ORT_INTRA_THREADS is always kept."""
    if "VIDREC_ORT_INTRA_THREADS" in os.environ:
        return settings
    fit = max(1, usable_cpus() // max(1, workers) - 1)
    if settings.ort_intra_threads <= fit:
        return settings
    return settings.model_copy(update={"ort_intra_threads": fit})


# The services the gateway calls (and the archiver's background copy of the event stream): on a
# box they share with the gateway they give it the CPU first (settings.behind_gateway_nice).
BEHIND_GATEWAY = ("retrieval", "ranking", "feature-store", "archiver")


def yield_cpu_to_gateway(settings: Settings, service: str) -> int:
    """Lower this process's CPU priority when `service` runs behind the gateway; returns the
    niceness it runs at. Four services and Redis on 2 cores, at 1x-3x capacity: the gateway's
    refusals p99 6.9-8.0 -> 5.4-6.2 ms, /healthz 8.1-9.1 -> 5.6-7.5 ms, goodput the same or
    higher (bench/results/overload_four_nice.json): a gateway waiting for a core behind the
    model services can neither refuse quickly nor move the requests it already holds."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if service not in BEHIND_GATEWAY or settings.behind_gateway_nice <= current:
        return current
    target = settings.behind_gateway_nice
    # Linux keeps a niceness per thread, and imports have started some already (OpenBLAS's
    # pool): each one is set. Threads started later inherit it from the one starting them.
    tasks = Path("/proc/self/task")
    for tid in (int(t) for t in os.listdir(tasks)) if tasks.is_dir() else (0,):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, target)
        except ProcessLookupError:  # the thread ended since the listing
            continue
    return target


def worker_app() -> FastAPI:
    """uvicorn factory for --workers > 1 (each worker builds its own app)."""
    return build_app(get_settings(), os.environ.get(SERVICE_ENV, "all"))


def serve(settings: Settings, service: str, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    from shared.server import GuardedHttpToolsProtocol  # httptools + header timeout/size


    def run(app: FastAPI | str, factory: bool = False, processes: int | None = None) -> None:
        uvicorn.run(app, factory=factory, workers=processes, host=host, port=port,
                    loop="uvloop", http=GuardedHttpToolsProtocol, log_level="info",
                    access_log=False, timeout_graceful_shutdown=5)

    settings = fit_ort_threads(settings, workers)
    nice = yield_cpu_to_gateway(settings, service)  # before uvicorn's workers: they inherit it
    print(f"vidrec {service}: listening on http://{host}:{port} (docs http://{host}:{port}/docs,"
          f" workers={workers}, onnxruntime threads={settings.ort_intra_threads}, "
          f"CPU niceness {nice})", file=sys.stderr, flush=True)
    if workers > 1:
        os.environ[SERVICE_ENV] = service
        os.environ["VIDREC_ORT_INTRA_THREADS"] = str(settings.ort_intra_threads)  # for workers
        run("services.topology:worker_app", factory=True, processes=workers)
    else:
        run(build_app(settings, service))
