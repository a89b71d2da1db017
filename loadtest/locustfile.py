"""Load test of the public API (locust), with a traffic mix like real viewers':

    known viewers (9 in 10)   real user ids from the bundle's users.json: mostly
                              recommendations, then a "watch" (POST /v1/events on an item that
                              was recommended, unique event id), item pages, their history
    new viewers   (1 in 10)   unknown ids with a few interests (tags from items.json):
                              cold-start recommendations, the popular list, a first event

Every answer is checked (status, shape, ids, "accepted"), so a wrong answer is a failure, not
only an error status. Degraded answers (`degraded` not empty) are counted apart.

The bundle is read from $VIDREC_ARTIFACTS_DIR/$VIDREC_BUNDLE (default artifacts/latest), the
same settings the services use. Only the standard library and locust are imported, so the file
runs in the stock locust image too (docker-compose.yml, profile `loadtest`).

    make loadtest HOST=http://127.0.0.1:8000          # headless; results in bench/results/
    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 2m --host URL \
        --csv bench/results/loadtest --summary-json bench/results/loadtest.json

--summary-json (env LOCUST_SUMMARY_JSON) writes p50/p95/p99, requests per second and failures
per endpoint and in total; --csv writes locust's own CSV files (loadtest_stats.csv, ...).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser

# The gateway routes this file calls (request names in the statistics). tests/deploy checks
# that each one is a route of the gateway app.
ROUTES = {
    "recommendations": "/v1/users/{user_id}/recommendations",
    "events": "/v1/events",
    "item": "/v1/items/{item_id}",
    "history": "/v1/users/{user_id}/history",
    "popular": "/v1/popular",
}
EVENT_TYPES = (("view", 0.6), ("complete", 0.2), ("like", 0.1), ("skip", 0.1))
K = 20


# ---- the bundle's users and items -------------------------------------------------------------
def bundle_dir() -> Path:
    artifacts = Path(os.environ.get("VIDREC_ARTIFACTS_DIR", "artifacts"))
    version = os.environ.get("VIDREC_BUNDLE", "latest")
    return Path(version) if Path(version).is_absolute() else artifacts / version


class Catalog:
    """User ids, item ids and common tags of one bundle, loaded once per locust process."""

    def __init__(self, path: Path) -> None:
        try:
            users = json.loads((path / "users.json").read_text())
            items = json.loads((path / "items.json").read_text())
        except FileNotFoundError as exc:
            raise SystemExit(f"loadtest: {exc.filename} not found; set VIDREC_ARTIFACTS_DIR "
                             "(and VIDREC_BUNDLE) to a built bundle") from None
        self.path = path
        self.user_ids = [u for u, seq in users.items() if seq]
        self.item_ids = [str(it["item_id"]) for it in items]
        tag_counts = Counter(t for it in items for t in it.get("tags", []))
        self.tags = [t for t, _ in tag_counts.most_common(200)]
        if not self.user_ids or not self.item_ids:
            raise SystemExit(f"loadtest: {path} has no users or no items")


_catalog: Catalog | None = None


def catalog() -> Catalog:
    global _catalog
    if _catalog is None:
        _catalog = Catalog(bundle_dir())
    return _catalog


# ---- users ------------------------------------------------------------------------------------
class Viewer(FastHttpUser):
    abstract = True
    wait_time = between(0.05, 0.3)

    user_id: str
    interests: list[str]
    recent: list[str]

    def on_start(self) -> None:
        self.interests = []
        self.recent = []

    def recommend(self) -> None:
        params: list[tuple[str, str]] = [("k", str(K))]
        params += [("interests", t) for t in self.interests]
        with self.client.get(ROUTES["recommendations"].format(user_id=self.user_id),
                             params=params, name=ROUTES["recommendations"],
                             catch_response=True) as resp:
            body = checked_json(resp)
            if body is None:
                return
            items = body.get("items")
            if not isinstance(items, list) or not items or len(items) > K:
                resp.failure(f"expected 1..{K} items, got {items!r:.200}")
                return
            if body.get("degraded"):
                DEGRADED.update(body["degraded"])
            self.recent = [it["item_id"] for it in items]
            resp.success()

    def watch(self) -> None:
        """A view/like/skip/complete on a recommended item (a catalog item if none yet)."""
        n = 1 if random.random() < 0.8 else random.randint(2, 5)
        pool = self.recent or catalog().item_ids
        batch = [new_event(self.user_id, random.choice(pool)) for _ in range(n)]
        body = batch[0] if n == 1 else {"events": batch}
        with self.client.post(ROUTES["events"], json=body, name=ROUTES["events"],
                              catch_response=True) as resp:
            answer = checked_json(resp)
            if answer is None:
                return
            statuses = [r.get("status") for r in answer.get("results", [])]
            if statuses != ["accepted"] * n:  # ids are unique: anything else is a bug
                resp.failure(f"expected {n} x accepted, got {statuses}")
            else:
                resp.success()

    def item_page(self) -> None:
        item_id = random.choice(self.recent or catalog().item_ids)
        with self.client.get(ROUTES["item"].format(item_id=item_id), name=ROUTES["item"],
                             catch_response=True) as resp:
            body = checked_json(resp)
            if body is not None:
                if body.get("item_id") != item_id:
                    resp.failure(f"asked for {item_id}, got {body.get('item_id')!r}")
                else:
                    resp.success()


class KnownViewer(Viewer):
    """A user from the bundle: their history and tag profile are in Redis."""

    weight = 9

    def on_start(self) -> None:
        super().on_start()
        self.user_id = random.choice(catalog().user_ids)

    @task(14)
    def recommendations(self) -> None:
        self.recommend()

    @task(3)
    def event(self) -> None:
        self.watch()

    @task(2)
    def item(self) -> None:
        self.item_page()

    @task(1)
    def history(self) -> None:
        with self.client.get(ROUTES["history"].format(user_id=self.user_id),
                             params={"limit": "20"}, name=ROUTES["history"],
                             catch_response=True) as resp:
            body = checked_json(resp)
            if body is not None:
                if body.get("user_id") != self.user_id or not isinstance(body.get("items"), list):
                    resp.failure(f"unexpected history body {body!r:.200}")
                else:
                    resp.success()


class NewViewer(Viewer):
    """A first visit: an unknown id with a few interests picked at sign-up."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.user_id = f"loadtest-new-{uuid.uuid4().hex[:16]}"
        tags = catalog().tags
        self.interests = random.sample(tags, k=min(len(tags), random.randint(1, 3)))

    @task(4)
    def recommendations(self) -> None:
        self.recommend()

    @task(1)
    def popular(self) -> None:
        with self.client.get(ROUTES["popular"], params={"k": str(K)}, name=ROUTES["popular"],
                             catch_response=True) as resp:
            body = checked_json(resp)
            if body is not None:
                if not isinstance(body.get("items"), list) or not body["items"]:
                    resp.failure(f"empty popular list {body!r:.200}")
                else:
                    resp.success()

    @task(1)
    def event(self) -> None:
        self.watch()


