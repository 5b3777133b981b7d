"""Stable Diffusion 1.5's UNet (Rombach et al. 2022, arXiv 2112.10752) with diffusers' UNet2DConditionModel
key names: CrossAttnDownBlock2D ×3 + DownBlock2D, a cross-attention mid block, UpBlock2D +
CrossAttnUpBlock2D ×3, GEGLU feed-forwards, 1×1-conv projections (use_linear_projection false).

sample [B,4,h,w] (scaled latents), timestep float [B], encoder_hidden_states [B,77,768] -> noise_pred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .weights import ConversionError

DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    heads: int
    cross_attention_dim: int
    groups: int
    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64

    @staticmethod
    def from_diffusers(cfg: dict) -> "UNetConfig":
        fixed = {
            "down_block_types": list(DOWN), "up_block_types": list(UP), "act_fn": "silu", "flip_sin_to_cos": True,
            "freq_shift": 0, "use_linear_projection": False, "center_input_sample": False, "downsample_padding": 1,
            "mid_block_scale_factor": 1, "norm_eps": 1e-5, "only_cross_attention": False, "upcast_attention": False,
            "class_embed_type": None, "addition_embed_type": None, "time_embedding_type": "positional",
            "resnet_time_scale_shift": "default", "dual_cross_attention": False,
        }
        bad = [f"{k}={cfg[k]!r} (SD 1.5: {v!r})" for k, v in fixed.items() if k in cfg and cfg[k] != v]
        if len(cfg.get("block_out_channels", [])) != 4:
            bad.append(f"block_out_channels={cfg.get('block_out_channels')!r} (four levels)")
        if cfg.get("num_attention_heads") is not None:
            bad.append("num_attention_heads is set (SD 1.5 gives the head count as attention_head_dim)")
        heads = cfg.get("attention_head_dim", 8)
        if not isinstance(heads, int):
            bad.append(f"attention_head_dim={heads!r} (SD 1.5: one head count for every block)")
        if bad:
            raise ConversionError(f"UNet config: not the Stable Diffusion 1.5 architecture: {'; '.join(bad)}")
        return UNetConfig(tuple(cfg["block_out_channels"]), cfg.get("layers_per_block", 2), heads,
                          cfg.get("cross_attention_dim", 768), cfg.get("norm_num_groups", 32),
                          cfg.get("in_channels", 4), cfg.get("out_channels", 4), cfg.get("sample_size", 64))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """diffusers' sinusoidal embedding with flip_sin_to_cos=True, downscale_freq_shift=0: [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int | None, groups: int, eps: float, device=None):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps, device=device)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, device=device)
        self.time_emb_proj = nn.Linear(temb, c_out, device=device) if temb else None
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps, device=device)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, device=device)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1, device=device) if c_in != c_out else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """diffusers' Attention: bias-free to_q/to_k/to_v, to_out.0 with bias."""

    def __init__(self, dim: int, context_dim: int, heads: int, device=None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False, device=device)
        self.to_k = nn.Linear(context_dim, dim, bias=False, device=device)
        self.to_v = nn.Linear(context_dim, dim, bias=False, device=device)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, device=device)])

    def forward(self, x, context):
        b, t, d = x.shape
        split = lambda z: z.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.to_q(x)) * (d // self.heads) ** -0.5
        w = torch.softmax(torch.matmul(q, split(self.to_k(context)).transpose(-1, -2)), dim=-1)
        return self.to_out[0](torch.matmul(w, split(self.to_v(context))).transpose(1, 2).reshape(b, t, d))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int, device=None):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner, device=device)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, device=None):
        super().__init__()
        # diffusers' indices: 0 GEGLU, 1 dropout, 2 output projection
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim, device), nn.Identity(), nn.Linear(4 * dim, dim, device=device)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, device=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, device=device)
        self.attn1 = Attention(dim, dim, heads, device)
        self.norm2 = nn.LayerNorm(dim, device=device)
        self.attn2 = Attention(dim, context_dim, heads, device)
        self.norm3 = nn.LayerNorm(dim, device=device)
        self.ff = FeedForward(dim, device)

    def forward(self, x, context):
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    def __init__(self, c: int, context_dim: int, heads: int, groups: int, device=None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6, device=device)
        self.proj_in = nn.Conv2d(c, c, 1, device=device)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(c, context_dim, heads, device)])
        self.proj_out = nn.Conv2d(c, c, 1, device=device)

    def forward(self, x, context):
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            y = block(y, context)
        return x + self.proj_out(y.reshape(b, h, w, c).permute(0, 3, 1, 2))


