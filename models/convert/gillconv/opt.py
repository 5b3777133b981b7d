"""OPT decoder (Zhang et al. 2022, arXiv 2205.01068) with the Hugging Face key names: learned positions
offset by 2, pre-LayerNorm blocks, ReLU FFN, the output head tied to the token embeddings.

One graph step: inputs_embeds [B,T,H] and attention_mask [B,P+T] with a KV cache of P positions ->
logits [B,T,V], final post-norm hidden states [B,T,H] (GILL's `hidden_states[-1]`), and the grown cache.
Positions are derived from the mask as OPT does, so left padding needs no position_ids input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .weights import ConversionError

POSITION_OFFSET = 2  # OPT's learned position table reserves its first two rows


@dataclass
class OPTConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    vocab_size: int
    max_positions: int

    @staticmethod
    def from_hf(cfg: dict, vocab_size: int) -> "OPTConfig":
        """`vocab_size` is the resized table (GILL adds <|image|> and [IMG0..7])."""
        unsupported = {
            "do_layer_norm_before": (cfg.get("do_layer_norm_before", True), True),
            "activation_function": (cfg.get("activation_function", "relu"), "relu"),
            "word_embed_proj_dim": (cfg.get("word_embed_proj_dim", cfg["hidden_size"]), cfg["hidden_size"]),
            "enable_bias": (cfg.get("enable_bias", True), True),
            "layer_norm_elementwise_affine": (cfg.get("layer_norm_elementwise_affine", True), True),
        }
        bad = [f"{k}={got!r} (supported: {want!r})" for k, (got, want) in unsupported.items() if got != want]
        if bad:
            raise ConversionError(f"OPT config: unsupported variant: {', '.join(bad)}")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                               "max_position_embeddings") if k not in cfg]
        if missing:
            raise ConversionError(f"OPT config: missing {', '.join(missing)}")
        return OPTConfig(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["ffn_dim"],
                         vocab_size, cfg["max_position_embeddings"])

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class Attention(nn.Module):
    def __init__(self, c: OPTConfig, device=None):
        super().__init__()
        self.num_heads = c.num_heads
        h = c.hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(h, h, device=device) for _ in range(4))

    def forward(self, x, bias, past_k, past_v):
        b, t, h = x.shape
        split = lambda z: z.reshape(b, t, self.num_heads, h // self.num_heads).transpose(1, 2)  # noqa: E731
        q = split(self.q_proj(x)) * (h // self.num_heads) ** -0.5
        k = torch.cat([past_k, split(self.k_proj(x))], dim=2)
        v = torch.cat([past_v, split(self.v_proj(x))], dim=2)
        # Softmax in float32, as OPT does in half precision.
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() + bias, dim=-1).to(v.dtype)
        return self.out_proj(torch.matmul(w, v).transpose(1, 2).reshape(b, t, h)), k, v


class Layer(nn.Module):
    def __init__(self, c: OPTConfig, device=None):
        super().__init__()
        self.self_attn = Attention(c, device)
        self.self_attn_layer_norm = nn.LayerNorm(c.hidden_size, device=device)
        self.fc1 = nn.Linear(c.hidden_size, c.ffn_size, device=device)
        self.fc2 = nn.Linear(c.ffn_size, c.hidden_size, device=device)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, device=device)

    def forward(self, x, bias, past_k, past_v):
        a, k, v = self.self_attn(self.self_attn_layer_norm(x), bias, past_k, past_v)
        x = x + a
        return x + self.fc2(torch.relu(self.fc1(self.final_layer_norm(x)))), k, v


class Decoder(nn.Module):
    def __init__(self, c: OPTConfig, device=None):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, device=device)
        self.embed_positions = nn.Embedding(c.max_positions + POSITION_OFFSET, c.hidden_size, device=device)
        self.layers = nn.ModuleList(Layer(c, device) for _ in range(c.num_layers))
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, device=device)


class OPT(nn.Module):
    """Parameters under `decoder.` as in OPTModel's checkpoints; no separate head (tied)."""

    def __init__(self, c: OPTConfig, device=None):
        super().__init__()
        self.config = c
        self.decoder = Decoder(c, device)

    def embed(self, input_ids):
        return self.decoder.embed_tokens(input_ids).float()

    def forward(self, inputs_embeds, attention_mask, *past):
        d = self.decoder
        dtype = d.embed_tokens.weight.dtype
        t = inputs_embeds.shape[1]
        total = attention_mask.shape[1]
        # OPT's positions: the count of attended tokens so far, so left padding shifts them.
        positions = (torch.cumsum(attention_mask, dim=1) * attention_mask - 1)[:, total - t:]
        x = inputs_embeds.to(dtype) + d.embed_positions(positions + POSITION_OFFSET)
        query_pos = torch.arange(t, device=x.device) + (total - t)
        allowed = (torch.arange(total, device=x.device)[None, :] <= query_pos[:, None])[None, None] \
            & (attention_mask[:, None, None, :] > 0)
        bias = (~allowed).float() * torch.finfo(torch.float32).min
        presents = []
        for i, layer in enumerate(d.layers):
            x, k, v = layer(x, bias, past[2 * i], past[2 * i + 1])
            presents += [k, v]
        hidden = d.final_layer_norm(x)
        logits = torch.matmul(hidden, d.embed_tokens.weight.t())
        return (logits.float(), hidden.float(), *presents)