def new_event(user_id: str, item_id: str) -> dict:
    kind = random.choices([t for t, _ in EVENT_TYPES], [w for _, w in EVENT_TYPES])[0]
    fraction = {"complete": 1.0, "skip": round(random.uniform(0.0, 0.1), 3)}.get(
        kind, round(random.uniform(0.2, 1.0), 3))
    return {"event_id": f"loadtest-{uuid.uuid4().hex}", "user_id": user_id, "item_id": item_id,
            "type": kind, "timestamp": time.time(), "watch_fraction": fraction}


def checked_json(resp) -> dict | None:
    """The JSON body of a 200 answer; otherwise marks the request failed and returns None."""
    if resp.status_code != 200:
        resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
        return None
    try:
        body = resp.json()
    except ValueError:
        resp.failure(f"not JSON: {(resp.text or '')[:200]}")
        return None
    if not isinstance(body, dict):
        resp.failure(f"expected an object, got {body!r:.200}")
        return None
    return body


# ---- summary file ------------------------------------------------------------------------------
DEGRADED: Counter[str] = Counter()
STARTED = {"at": time.time()}


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--summary-json", type=str, env_var="LOCUST_SUMMARY_JSON", default="",
                        help="Write p50/p95/p99, requests/s and failures (JSON) to this file.")


@events.test_start.add_listener
def _started(environment, **_kw) -> None:
    # Stamped before the catalogue loads: locust's --run-time clock is already running by the
    # time test_start fires, so a start stamped after a slow load reads short of --run-time.
    STARTED["at"] = time.time()
    catalog()  # fail at the start, not in every user, when the bundle is missing


@events.quitting.add_listener
def _write_summary(environment, **_kw) -> None:
    path = getattr(environment.parsed_options, "summary_json", "")
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary(environment), indent=2) + "\n")


def _entry_stats(entry) -> dict:
    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": round(entry.total_rps, 2),
        "p50_ms": entry.get_response_time_percentile(0.50),
        "p95_ms": entry.get_response_time_percentile(0.95),
        "p99_ms": entry.get_response_time_percentile(0.99),
        "avg_ms": round(entry.avg_response_time, 2),
        "max_ms": round(entry.max_response_time or 0, 2),
    }


def summary(environment) -> dict:
    stats = environment.stats
    opts = environment.parsed_options
    return {
        "tool": "locust",
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": environment.host,
        "users": getattr(opts, "num_users", None),
        "spawn_rate": getattr(opts, "spawn_rate", None),
        "duration_s": round(time.time() - STARTED["at"], 1),
        "bundle": str(_catalog.path) if _catalog else None,
        "total": _entry_stats(stats.total),
        "endpoints": [{"method": e.method, "name": e.name, **_entry_stats(e)}
                      for e in sorted(stats.entries.values(), key=lambda e: (e.name, e.method))],
        "failures": [{"method": f.method, "name": f.name, "error": str(f.error),
                      "occurrences": f.occurrences} for f in stats.errors.values()],
        "degraded_responses": dict(DEGRADED),
    }