class Downsample(nn.Module):
    def __init__(self, c: int, device=None):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1, device=device)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, c: int, device=None):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, device=device)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    """A down or up block: resnets, optional cross-attention after each, optional resampler."""

    def __init__(self, resnets: list[ResnetBlock], attentions: list[Transformer2D] | None, sampler: nn.Module | None,
                 kind: str):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        if sampler is not None:
            setattr(self, kind, nn.ModuleList([sampler]))


class UNet(nn.Module):
    def __init__(self, c: UNetConfig, device=None):
        super().__init__()
        self.config = c
        ch, g, n = c.block_out_channels, c.groups, c.layers_per_block
        temb = 4 * ch[0]
        attn = lambda width: Transformer2D(width, c.cross_attention_dim, c.heads, g, device)  # noqa: E731
        res = lambda i, o: ResnetBlock(i, o, temb, g, 1e-5, device)  # noqa: E731
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1, device=device)
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1 = nn.Linear(ch[0], temb, device=device)
        self.time_embedding.linear_2 = nn.Linear(temb, temb, device=device)

        self.down_blocks = nn.ModuleList()
        prev = ch[0]
        for i, (kind, out) in enumerate(zip(DOWN, ch)):
            last = i == len(ch) - 1
            resnets = [res(prev if j == 0 else out, out) for j in range(n)]
            attns = [attn(out) for _ in range(n)] if kind.startswith("CrossAttn") else None
            self.down_blocks.append(Block(resnets, attns, None if last else Downsample(out, device), "downsamplers"))
            prev = out

        self.mid_block = Block([res(ch[-1], ch[-1]), res(ch[-1], ch[-1])], [attn(ch[-1])], None, "")

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        prev = rev[0]
        for i, (kind, out) in enumerate(zip(UP, rev)):
            last = i == len(rev) - 1
            skip_in = rev[min(i + 1, len(rev) - 1)]
            resnets = [res((prev if j == 0 else out) + (skip_in if j == n else out), out) for j in range(n + 1)]
            attns = [attn(out) for _ in range(n + 1)] if kind.startswith("CrossAttn") else None
            self.up_blocks.append(Block(resnets, attns, None if last else Upsample(out, device), "upsamplers"))
            prev = out

        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=1e-5, device=device)
        self.conv_out = nn.Conv2d(ch[0], c.out_channels, 3, padding=1, device=device)

    def forward(self, sample, timestep, encoder_hidden_states):
        dtype = self.conv_in.weight.dtype
        ctx = encoder_hidden_states.to(dtype)
        te = self.time_embedding
        temb = te.linear_2(F.silu(te.linear_1(timestep_embedding(timestep, self.config.block_out_channels[0]).to(dtype))))
        x = self.conv_in(sample.to(dtype))
        skips = [x]
        for block in self.down_blocks:
            for j, resnet in enumerate(block.resnets):
                x = resnet(x, temb)
                if hasattr(block, "attentions"):
                    x = block.attentions[j](x, ctx)
                skips.append(x)
            if hasattr(block, "downsamplers"):
                x = block.downsamplers[0](x)
                skips.append(x)
        m = self.mid_block
        x = m.resnets[1](m.attentions[0](m.resnets[0](x, temb), ctx), temb)
        for block in self.up_blocks:
            for j, resnet in enumerate(block.resnets):
                x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
                if hasattr(block, "attentions"):
                    x = block.attentions[j](x, ctx)
            if hasattr(block, "upsamplers"):
                x = block.upsamplers[0](x)
        return self.conv_out(F.silu(self.conv_norm_out(x))).float()
