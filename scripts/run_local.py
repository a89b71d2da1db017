"""`make run`: from a fresh checkout to a serving API on http://127.0.0.1:8000.

    1. build the bundle if artifacts/<bundle> is missing (`vidrec build --dataset ...`)
    2. make sure Redis answers at VIDREC_REDIS_URL; start a local redis-server if it does not
       (and one is installed), else say how to get one
    3. load the bundle into Redis (`vidrec load`), unless this bundle is already loaded there
    4. serve everything in one process, after printing the pages' addresses (/ and /console)
       and curl examples with real user ids

Usage: python -m scripts.run_local [--dataset microlens-50k] [--port 8000] [--reload-data]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from shared.bundle import Bundle, BundleError
from shared.settings import Settings, get_settings

LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


class LocalRedis:
    """A throwaway redis-server (no persistence) on `port`, stopped by its pid."""

    def __init__(self, port: int, workdir: Path | None = None) -> None:
        self.port = port
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="vidrec-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait_s: float = 10.0) -> LocalRedis:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while not redis_answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def redis_answers(url: str, password: str | None = None) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, password=password, socket_connect_timeout=0.5,
                                      socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def _dataset_of(bundle: Bundle) -> str:
    return str(bundle.manifest.get("dataset", ""))


def built_from(bundle: Bundle, dataset: str) -> bool:
    """Built from the whole of `dataset` (a name, or the folder given to `vidrec build`)."""
    m = bundle.manifest
    return m.get("dataset") == dataset or (
        m.get("dataset_arg") == dataset and "sample" not in str(m.get("dataset")))


def newest_bundle_for(settings: Settings, dataset: str) -> Bundle | None:
    """The newest complete bundle under artifacts_dir built from `dataset` (full, not sampled)."""
    found = []
    for manifest in Path(settings.artifacts_dir).glob("*/manifest.json"):
        if manifest.parent.is_symlink():
            continue
        try:
            bundle = Bundle(manifest.parent.resolve())
            if built_from(bundle, dataset):
                found.append((manifest.stat().st_mtime, bundle))
        except (BundleError, ValueError, OSError):
            continue
    return max(found, key=lambda f: f[0])[1] if found else None


def ensure_bundle(settings: Settings, dataset: str) -> tuple[Settings, Bundle]:
    """The bundle to serve: VIDREC_BUNDLE if set explicitly; else the newest bundle of
    `dataset`, built first when there is none."""
    if settings.bundle != "latest":
        return settings, Bundle.open(settings.artifacts_dir, settings.bundle)
    try:
        latest = Bundle.open(settings.artifacts_dir, "latest")
        if built_from(latest, dataset):
            return settings, latest
    except BundleError:
        pass
    bundle = newest_bundle_for(settings, dataset)
    if bundle is None:
        print(f"[run] no {dataset} bundle under {settings.artifacts_dir}: building one "
              "(several minutes on 2 CPU cores)...", flush=True)
        # A child process: the build imports torch, the server must not.
        subprocess.run([sys.executable, "-m", "vidrec_cli", "build", "--dataset", dataset],
                       check=True)
        bundle = Bundle.open(settings.artifacts_dir, "latest")
    print(f"[run] serving bundle {bundle.version} ({_dataset_of(bundle)})", flush=True)
    return settings.model_copy(update={"bundle": bundle.version}), bundle


def ensure_redis(settings: Settings) -> LocalRedis | None:
    """None when Redis already answers; the server we started otherwise. Exits with
    instructions when there is no way to get one here."""
    if redis_answers(settings.redis_url, settings.redis_password):
        return None
    parts = urlsplit(settings.redis_url)
    if parts.scheme == "redis" and (parts.hostname or "") in LOOPBACK and \
            shutil.which("redis-server"):
        print(f"[run] nothing answers at {settings.redis_url}; starting redis-server "
              f"(no persistence) on port {parts.port or 6379}", flush=True)
        server = LocalRedis(parts.port or 6379).start()
        atexit.register(server.stop)
        return server
    sys.exit(f"[run] Redis does not answer at {settings.redis_url}.\n"
             "  Install and start one:  sudo apt-get install redis-server  (Debian/Ubuntu)\n"
             "                          brew install redis && brew services start redis  (macOS)\n"
             "                          docker run -d -p 6379:6379 redis:7\n"
             "  or point VIDREC_REDIS_URL at a running Redis.")


def ensure_loaded(settings: Settings, bundle: Bundle, force: bool) -> None:
    import redis

    from services.feature_store.keys import Keys

    client = redis.Redis.from_url(settings.redis_url, password=settings.redis_password,
                                  decode_responses=True)
    try:
        loaded = client.hget(Keys(settings.key_prefix, settings.events_stream).loaded, "bundle")
    finally:
        client.close()
    if loaded == bundle.version and not force:
        print(f"[run] Redis already holds bundle {bundle.version} (--reload-data to reload; "
              "that replaces live histories)", flush=True)
        return
    from services.feature_store.loader import load_bundle

    load_bundle(settings, settings.bundle)


def example_users(bundle: Bundle, n: int = 3) -> list[str]:
    users = bundle.users()
    ranked = sorted(users, key=lambda u: len(users[u]), reverse=True)
    mid = len(ranked) // 2  # typical users, not the heaviest ones
    return ranked[mid: mid + n] or ranked[:n]


def print_examples(base: str, users: list[str], item_id: str, token: str) -> None:
    u = users[0] if users else "some-user"
    print(f"""
[run] vidrec is starting on {base}  (API docs: {base}/docs)
[run] try it in a browser:  {base}/        operator's console:  {base}/console
  curl '{base}/v1/users/{u}/recommendations?k=10'
  curl '{base}/v1/users/{users[-1] if users else u}/history?limit=5'
  curl '{base}/v1/users/new-user-1/recommendations?k=5&interests=funny'
  curl -X POST {base}/v1/events -H 'content-type: application/json' \\
       -d '{{"event_id":"e-1","user_id":"{u}","item_id":"{item_id}","type":"like",\
"timestamp":"{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}","watch_fraction":0.9}}'
  curl '{base}/v1/items/{item_id}'
  curl '{base}/v1/popular?k=5'
  curl -X POST {base}/admin/reload -H 'Authorization: Bearer {token}'
""", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="microlens-50k")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--reload-data", action="store_true",
                   help="Load the bundle into Redis even if it is already there.")
    args = p.parse_args(argv)
    settings, bundle = ensure_bundle(get_settings(), args.dataset)
    server = ensure_redis(settings)
    ensure_loaded(settings, bundle, force=args.reload_data or server is not None)
    item_id = bundle.items[0]["item_id"]
    print_examples(f"http://{args.host}:{args.port}", example_users(bundle), item_id,
                   settings.admin_token)

    from services.topology import serve

    try:
        serve(settings, "all", args.host, args.port)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
