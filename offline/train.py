"""Training of the sequential ranker: next-item prediction with a full softmax over the whole
catalogue (cross-entropy), early stopping on validation NDCG@10, seeded."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from offline.early_stopping import EarlyStopping
from offline.evaluate import evaluate, sample_users
from offline.model import RankerConfig, SequentialRanker
from offline.split import Split
from shared.bundle import FIRST_ITEM_INDEX

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 3
    # Items in the softmax per step: the batch's targets plus this many uniform samples
    # (0 = the whole catalogue). Sampling makes a step ~6x cheaper on the 2-core machine.
    negatives: int = 4096
    cosine: bool = True
    refit: bool = True  # after the validation run, retrain on train + validation (build.py)
    # Small datasets get smaller batches, so an epoch is still this many optimizer steps.
    min_steps_per_epoch: int = 100
    max_minutes: float = 18.0
    valid_users: int | None = 10_000  # users sampled for per-epoch validation
    seed: int = 42
    threads: int | None = None


def left_pad(rows: list[np.ndarray], length: int | None = None) -> np.ndarray:
    length = length or max(len(r) for r in rows)
    out = np.zeros((len(rows), length), np.int64)
    for i, r in enumerate(rows):
        r = r[-length:]
        if len(r):
            out[i, -len(r):] = r
    return out


def training_windows(split: Split, max_history: int) -> list[np.ndarray]:
    """Each train sequence cut from its end into windows of max_history + 1 items."""
    windows = []
    for seq in split.train:
        end = len(seq)
        while end >= 2:
            windows.append(seq[max(0, end - max_history - 1):end])
            end -= max_history
    return windows


def batches(windows: list[np.ndarray], batch_size: int, rng: np.random.Generator):
    """Shuffled batches of similar length (less padding), in shuffled order."""
    order = rng.permutation(len(windows))
    pool = batch_size * 50
    groups = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(windows[i]))
        groups += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    for g in rng.permutation(len(groups)):
        yield left_pad([windows[i] for i in groups[g]])


def content_table(content: np.ndarray) -> torch.Tensor:
    """Bundle-row content [N, E] -> model-index table [N + 2, E] (pad and unknown rows zero)."""
    table = np.zeros((content.shape[0] + FIRST_ITEM_INDEX, content.shape[1]), np.float32)
    table[FIRST_ITEM_INDEX:] = content
    return torch.from_numpy(table)


@torch.no_grad()
def user_vectors(model: SequentialRanker, table: torch.Tensor, histories: list[np.ndarray],
                 batch: int = 1024) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(histories), batch):
        ids = torch.from_numpy(left_pad(histories[s:s + batch], model.cfg.max_history))
        out.append(model.user_vector(ids, table[ids]).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim + 1), np.float32)


@torch.no_grad()
def catalogue_vectors(model: SequentialRanker, table: torch.Tensor) -> np.ndarray:
    model.eval()
    ids = torch.arange(FIRST_ITEM_INDEX, table.shape[0])
    return model.item_vectors(ids, table[ids]).numpy()


def ranker_score_fn(model: SequentialRanker, table: torch.Tensor, split: Split, which: str):
    items = catalogue_vectors(model, table)

    def score(users: np.ndarray) -> np.ndarray:
        return user_vectors(model, table, [split.history(u, which) for u in users]) @ items.T

    return score


def softmax_loss(model: SequentialRanker, users: torch.Tensor, targets: torch.Tensor,
                 table: torch.Tensor, all_ids: torch.Tensor, negatives: int) -> torch.Tensor:
    """Cross-entropy of each target against the catalogue, or against a sampled part of it."""
    if negatives <= 0:
        logits = users @ model.item_vectors(all_ids, table).T
        logits[:, :FIRST_ITEM_INDEX] = float("-inf")
        return F.cross_entropy(logits, targets)
    # Uniform negatives shared by the batch; each row's own target is the positive. (Other
    # rows' targets are NOT used as negatives: that would sample by popularity, uncorrected.)
    sampled = torch.randint(FIRST_ITEM_INDEX, len(all_ids), (negatives,))
    positive = (users * model.item_vectors(targets, table[targets])).sum(-1, keepdim=True)
    negative = users @ model.item_vectors(sampled, table[sampled]).T
    negative = negative.masked_fill(sampled.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))


def train_ranker(split: Split, content: np.ndarray, model_cfg: RankerConfig,
                 cfg: TrainConfig, init_state: dict | None = None,
                 ) -> tuple[SequentialRanker, dict]:
    """`init_state`: starting weights (a warm start, offline/warm_start.py)."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model = SequentialRanker(model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    table = content_table(content)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    windows = training_windows(split, model_cfg.max_history)
    batch_size = max(16, min(cfg.batch_size, len(windows) // cfg.min_steps_per_epoch))
    steps_per_epoch = -(-len(windows) // batch_size)
    # Cosine decay over the planned epochs: the last epochs refine instead of bouncing.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch + 1, pct_start=0.05,
        anneal_strategy="cos") if cfg.cosine else None
    valid_users = sample_users(split, "valid", cfg.valid_users, cfg.seed)
    all_ids = torch.arange(table.shape[0])
    stopper = EarlyStopping(cfg.patience, cfg.max_minutes)
    best_state, history = None, []
    started = time.monotonic()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, steps = 0.0, 0
        for batch in tqdm(list(batches(windows, batch_size, rng)), desc=f"epoch {epoch}",
                          leave=False, mininterval=5):
            ids = torch.from_numpy(batch)
            inp, tgt = ids[:, :-1], ids[:, 1:]
            hidden = model.encode_sequence(inp, table[inp])
            keep = (tgt > 0) & (inp > 0)  # both sides must be real items
            loss = softmax_loss(model, model.with_bias_dim(hidden[keep]), tgt[keep], table,
                                all_ids, cfg.negatives)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
            total, steps = total + loss.item(), steps + 1
            if (time.monotonic() - started) / 60 >= cfg.max_minutes:
                break  # the time box ends the epoch early (a huge catalogue's epoch is long)
        minutes = (time.monotonic() - started) / 60
        if not len(valid_users):  # refit on train + validation: fixed epochs, keep the last
            history.append({"epoch": epoch, "loss": total / max(steps, 1),
                            "minutes": round(minutes, 2)})
            print(f"epoch {epoch}: loss {total / max(steps, 1):.4f} ({minutes:.1f} min)",
                  flush=True)
            if stopper.out_of_time(minutes):
                break
            continue
        metrics = evaluate(split, "valid", ranker_score_fn(model, table, split, "valid"),
                           valid_users)
        history.append({"epoch": epoch, "loss": total / max(steps, 1), **metrics,
                        "minutes": round(minutes, 2)})
        log.info("epoch %d loss %.4f valid %s (%.1f min)", epoch, total / max(steps, 1),
                 metrics, minutes)
        print(f"epoch {epoch}: loss {total / max(steps, 1):.4f} valid NDCG@10 "
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
                   "history": history, "windows": len(windows), "batch_size": batch_size,
                   "config": cfg.__dict__}
