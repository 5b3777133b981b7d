"""TinyLM: the frozen decoder-only language model (OPT's role in GILL).

Pre-LN Transformer blocks, learned absolute positions added inside the model (so image tokens passed as
`inputs_embeds` get positions like any token), a final LayerNorm, and an LM head tied to `embed_tokens`.
`forward` returns the final *post-norm* hidden states (GILL's `hidden_states[-1]`) and a KV cache.
Attention is written out by hand (no SDPA) so it runs on torch 1.13 and exports to ONNX opset 14.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LMConfig:
    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ffn_size: int = 1024
    max_positions: int = 256

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """q [B,h,T,d], k/v [B,h,S,d], allowed bool broadcastable to [B,h,T,S] -> [B,h,T,d]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -1e9)
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.ln1 = nn.LayerNorm(cfg.hidden_size)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln2 = nn.LayerNorm(cfg.hidden_size)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.fc2 = nn.Linear(cfg.ffn_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, past: KV | None) -> tuple[torch.Tensor, KV]:
        b, t, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(h, dim=-1)
        q, k, v = (z.reshape(b, t, self.num_heads, h // self.num_heads).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        a = attention(q, k, v, allowed).transpose(1, 2).reshape(b, t, h)
        x = x + self.out(a)
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x, (k, v)


class TinyLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_positions = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        nn.init.normal_(self.embed_positions.weight, std=0.02)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (what `lm_embed.onnx` computes): token rows only, no positions, no scaling."""
        return self.embed_tokens(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: list[KV] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[KV]]:
        """inputs_embeds [B,T,H]; position_ids int64 [B,T]; past_key_values per layer (key, value) [B,h,P,d];
        attention_mask [B,P+T] (1 = attend, 0 = padding), default all ones.
        Returns logits [B,T,V], final post-norm hidden states [B,T,H], presents per layer [B,h,P+T,d]."""
        t = inputs_embeds.shape[1]
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        total = past_len + t
        device = inputs_embeds.device
        key_pos = torch.arange(total, device=device)
        query_pos = key_pos[total - t :]
        allowed = (key_pos[None, :] <= query_pos[:, None])[None, None]  # causal [1,1,T,S]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].bool()
        x = inputs_embeds + self.embed_positions(position_ids)
        presents: list[KV] = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, allowed, None if past_key_values is None else past_key_values[i])
            presents.append(kv)
        hidden = self.final_norm(x)
        logits = F.linear(hidden, self.embed_tokens.weight)
        return logits, hidden, presents

    def lm_loss(self, input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """Mean next-token cross-entropy over non-pad targets (right-padded batches)."""
        width = int((input_ids != pad_id).sum(-1).max())  # drop all-pad columns: most documents are short
        input_ids = input_ids[:, : max(width, 2)]
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        logits, _, _ = self(self.embed(input_ids), pos)
        targets = input_ids[:, 1:].masked_fill(input_ids[:, 1:] == pad_id, -100)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
