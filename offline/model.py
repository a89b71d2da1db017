"""The transformer ranker (PyTorch, offline only).

SASRec-style: a causal transformer encodes the user's history once into a user vector; every
candidate is then scored by a dot product with its item vector. Item vectors mix a learned id
embedding with a projection of the pretrained content embedding, so items the model never saw
(index 1) still get a meaningful vector from their content alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from shared.bundle import PAD_INDEX, UNKNOWN_INDEX

MASK_VALUE = -1e9  # finite, so fully-masked rows (all padding) give no NaN


@dataclass
class RankerConfig:
    num_items: int          # catalogue rows; model indices run to num_items + 1
    content_dim: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_history: int = 50
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm self-attention + feed-forward, written with plain ops so ONNX export is simple."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q = q.reshape(b, length, h, dim // h).transpose(1, 2)
        k = k.reshape(b, length, h, dim // h).transpose(1, 2)
        v = v.reshape(b, length, h, dim // h).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) * (dim // h) ** -0.5 + bias  # bias: [B, 1, L, L]
        att = self.drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, length, dim)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ff(self.norm2(x)))


class SequentialRanker(nn.Module):
    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.id_embedding = nn.Embedding(cfg.num_items + 2, cfg.dim, padding_idx=PAD_INDEX)
        self.content_proj = nn.Sequential(nn.Linear(cfg.content_dim, cfg.dim), nn.GELU(),
                                          nn.Linear(cfg.dim, cfg.dim))
        self.item_norm = nn.LayerNorm(cfg.dim)
        # Per-item bias (popularity), appended as one more vector dimension (user side: 1) so
        # that score = user . item stays a plain inner product that FAISS can search exactly.
        self.item_bias = nn.Embedding(cfg.num_items + 2, 1, padding_idx=PAD_INDEX)
        nn.init.zeros_(self.item_bias.weight)
        self.position = nn.Embedding(cfg.max_history, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.id_embedding.weight, std=0.02)

    # ---- item side --------------------------------------------------------------------
    def item_vectors(self, ids: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """ids [...] int64, content [..., E] -> [..., D + 1]. Index 1 (unknown): content only."""
        known = (ids > UNKNOWN_INDEX).unsqueeze(-1).to(content.dtype)
        vec = self.item_norm(self.id_embedding(ids) * known + self.content_proj(content))
        return torch.cat([vec, self.item_bias(ids) * known], dim=-1)

    def input_vectors(self, ids: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """Item vectors as the transformer reads them (without the bias dimension)."""
        return self.item_vectors(ids, content)[..., :-1]

    # ---- user side --------------------------------------------------------------------
    def encode_sequence(self, ids: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """Left-padded history [B, L] -> hidden state at every position [B, L, D]."""
        length = ids.shape[1]
        x = self.input_vectors(ids, content)
        # Positions count back from the newest item, so left padding does not shift them.
        pos = torch.arange(length, device=ids.device).flip(0).clamp(max=self.cfg.max_history - 1)
        x = self.drop(x + self.position(pos).unsqueeze(0))
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        allowed = causal.unsqueeze(0) & (ids != PAD_INDEX).unsqueeze(1)  # [B, L, L]
        bias = torch.where(allowed, 0.0, MASK_VALUE).to(x.dtype).unsqueeze(1)
        for block in self.blocks:
            x = block(x, bias)
        return self.final_norm(x)

    def user_vector(self, ids: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """[B, L] left-padded history -> [B, D + 1] (newest position's state, then 1)."""
        return self.with_bias_dim(self.encode_sequence(ids, content)[:, -1])

    @staticmethod
    def with_bias_dim(hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([hidden, torch.ones_like(hidden[..., :1])], dim=-1)

    def score(self, hist_ids: torch.Tensor, hist_content: torch.Tensor, cand_ids: torch.Tensor,
              cand_content: torch.Tensor) -> torch.Tensor:
        """[B, L] history, [B, C] candidates -> [B, C] scores."""
        user = self.user_vector(hist_ids, hist_content)
        items = self.item_vectors(cand_ids, cand_content)
        return (items @ user.unsqueeze(-1)).squeeze(-1)


class QueryEncoder(nn.Module):
    def __init__(self, model: SequentialRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, hist_ids: torch.Tensor, hist_content: torch.Tensor) -> torch.Tensor:
        return self.model.user_vector(hist_ids, hist_content)


class ItemEncoder(nn.Module):
    def __init__(self, model: SequentialRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_ids: torch.Tensor, item_content: torch.Tensor) -> torch.Tensor:
        return self.model.item_vectors(item_ids, item_content)


class Scorer(nn.Module):
    def __init__(self, model: SequentialRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, hist_ids: torch.Tensor, hist_content: torch.Tensor, cand_ids: torch.Tensor,
                cand_content: torch.Tensor) -> torch.Tensor:
        return self.model.score(hist_ids, hist_content, cand_ids, cand_content)
