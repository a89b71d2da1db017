"""Training and evaluation of the candidate-aware ranker (offline/ranker_model.py).

Listwise: each training example is one user's candidate set from retrieval (the target plus
`negatives` of the other candidates, hard negatives by construction: the tower and the other
sources proposed them), and the loss is the softmax cross-entropy of the target among them.
Examples whose candidates miss the target teach nothing listwise and are skipped. Early
stopping on validation NDCG@10 over the validation users' full candidate sets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from offline.early_stopping import EarlyStopping
from offline.metrics import summarise
from offline.model import SequentialRanker
from offline.ranker_data import Example
from offline.ranker_model import CandidateRanker, CandidateRankerConfig
from offline.train import left_pad
from shared import ranker_features
from shared.bundle import FIRST_ITEM_INDEX, PAD_INDEX


@dataclass
class RankerTrainConfig:
    negatives: int = 127
    batch_size: int = 256
    epochs: int = 12
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 2
    max_minutes: float = 4.0
    eval_batch: int = 64
    seed: int = 42
    min_steps_per_epoch: int = 30
    keep: int = 256            # candidates kept per training example (memory): target + others
    valid_users: int = 3000    # validation users sampled for early stopping


def features_of(examples: list[Example], stats: ranker_features.ItemStats) -> list[np.ndarray]:
    return [ranker_features.build(stats, e.history, e.rows, e.source, e.rank, e.score)
            for e in examples]


def _pack(examples: list[Example], feats: list[np.ndarray], max_history: int,
          cols: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hist model indices [B, L], candidate model indices [B, K], features [B, K, F] of the
    chosen candidate columns per example (right-padded)."""
    hist = left_pad([e.history + FIRST_ITEM_INDEX for e in examples], max_history)
    width = max(len(c) for c in cols)
    cand = np.zeros((len(examples), width), np.int64)
    fx = np.zeros((len(examples), width, ranker_features.NUM_FEATURES), np.float32)
    for b, (e, f, c) in enumerate(zip(examples, feats, cols, strict=True)):
        cand[b, :len(c)] = e.rows[c] + FIRST_ITEM_INDEX
        fx[b, :len(c)] = f[c]
    return hist, cand, fx


class Tables:
    """The frozen tower's catalogue item vectors and content, by model index."""

    def __init__(self, tower: SequentialRanker, table: torch.Tensor) -> None:
        with torch.no_grad():
            ids = torch.arange(table.shape[0])
            self.items = tower.item_vectors(ids, table)
        self.content = table


def _scores(model: CandidateRanker, tables: Tables, hist: np.ndarray, cand: np.ndarray,
            fx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.from_numpy(hist)
    c = torch.from_numpy(cand)
    with torch.no_grad():
        hidden = model.tower.encode_sequence(h, tables.content[h])
        user = model.tower.with_bias_dim(hidden[:, -1])
    return model.head(hidden, user, tables.items[c], h, c, torch.from_numpy(fx))


def score_examples(model: CandidateRanker, tables: Tables, examples: list[Example],
                   feats: list[np.ndarray], batch: int = 64) -> list[np.ndarray]:
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(examples), batch):
            ex = examples[s:s + batch]
            cols = [np.arange(len(e.rows)) for e in ex]
            hist, cand, fx = _pack(ex, feats[s:s + batch], model.tower.cfg.max_history, cols)
            scores, _ = _scores(model, tables, hist, cand, fx)
            out += [scores[b, :len(e.rows)].numpy() for b, e in enumerate(ex)]
    return out


def candidate_ranks(examples: list[Example], scores: list[np.ndarray]) -> np.ndarray:
    """Rank of each target among its candidates (ties: lower bundle row first, as the
    full-ranking evaluation breaks them); -1 when the candidates miss it."""
    ranks = np.full(len(examples), -1, np.int64)
    for i, (e, s) in enumerate(zip(examples, scores, strict=True)):
        at = np.flatnonzero(e.rows == e.target)
        if not len(at):
            continue
        t = s[at[0]]
        ranks[i] = int(((s > t) | ((s == t) & (e.rows < e.target))).sum())
    return ranks


def evaluate_examples(examples: list[Example], scores: list[np.ndarray]) -> dict[str, float]:
    return summarise(candidate_ranks(examples, scores))


