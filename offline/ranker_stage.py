"""The build's ranker stage: from the validation-run tower (trained without each user's last
train item) to a trained candidate ranker, its ONNX graph and its statistics file.

    examples   retrieval's candidates for every training user (history: train minus its last
               item, target: that item) and every validation user (history: train, target:
               the validation item), proposed by that tower (offline/ranker_data.py)
    features   shared/ranker_features.py over the training window each problem would see
    train      listwise, early-stopped on validation NDCG@10 (offline/ranker_train.py)
    export     ranker.onnx (inputs/outputs: RANKER_INPUTS / RANKER_OUTPUTS), parity-checked
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from offline.evaluate import sample_users
from offline.export import OPSET, PARITY_TOLERANCE, ParityError
from offline.model import SequentialRanker
from offline.ranker_data import Example, candidate_examples
from offline.ranker_model import CandidateRanker, CandidateRankerConfig, RankerGraph
from offline.ranker_train import (
    RankerTrainConfig,
    Tables,
    evaluate_examples,
    features_of,
    score_examples,
    tower_scores,
    train_candidate_ranker,
    trim,
)
from offline.split import Split
from offline.train import catalogue_vectors, left_pad, user_vectors
from shared import ranker_features
from shared.bundle import FIRST_ITEM_INDEX, UNKNOWN_INDEX
from shared.onnx_graphs import CANDIDATE_RANKER
from shared.onnx_session import make_session
from shared.settings import Settings

RANKER_INPUTS = CANDIDATE_RANKER.input_names
RANKER_OUTPUTS = CANDIDATE_RANKER.output_names


def examples_for(tower: SequentialRanker, table: torch.Tensor, stats: ranker_features.ItemStats,
                 histories: list[np.ndarray], targets: np.ndarray, caps: dict[str, int],
                 ) -> list[Example]:
    """Candidate sets for the users with a target; histories and targets in model indices."""
    users = np.flatnonzero(targets > 0)
    users = users[[len(histories[u]) > 0 for u in users]] if len(users) else users
    hist_model = [histories[u] for u in users]
    uv = user_vectors(tower, table, hist_model)
    iv = catalogue_vectors(tower, table)
    return candidate_examples(iv, uv, stats, [h - FIRST_ITEM_INDEX for h in hist_model],
                              targets[users] - FIRST_ITEM_INDEX, users, caps)


def stats_for(sequences: list[np.ndarray], item_tags: list[list[str]], content: np.ndarray,
              ) -> ranker_features.ItemStats:
    return ranker_features.ItemStats.from_sequences(
        [s - FIRST_ITEM_INDEX for s in sequences], item_tags, content)


def recall_report(examples: list[Example]) -> dict:
    """Share of users whose target is among the candidates: the union and each source (an
    item counts for the source the union kept it under), and at union sizes N."""
    if not examples:
        return {}
    hit_source = []
    for e in examples:
        at = np.flatnonzero(e.rows == e.target)
        hit_source.append(int(e.source[at[0]]) if len(at) else -1)
    hit_source = np.array(hit_source)
    out = {"union": round(float((hit_source >= 0).mean()), 5),
           "mean_candidates": round(float(np.mean([len(e.rows) for e in examples])), 1)}
    out["by_source"] = {name: round(float((hit_source == s).mean()), 5)
                        for s, name in enumerate(ranker_features.SOURCES)}
    return out


def train_stage(tower: SequentialRanker, table: torch.Tensor, content: np.ndarray,
                split: Split, held_split: Split, held: np.ndarray, item_tags: list[list[str]],
                caps: dict[str, int], cfg: CandidateRankerConfig | None = None,
                tcfg: RankerTrainConfig | None = None) -> tuple[CandidateRanker, dict]:
    """split: the full split; held_split/held: holdout_last_train(split)."""
    started = time.monotonic()
    tower.eval()
    cfg = cfg or CandidateRankerConfig(num_features=ranker_features.NUM_FEATURES)
    tcfg = tcfg or RankerTrainConfig()
    train_stats = stats_for(held_split.train, item_tags, content)
    valid_stats = stats_for(split.train, item_tags, content)
    all_train = examples_for(tower, table, train_stats, held_split.train, held, caps)
    train_recall = recall_report(all_train)
    train_ex = trim(all_train, tcfg.keep, tcfg.seed)
    del all_train
    valid = split.valid.copy()
    chosen = sample_users(split, "valid", tcfg.valid_users, tcfg.seed)
    valid[np.setdiff1d(np.arange(len(valid)), chosen)] = 0
    valid_ex = examples_for(tower, table, valid_stats, split.train, valid, caps)
    train_f, valid_f = features_of(train_ex, train_stats), features_of(valid_ex, valid_stats)
    prepared = time.monotonic() - started
    print(f"[ranker] {len(train_ex)} training sets holding their target, {len(valid_ex)} "
          f"validation sets, features in {prepared:.0f} s; recall train "
          f"{train_recall.get('union', 0):.3f} valid "
          f"{recall_report(valid_ex).get('union', 0):.3f}", flush=True)
    model, facts = train_candidate_ranker(tower, table, train_ex, train_f, valid_ex, valid_f,
                                          cfg, tcfg)
    tables = Tables(tower, table)
    facts["valid_retrieval_only"] = evaluate_examples(valid_ex,
                                                      tower_scores(tower, tables, valid_ex))
    facts["valid_recall"] = recall_report(valid_ex)
    facts["ablation"] = ablation(model, tables, valid_ex, valid_f)
    facts["train_recall"] = train_recall
    facts["prepare_seconds"] = round(prepared, 1)
    return model, facts


def ablation(model: CandidateRanker, tables: Tables, examples: list[Example],
             feats: list[np.ndarray], users: int = 2000) -> dict[str, dict]:
    """Validation NDCG@10/HR@10 of the trained ranker with one part neutralised at a time:
    a feature group set to its training mean (standardised 0), or the attention read-out
    zeroed. No retraining: it measures what the trained model draws from each part."""
    ex, fx = examples[:users], feats[:users]
    out = {"full": evaluate_examples(ex, score_examples(model, tables, ex, fx))}
    mean = model.feat_mean.numpy()
    for group, names in ranker_features.GROUPS.items():
        cols = [ranker_features.FEATURE_NAMES.index(n) for n in names]
        neutral = []
        for f in fx:
            g = f.copy()
            g[:, cols] = mean[cols]
            neutral.append(g)
        out[f"without_{group}"] = evaluate_examples(ex, score_examples(model, tables, ex,
                                                                       neutral))
    model.cfg.use_attention = False
    try:
        out["without_attention"] = evaluate_examples(ex, score_examples(model, tables, ex, fx))
    finally:
        model.cfg.use_attention = True
    out["tower_only"] = evaluate_examples(ex, tower_scores(model.tower, tables, ex))
    print("[ranker] ablation (validation NDCG@10): " + ", ".join(
        f"{k} {v['NDCG@10']:.4f}" for k, v in out.items()), flush=True)
    return {k: {m: round(v, 5) for m, v in r.items()} for k, r in out.items()}


# ---- ONNX -----------------------------------------------------------------------------------
def example_inputs(table: torch.Tensor, histories: list[np.ndarray], cands: int,
                   rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    hist = torch.from_numpy(left_pad(histories, max(len(h) for h in histories)))
    cand = torch.from_numpy(rng.integers(FIRST_ITEM_INDEX, table.shape[0],
                                         size=(len(histories), cands)))
    cand[:, 0] = UNKNOWN_INDEX
    feats = torch.from_numpy(rng.normal(size=(len(histories), cands,
                                              ranker_features.NUM_FEATURES)).astype(np.float32))
    return hist, table[hist], cand, table[cand], feats


def export_ranker(model: CandidateRanker, path: Path, example: tuple[torch.Tensor, ...]) -> None:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(RankerGraph(model), example, str(path), input_names=RANKER_INPUTS,
                          output_names=RANKER_OUTPUTS,
                          dynamic_axes=CANDIDATE_RANKER.dynamic_axes(),
                          opset_version=OPSET, dynamo=False)


def check_ranker_parity(model: CandidateRanker, path: Path,
                        batches: list[tuple[torch.Tensor, ...]]) -> float:
    sess = make_session(path, Settings(use_gpu=False))
    CANDIDATE_RANKER.check(sess, fixed={"F": ranker_features.NUM_FEATURES})
    graph = RankerGraph(model).eval()
    worst = 0.0
    for batch in batches:
        with torch.no_grad():
            expected = [t.numpy() for t in graph(*batch)]
        got = CANDIDATE_RANKER.run(sess, **{k: v.numpy() for k, v in
                                            zip(RANKER_INPUTS, batch, strict=True)}).values()
        for e, g in zip(expected, got, strict=True):
            worst = max(worst, float(np.max(np.abs(e - g))))
    if not worst <= PARITY_TOLERANCE:
        raise ParityError(f"ranker.onnx: ONNX differs from torch by {worst:.3g} "
                          f"(allowed {PARITY_TOLERANCE})")
    return worst
