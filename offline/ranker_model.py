"""The second stage: a candidate-aware ranker over retrieval's candidates (PyTorch, offline).

It holds its own frozen copy of a tower (trained on the tower that never learned the items the
ranker learns to find, offline/ranker_data.py; served with the refit tower, docs/ranker.md) and
adds what a dot product cannot do:

    history    the tower encodes the user's history once: hidden state per position [B, L, D]
    target     each candidate attends over those states with its own query (target
    attention  attention, DIN/BST-style): which watched items matter *for this candidate*;
               the attention weights are also the explanation (`attention` output)
    features   shared/ranker_features.py: sources, ranks and scores, tag affinity, content
               similarity to the last watched items, popularity and trend, user activity
    score      tower score (centred per user) + an MLP over [candidate, attended history,
               their product, their cosine, standardised features, tower score]

Cost per user: one history encoding (as the tower) plus O(C x L x d) attention and a small MLP
per candidate, so 500 candidates stay within a few milliseconds on 2 cores.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from offline.model import MASK_VALUE, SequentialRanker
from shared.bundle import PAD_INDEX


@dataclass
class CandidateRankerConfig:
    num_features: int
    dim: int = 32          # attention width
    hidden: int = 128      # MLP width
    dropout: float = 0.1
    use_attention: bool = True
    use_features: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class CandidateRanker(nn.Module):
    def __init__(self, cfg: CandidateRankerConfig, tower: SequentialRanker) -> None:
        super().__init__()
        self.cfg = cfg
        self.set_tower(tower)
        d_t = tower.cfg.dim
        self.query = nn.Linear(d_t, cfg.dim)
        self.key = nn.Linear(d_t, cfg.dim)
        self.value = nn.Linear(d_t, cfg.dim)
        self.cand = nn.Linear(d_t, cfg.dim)
        self.register_buffer("feat_mean", torch.zeros(cfg.num_features))
        self.register_buffer("feat_std", torch.ones(cfg.num_features))
        width = 3 * cfg.dim + 2 + cfg.num_features
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.GELU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.hidden // 2),
                                 nn.GELU(), nn.Linear(cfg.hidden // 2, 1))
        self.tower_weight = nn.Parameter(torch.ones(1))

    def set_tower(self, tower: SequentialRanker) -> None:
        """Hold a frozen copy of `tower`: its own weights (training the tower further, or the
        build's refit, leaves the ranker's as they were), in eval mode, none of them trained."""
        self.tower = copy.deepcopy(tower).eval()
        for p in self.tower.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> CandidateRanker:
        super().train(mode)
        self.tower.eval()  # frozen: no dropout in it, ever
        return self

    def forward(self, hist_ids: torch.Tensor, hist_content: torch.Tensor,
                cand_ids: torch.Tensor, cand_content: torch.Tensor,
                cand_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> scores [B, C], attention [B, C, L] (each candidate's weights over the history)."""
        hidden = self.tower.encode_sequence(hist_ids, hist_content)          # [B, L, D]
        user = self.tower.with_bias_dim(hidden[:, -1])                        # [B, D + 1]
        items = self.tower.item_vectors(cand_ids, cand_content)              # [B, C, D + 1]
        return self.head(hidden, user, items, hist_ids, cand_ids, cand_features)

    def head(self, hidden: torch.Tensor, user: torch.Tensor, items: torch.Tensor,
             hist_ids: torch.Tensor, cand_ids: torch.Tensor, cand_features: torch.Tensor,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        tower = (items @ user.unsqueeze(-1)).squeeze(-1)                      # [B, C]
        real = cand_ids != PAD_INDEX
        top = torch.where(real, tower, torch.full_like(tower, MASK_VALUE)).amax(1, keepdim=True)
        tower = tower - top  # centred per user: only differences between candidates matter
        vec = items[..., :-1]
        q = self.query(vec)                                                   # [B, C, d]
        k = self.key(hidden)                                                  # [B, L, d]
        att = (q @ k.transpose(1, 2)) * self.cfg.dim ** -0.5
        att = att + torch.where(hist_ids != PAD_INDEX, 0.0, MASK_VALUE).unsqueeze(1)
        att = torch.softmax(att, dim=-1)                                      # [B, C, L]
        attended = att @ self.value(hidden)                                   # [B, C, d]
        cand = self.cand(vec)
        if not self.cfg.use_attention:
            attended = torch.zeros_like(attended)
        cos = torch.cosine_similarity(cand, attended, dim=-1, eps=1e-6).unsqueeze(-1)
        feats = (cand_features - self.feat_mean) / self.feat_std
        if not self.cfg.use_features:
            feats = torch.zeros_like(feats)
        x = torch.cat([cand, attended, cand * attended, cos, tower.unsqueeze(-1), feats], dim=-1)
        score = self.tower_weight * tower + self.mlp(x).squeeze(-1)
        return score, att


class RankerGraph(nn.Module):
    """What ranker.onnx holds (inputs and outputs in offline/export.py)."""

    def __init__(self, model: CandidateRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, hist_ids, hist_content, cand_ids, cand_content, cand_features):
        return self.model(hist_ids, hist_content, cand_ids, cand_content, cand_features)
