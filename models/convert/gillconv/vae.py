"""Stable Diffusion 1.5's VAE decoder (AutoencoderKL, arXiv 2112.10752) with diffusers' key names:
`post_quant_conv`, then `decoder.` (conv_in, a mid block with one self-attention, four up blocks of
layers_per_block+1 resnets, conv_norm_out, conv_out).

latent [B,4,h,w] (already divided by the scaling factor) -> image [B,3,8h,8w] in [-1,1] (unclamped, as
diffusers' decode returns it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .weights import ConversionError

from .unet import ResnetBlock, Upsample

# Key names of diffusers' deprecated attention blocks (older SD 1.5 files), mapped to today's.
LEGACY_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    groups: int
    latent_channels: int = 4
    out_channels: int = 3
    scaling_factor: float = 0.18215

    @staticmethod
    def from_diffusers(cfg: dict) -> "VAEConfig":
        channels = tuple(cfg.get("block_out_channels", (128, 256, 512, 512)))  # absent: SD 1.5's
        ups = cfg.get("up_block_types", ["UpDecoderBlock2D"] * len(channels))
        bad = [] if set(ups) == {"UpDecoderBlock2D"} else [f"up_block_types={ups!r}"]
        if cfg.get("act_fn", "silu") != "silu":
            bad.append(f"act_fn={cfg['act_fn']!r}")
        if bad:
            raise ConversionError(f"VAE config: not the Stable Diffusion 1.5 architecture: {'; '.join(bad)}")
        return VAEConfig(channels, cfg.get("layers_per_block", 2), cfg.get("norm_num_groups", 32),
                         cfg.get("latent_channels", 4), cfg.get("out_channels", 3), cfg.get("scaling_factor", 0.18215))


class SelfAttention(nn.Module):
    """One head over all pixels, with a group norm and a residual (diffusers' Attention in the VAE)."""

    def __init__(self, c: int, groups: int, device=None):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=1e-6, device=device)
        self.to_q, self.to_k, self.to_v = (nn.Linear(c, c, device=device) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(c, c, device=device)])

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
        a = torch.softmax(torch.matmul(q * c ** -0.5, k.transpose(1, 2)), dim=-1)
        y = self.to_out[0](torch.matmul(a, v))
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    def __init__(self, c: int, groups: int, device=None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, c, None, groups, 1e-6, device) for _ in range(2)])
        self.attentions = nn.ModuleList([SelfAttention(c, groups, device)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, n: int, groups: int, upsample: bool, device=None):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(c_in if j == 0 else c_out, c_out, None, groups, 1e-6, device)
                                     for j in range(n))
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample(c_out, device)])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if hasattr(self, "upsamplers") else x


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        rev = list(reversed(c.block_out_channels))
        self.conv_in = nn.Conv2d(c.latent_channels, rev[0], 3, padding=1, device=device)
        self.mid_block = MidBlock(rev[0], c.groups, device)
        self.up_blocks = nn.ModuleList(
            UpBlock(rev[max(i - 1, 0)], out, c.layers_per_block + 1, c.groups, i < len(rev) - 1, device)
            for i, out in enumerate(rev))
        self.conv_norm_out = nn.GroupNorm(c.groups, rev[-1], eps=1e-6, device=device)
        self.conv_out = nn.Conv2d(rev[-1], c.out_channels, 3, padding=1, device=device)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VAEDecoder(nn.Module):
    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        self.config = c
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1, device=device)
        self.decoder = Decoder(c, device)

    def forward(self, latent):
        return self.decoder(self.post_quant_conv(latent.to(self.post_quant_conv.weight.dtype))).float()
