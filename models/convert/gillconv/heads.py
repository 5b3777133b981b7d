"""GILL's learned layers (Koh et al. 2023, arXiv 2305.17216, §3.1-3.3), with the released checkpoint's key
names (after the `model.` prefix): the visual prefix, the two retrieval projections, the GILLMapper and the
decision head.
"""

from __future__ import annotations

import torch
from torch import nn

MAPPER_WIDTH = 512  # fixed in GILL's GILLMapper, not recorded in the checkpoint
MAPPER_HEADS = 4


class VisualPrefix(nn.Module):
    """pooled [B,Dv] -> k prefix tokens [B,k,H] (`visual_embeddings`)."""

    def __init__(self, dv: int, h: int, k: int, device=None):
        super().__init__()
        self.k = k
        self.visual_embeddings = nn.Linear(dv, h * k, device=device)

    def forward(self, pooled):
        w = self.visual_embeddings.weight
        return self.visual_embeddings(pooled.to(w.dtype)).reshape(pooled.shape[0], self.k, -1).float()


class CastLinear(nn.Linear):
    """A linear layer whose graph takes and returns float32 whatever its weights' dtype: the retrieval
    projections `visual_fc` and `ret_text_hidden_fcs.0.model`, and the decision head (`1.` of GILL's
    `Sequential(Dropout, Linear)`)."""

    def forward(self, x):
        return super().forward(x.to(self.weight.dtype)).float()


class Attention(nn.Module):
    """nn.MultiheadAttention's parameters (packed in_proj), batch first, no mask."""

    def __init__(self, d: int, heads: int, device=None):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d, device=device))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d, device=device))
        self.out_proj = nn.Linear(d, d, device=device)

    def forward(self, x, memory):
        d = x.shape[-1]
        w, b = self.in_proj_weight, self.in_proj_bias
        q = nn.functional.linear(x, w[:d], b[:d])
        k = nn.functional.linear(memory, w[d:2 * d], b[d:2 * d])
        v = nn.functional.linear(memory, w[2 * d:], b[2 * d:])
        split = lambda z: z.reshape(z.shape[0], z.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        scores = torch.matmul(split(q), split(k).transpose(-1, -2)) * (d // self.heads) ** -0.5
        a = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), split(v))
        return self.out_proj(a.transpose(1, 2).reshape(x.shape))


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer(norm_first=True, activation=relu, dropout=0)."""

    def __init__(self, d: int, heads: int, ffn: int, device=None):
        super().__init__()
        self.self_attn = Attention(d, heads, device)
        self.linear1 = nn.Linear(d, ffn, device=device)
        self.linear2 = nn.Linear(ffn, d, device=device)
        self.norm1 = nn.LayerNorm(d, device=device)
        self.norm2 = nn.LayerNorm(d, device=device)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        return x + self.linear2(torch.relu(self.linear1(self.norm2(x))))


class DecoderLayer(nn.Module):
    """nn.TransformerDecoderLayer(norm_first=True, activation=relu, dropout=0), no masks."""

    def __init__(self, d: int, heads: int, ffn: int, device=None):
        super().__init__()
        self.self_attn = Attention(d, heads, device)
        self.multihead_attn = Attention(d, heads, device)
        self.linear1 = nn.Linear(d, ffn, device=device)
        self.linear2 = nn.Linear(ffn, d, device=device)
        self.norm1 = nn.LayerNorm(d, device=device)
        self.norm2 = nn.LayerNorm(d, device=device)
        self.norm3 = nn.LayerNorm(d, device=device)

    def forward(self, x, memory):
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        x = x + self.multihead_attn(self.norm2(x), memory)
        return x + self.linear2(torch.relu(self.linear1(self.norm3(x))))


class Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], d: int, device=None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d, device=device)


class Transformer(nn.Module):
    """The parameters and computation of nn.Transformer(batch_first=True, norm_first=True) in eval mode."""

    def __init__(self, d: int, heads: int, n_enc: int, n_dec: int, ffn: int, device=None):
        super().__init__()
        self.encoder = Stack([EncoderLayer(d, heads, ffn, device) for _ in range(n_enc)], d, device)
        self.decoder = Stack([DecoderLayer(d, heads, ffn, device) for _ in range(n_dec)], d, device)

    def forward(self, src, tgt):
        for layer in self.encoder.layers:
            src = layer(src)
        memory = self.encoder.norm(src)
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory)
        return self.decoder.norm(tgt)


class GILLMapper(nn.Module):
    """(hidden [B,r,H], token_embeds [B,r,H]) -> cond [B,L,Dc] (`gen_text_hidden_fcs.0`): the [IMG] hidden
    states plus their input embeddings, `fc` to 512, a 4+4 layer transformer whose decoder reads the learned
    `query_embs`, and `model` to the diffusion model's conditioning width."""

    def __init__(self, h: int, dc: int, num_queries: int, n_enc: int, n_dec: int, device=None):
        super().__init__()
        w = MAPPER_WIDTH
        self.fc = nn.Linear(h, w, device=device)
        self.tfm = Transformer(w, MAPPER_HEADS, n_enc, n_dec, 4 * w, device)
        self.model = nn.Linear(w, dc, device=device)
        self.query_embs = nn.Parameter(torch.empty(1, num_queries, w, device=device))

    def forward(self, hidden, token_embeds):
        dtype = self.fc.weight.dtype
        x = self.fc((hidden + token_embeds).to(dtype))
        queries = self.query_embs.expand(x.shape[0], -1, -1)
        return self.model(self.tfm(x, queries)).float()