def tower_scores(tower: SequentialRanker, tables: Tables, examples: list[Example],
                 batch: int = 256) -> list[np.ndarray]:
    """The tower's own score of each candidate (retrieval_only: its order over the set)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(examples), batch):
            ex = examples[s:s + batch]
            h = torch.from_numpy(left_pad([e.history + FIRST_ITEM_INDEX for e in ex],
                                          tower.cfg.max_history))
            user = tower.user_vector(h, tables.content[h]).numpy()
            items = tables.items.numpy()
            out += [items[e.rows + FIRST_ITEM_INDEX] @ user[b] for b, e in enumerate(ex)]
    return out


def sample_columns(e: Example, pos: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """The target's column, the tower's own best candidate (ann rank 0: the per-user centring
    of the tower score then sees the same maximum as at serving time) and n random others."""
    fixed = [pos] + [int(i) for i in np.flatnonzero((e.source == 0) & (e.rank == 0))
                     if i != pos]
    others = np.setdiff1d(np.arange(len(e.rows)), fixed)
    if len(others) > n - len(fixed) + 1:
        others = rng.choice(others, n - len(fixed) + 1, replace=False)
    return np.concatenate([fixed, others]).astype(np.int64)


def trim(examples: list[Example], keep: int, seed: int) -> list[Example]:
    """Training examples whose candidates hold the target, cut to `keep` candidates each
    (sample_columns; union order kept): the features of every candidate of 50,000 users would
    not fit in memory, and a listwise step samples from them anyway."""
    rng = np.random.default_rng(seed)
    out = []
    for e in examples:
        at = np.flatnonzero(e.rows == e.target)
        if not len(at):
            continue
        cols = np.sort(sample_columns(e, int(at[0]), keep, rng)) if len(e.rows) > keep \
            else np.arange(len(e.rows))
        out.append(Example(e.user, e.history, e.rows[cols], e.source[cols], e.rank[cols],
                           e.score[cols], e.target))
    return out


def train_candidate_ranker(tower: SequentialRanker, table: torch.Tensor,
                           train: list[Example], train_feats: list[np.ndarray],
                           valid: list[Example], valid_feats: list[np.ndarray],
                           cfg: CandidateRankerConfig, tcfg: RankerTrainConfig,
                           ) -> tuple[CandidateRanker, dict]:
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    tower.eval()
    model = CandidateRanker(cfg, tower)
    tables = Tables(tower, table)
    usable = [i for i, e in enumerate(train) if (e.rows == e.target).any()]
    if not usable:
        raise ValueError("no training user has its target among its candidates")
    allf = np.concatenate([train_feats[i] for i in usable])
    model.feat_mean.copy_(torch.from_numpy(allf.mean(0)))
    model.feat_std.copy_(torch.from_numpy(np.maximum(allf.std(0), 1e-3)))
    del allf
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    batch_size = max(8, min(tcfg.batch_size, len(usable) // tcfg.min_steps_per_epoch))
    steps = -(-len(usable) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr,
                                                   total_steps=tcfg.epochs * steps + 1,
                                                   pct_start=0.1)
    stopper = EarlyStopping(tcfg.patience, tcfg.max_minutes)
    best_state, history = None, []
    started = time.monotonic()
    for epoch in range(1, tcfg.epochs + 1):
        model.train()
        order = rng.permutation(usable)
        total = 0.0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ex = [train[i] for i in idx]
            cols = []
            for e in ex:
                pos = int(np.flatnonzero(e.rows == e.target)[0])
                cols.append(sample_columns(e, pos, tcfg.negatives, rng))
            hist, cand, fx = _pack(ex, [train_feats[i] for i in idx], tower.cfg.max_history,
                                   cols)
            scores, _ = _scores(model, tables, hist, cand, fx)
            scores = scores.masked_fill(torch.from_numpy(cand) == PAD_INDEX, float("-inf"))
            loss = F.cross_entropy(scores, torch.zeros(len(ex), dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item()
        metrics = evaluate_examples(valid, score_examples(model, tables, valid, valid_feats,
                                                          tcfg.eval_batch))
        minutes = (time.monotonic() - started) / 60
        history.append({"epoch": epoch, "loss": round(total / steps, 4), **metrics,
                        "minutes": round(minutes, 2)})
        print(f"ranker epoch {epoch}: loss {total / steps:.4f} valid NDCG@10 "
              f"{metrics['NDCG@10']:.4f} HR@10 {metrics['HR@10']:.4f} ({minutes:.1f} min)",
              flush=True)
        verdict = stopper.update(metrics["NDCG@10"], minutes)
        if verdict.best:
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if verdict.stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs_run": len(history), "best_valid_NDCG@10": stopper.best,
                   "history": history, "train_examples": len(train),
                   "train_examples_with_target": len(usable), "batch_size": batch_size,
                   "config": cfg.to_dict(), "train_config": asdict(tcfg)}
