"""Randomly initialised GILL heads with the bundle's shapes, used only by the `untrained` preset until the GILL
stage (gill.py) provides trained ones. Same interface as `export.GillHeads`."""

from __future__ import annotations

import math

import torch
from torch import nn


class _Prefix(nn.Module):
    def __init__(self, dv: int, k: int, h: int):
        super().__init__()
        self.k, self.h = k, h
        self.fc = nn.Linear(dv, k * h)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled).reshape(pooled.shape[0], self.k, self.h)


class _Mapper(nn.Module):
    """(hidden [B,r,H], token_embeds [B,r,H]) -> [B,L,Dc]: mean of fc(h + e) added to learned queries."""

    def __init__(self, h: int, dc: int, length: int):
        super().__init__()
        self.fc = nn.Linear(h, dc)
        self.queries = nn.Parameter(torch.randn(length, dc))
        self.out = nn.Linear(dc, dc)

    def forward(self, hidden: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        x = self.fc(hidden + token_embeds).mean(1, keepdim=True)
        return self.out(x + self.queries[None])


class PlaceholderGillHeads(nn.Module):
    def __init__(self, hidden: int, pooled: int, cond_dim: int, text_length: int,
                 num_visual_tokens: int = 4, retrieval_dim: int = 128):
        super().__init__()
        self.num_visual_tokens = num_visual_tokens
        self.retrieval_dim = retrieval_dim
        self.visual_prefix = _Prefix(pooled, num_visual_tokens, hidden)
        self.image_retrieval = nn.Linear(pooled, retrieval_dim)
        self.text_retrieval = nn.Linear(hidden, retrieval_dim)
        self.mapper = _Mapper(hidden, cond_dim, text_length)
        self.decision = nn.Linear(hidden, 2)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
