"""The promotion gate: a candidate bundle against the serving one, on the same held-out recent
interactions (offline/retrain.py), with the build's full-ranking protocol (offline/evaluate.py:
every catalogue item scored, seen items excluded; the two-stage path of offline/two_stage.py is
the headline, the ranker alone beside it). A held-out item a bundle's catalogue lacks (an item
upserted after it was built) is a miss for that bundle.

Promote when candidate NDCG@10 >= serving NDCG@10 - tolerance (`promotion_tolerance`, absolute).
Written to the candidate bundle: promotion.json (decision, reason, both sets of numbers) and
promotion.md (the same as a table). `vidrec promote` refuses a refused bundle without --force.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from offline.evaluate import target_ranks
from offline.metrics import summarise
from offline.ranker_eval import two_stage_metrics
from offline.split import Split
from offline.two_stage import BundleModels
from services.retrieval.sources.ann import user_vectors
from shared.bundle import FIRST_ITEM_INDEX, Bundle
from shared.settings import Settings

if TYPE_CHECKING:
    from offline.retrain import RetrainData

GATE_METRIC = "NDCG@10"
MIN_USERS = 20  # fewer held-out users than this: the numbers say nothing, promotion is refused


def holdout_split(bundle: Bundle, data: RetrainData) -> tuple[Split, int]:
    """The held-out users in this bundle's item indices; also how many targets it lacks."""
    rows = bundle.row_of
    users = sorted(data.holdout)
    train, test, missing = [], np.zeros(len(users), np.int64), 0
    for u, user in enumerate(users):
        before = data.dataset.sequences[user][:-1]  # all but the held-out (last) one
        train.append(np.array([rows[i] + FIRST_ITEM_INDEX for i in before if i in rows],
                              np.int64))
        row = rows.get(data.holdout[user])
        if row is None:
            missing += 1
        else:
            test[u] = row + FIRST_ITEM_INDEX
    split = Split([it["item_id"] for it in bundle.items], users, train,
                  np.zeros(len(users), np.int64), test)
    return split, missing


def holdout_metrics(bundle: Bundle, data: RetrainData, settings: Settings) -> dict:
    split, missing = holdout_split(bundle, data)
    models = BundleModels(bundle, settings)
    state = models.state
    users = split.evaluable("test")
    misses = np.full(missing, -1, np.int64)
    item_vectors = bundle.item_vectors()
    out = {}
    # the same score functions as the build's evaluation (offline/evaluate_bundle.py): the
    # tower alone over the catalogue, and both stages over the serving code's candidate sets
    fn = lambda us: user_vectors(state, [  # noqa: E731
        (split.history(u, "test") - FIRST_ITEM_INDEX)[-state.max_history:]
        for u in us]) @ item_vectors.T
    ranks = target_ranks(split, "test", fn, users) if len(users) else np.empty(0, np.int64)
    out["ranker_only"] = {k: round(v, 5)
                          for k, v in summarise(np.concatenate([ranks, misses])).items()}
    if len(users):
        staged, _ = two_stage_metrics(bundle, split, settings, lambda hs: user_vectors(state, [
            (h - FIRST_ITEM_INDEX)[-state.max_history:] for h in hs]), models=models)
        # a held-out item the catalogue lacks is a miss for every metric (a mean of zeros)
        share = len(users) / (len(users) + missing)
        out["two_stage"] = {k: round(v * share, 5) for k, v in staged["two_stage"].items()}
    else:
        out["two_stage"] = {k: round(v, 5) for k, v in summarise(misses).items()}
    out["users"] = len(split.users)
    out["targets_not_in_catalogue"] = missing
    return out


def gate(settings: Settings, candidate: Bundle, serving: Bundle, data: RetrainData,
         tolerance: float | None = None) -> dict:
    tolerance = settings.promotion_tolerance if tolerance is None else tolerance
    started = time.perf_counter()
    cand = holdout_metrics(candidate, data, settings)
    serv = holdout_metrics(serving, data, settings)
    promote, reason = decide(cand, serv, tolerance)
    doc = {"promote": promote, "reason": reason, "metric": f"two_stage {GATE_METRIC}",
           "tolerance": tolerance, "candidate": {"bundle": candidate.version, **cand},
           "serving": {"bundle": serving.version, **serv},
           "protocol": "each user's newest event received after the serving bundle was built, "
                       "full ranking over each bundle's catalogue, seen items excluded",
           "decided_at": datetime.now(UTC).isoformat(),
           "seconds": round(time.perf_counter() - started, 2)}
    (candidate.path / "promotion.json").write_text(json.dumps(doc, indent=2) + "\n")
    (candidate.path / "promotion.md").write_text(markdown(doc))
    return doc


def decide(cand: dict, serv: dict, tolerance: float) -> tuple[bool, str]:
    c, s = cand["two_stage"][GATE_METRIC], serv["two_stage"][GATE_METRIC]
    if cand["users"] < MIN_USERS:
        return False, (f"only {cand['users']} held-out users (< {MIN_USERS}): not enough new "
                       "events since the serving bundle was built")
    if c >= s - tolerance:
        return True, f"candidate {GATE_METRIC} {c:.4f} >= serving {s:.4f} - tolerance {tolerance}"
    return False, f"candidate {GATE_METRIC} {c:.4f} < serving {s:.4f} - tolerance {tolerance}"


def markdown(doc: dict) -> str:
    lines = [f"# Promotion gate: {'PROMOTE' if doc['promote'] else 'REFUSED'}", "",
             doc["reason"], "",
             f"Held-out users: {doc['candidate']['users']} ({doc['protocol']}).", "",
             "| bundle | path | HR@10 | NDCG@10 | HR@50 | held-out items not in catalogue |",
             "| --- | --- | --- | --- | --- | --- |"]
    for role in ("candidate", "serving"):
        d = doc[role]
        for path in ("two_stage", "ranker_only"):
            m = d[path]
            lines.append(f"| {role} `{d['bundle']}` | {path} | {m['HR@10']:.4f} | "
                         f"{m['NDCG@10']:.4f} | {m['HR@50']:.4f} | "
                         f"{d['targets_not_in_catalogue']} |")
    return "\n".join(lines) + "\n"
