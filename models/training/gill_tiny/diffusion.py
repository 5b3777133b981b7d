"""Latent diffusion stand-in (Stable Diffusion's role): a VAE (64x64x3 <-> 4x16x16), a UNet conditioned by
cross-attention on the text tower's token states, the cosine noise schedule, and a DDIM sampler.

Cheap by design (see issue 3, "Measured before you start"): no attention at 16x16, few channels, and a
pooled summary of the conditioning tokens (attention pooling with a learned query, computed inside the UNet
from `encoder_hidden_states`) added to the time embedding, as SDXL does, so global attributes are learned
early while the token states stay the one conditioning interface. The text tower is NOT fine-tuned here: it
stays frozen after contrastive training, so the states the GILLMapper is trained to produce are exactly the
ones the UNet was trained on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .lm import attention

NUM_TRAIN_TIMESTEPS = 1000
# The manifest's scheduler block (diffusers names in camelCase): what the engine's DDIM must implement.
SCHEDULER_CONFIG = {
    "numTrainTimesteps": NUM_TRAIN_TIMESTEPS,
    "betaSchedule": "squaredcos_cap_v2",
    "betaStart": 0.00085,  # unused by squaredcos_cap_v2, kept for schedulers that read it
    "betaEnd": 0.012,
    "predictionType": "epsilon",
    "timestepSpacing": "leading",
    "stepsOffset": 0,
    "setAlphaToOne": True,
    "clipSample": False,
}


def alphas_cumprod(num_steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """diffusers' `squaredcos_cap_v2` schedule (betas_for_alpha_bar, max_beta 0.999): float32 betas and a
    float32 cumulative product, as DDIMScheduler computes it. [T]"""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999) for i in range(num_steps)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float32), dim=0)


def ddim_timesteps(steps: int, num_train: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """'leading' spacing, steps_offset 0, descending (diffusers DDIMScheduler.set_timesteps defaults)."""
    if not 1 <= steps <= num_train // 2:
        raise ValueError(f"steps must be in 1..{num_train // 2}, got {steps}")
    ratio = num_train // steps
    return [i * ratio for i in reversed(range(steps))]


# VAE ---------------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int | None = None):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout) if temb else None
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None and temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


@dataclass
class VAEConfig:
    channels: tuple[int, int, int] = (32, 64, 64)  # at 64x64, 32x32, 16x16
    latent_channels: int = 4
    kl_weight: float = 1e-6

    def to_dict(self) -> dict:
        return asdict(self)


class VAE(nn.Module):
    """64x64x3 in [-1,1] <-> latent [4,16,16]. `scaling_factor` (a buffer, set after training to 1/std of the
    latents) scales latents to unit variance: the UNet works on `mean * scaling_factor`, and the decoder is fed
    `latent / scaling_factor`, exactly as Stable Diffusion pipelines do."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        c0, c1, c2 = cfg.channels
        self.encoder = nn.ModuleList([
            nn.Conv2d(3, c0, 3, padding=1), ResBlock(c0, c0), nn.Conv2d(c0, c1, 3, stride=2, padding=1),
            ResBlock(c1, c1), nn.Conv2d(c1, c2, 3, stride=2, padding=1), ResBlock(c2, c2),
        ])
        self.enc_out = nn.Sequential(nn.GroupNorm(8, c2), nn.SiLU(), nn.Conv2d(c2, 2 * cfg.latent_channels, 3, padding=1))
        self.dec_in = nn.Conv2d(cfg.latent_channels, c2, 3, padding=1)
        self.dec_res = nn.ModuleList([ResBlock(c2, c2), ResBlock(c1, c1), ResBlock(c0, c0)])
        self.dec_up = nn.ModuleList([nn.Conv2d(c2, c1, 3, padding=1), nn.Conv2d(c1, c0, 3, padding=1)])
        self.dec_out = nn.Sequential(nn.GroupNorm(8, c0), nn.SiLU(), nn.Conv2d(c0, 3, 3, padding=1))
        self.register_buffer("scaling_factor", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean, logvar), each [B,4,16,16], unscaled."""
        for layer in self.encoder:
            x = layer(x)
        mean, logvar = self.enc_out(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent [B,4,16,16] -> image [B,3,64,64] in [-1,1]."""
        return self.dec_out(self._dec_trunk(z)).clamp(-1, 1)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, reconstruction MSE on the [-1,1] scale)."""
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = self.dec_out(self._dec_trunk(z))
        mse = F.mse_loss(recon.float(), x.float())
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).mean()
        return mse + self.cfg.kl_weight * kl, mse

    def _dec_trunk(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dec_res[0](self.dec_in(z))
        for up, res in zip(self.dec_up, self.dec_res[1:]):
            x = res(up(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        return x


# UNet --------------------------------------------------------------------------------------------------

@dataclass
class UNetConfig:
    latent_channels: int = 4
    channels: tuple[int, int, int] = (64, 96, 96)  # at 16x16, 8x8, 4x4
    cond_dim: int = 128
    time_dim: int = 192
    heads: int = 4
    ff_mult: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of float timesteps [B] -> [B,dim] (diffusers' flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, kv_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(kv_dim, dim, bias=False)
        self.v = nn.Linear(kv_dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(b, z.shape[1], h, d // h).transpose(1, 2)

        a = attention(split(self.q(x)), split(self.k(context)), split(self.v(context)), None)
        return self.out(a.transpose(1, 2).reshape(b, n, d))


class SpatialTransformer(nn.Module):
    """SD's transformer block on a feature map: self-attention, cross-attention on the text states, MLP."""

    def __init__(self, ch: int, cond_dim: int, heads: int, ff_mult: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, ch)
        self.proj_in = nn.Linear(ch, ch)
        self.ln1 = nn.LayerNorm(ch)
        self.self_attn = MultiHeadAttention(ch, ch, heads)
        self.ln2 = nn.LayerNorm(ch)
        self.cross_attn = MultiHeadAttention(ch, cond_dim, heads)
        self.ln3 = nn.LayerNorm(ch)
        self.ff = nn.Sequential(nn.Linear(ch, ff_mult * ch), nn.GELU(), nn.Linear(ff_mult * ch, ch))
        self.proj_out = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x).reshape(b, c, hh * ww).transpose(1, 2))
        n = self.ln1(h)
        h = h + self.self_attn(n, n)
        h = h + self.cross_attn(self.ln2(h), cond)
        h = h + self.ff(self.ln3(h))
        return x + self.proj_out(h).transpose(1, 2).reshape(b, c, hh, ww)


class AttentionPool(nn.Module):
    """A learned query attending over the conditioning tokens -> one vector (the pooled text summary)."""

    def __init__(self, cond_dim: int, out_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(cond_dim) * 0.02)
        self.key = nn.Linear(cond_dim, cond_dim, bias=False)
        self.proj = nn.Linear(cond_dim, out_dim)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(torch.einsum("bld,d->bl", self.key(cond), self.query) / math.sqrt(cond.shape[-1]), dim=-1)
        return self.proj(torch.einsum("bl,bld->bd", w, cond))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        c0, c1, c2 = cfg.channels
        td = cfg.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(c0, td), nn.SiLU(), nn.Linear(td, td))
        self.pool = AttentionPool(cfg.cond_dim, td)
        self.conv_in = nn.Conv2d(cfg.latent_channels, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, td)
        self.downsample0 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down1 = ResBlock(c0, c1, td)
        self.down1_attn = SpatialTransformer(c1, cfg.cond_dim, cfg.heads, cfg.ff_mult)
        self.downsample1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2 = ResBlock(c1, c2, td)
        self.down2_attn = SpatialTransformer(c2, cfg.cond_dim, cfg.heads, cfg.ff_mult)
        self.mid1 = ResBlock(c2, c2, td)
        self.mid_attn = SpatialTransformer(c2, cfg.cond_dim, cfg.heads, cfg.ff_mult)
        self.mid2 = ResBlock(c2, c2, td)
        self.up2 = ResBlock(2 * c2, c2, td)
        self.up2_attn = SpatialTransformer(c2, cfg.cond_dim, cfg.heads, cfg.ff_mult)
        self.upsample2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.up1 = ResBlock(c2 + c1, c1, td)
        self.up1_attn = SpatialTransformer(c1, cfg.cond_dim, cfg.heads, cfg.ff_mult)
        self.upsample1 = nn.Conv2d(c1, c1, 3, padding=1)
        self.up0 = ResBlock(c1 + c0, c0, td)
        self.out = nn.Sequential(nn.GroupNorm(8, c0), nn.SiLU(), nn.Conv2d(c0, cfg.latent_channels, 3, padding=1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """sample [B,4,16,16] (scaled latents), timestep [B] float, encoder_hidden_states [B,L,Dc] -> eps [B,4,16,16]."""
        cond = encoder_hidden_states
        temb = self.time_mlp(timestep_embedding(timestep, self.cfg.channels[0])) + self.pool(cond)
        x = self.conv_in(sample)
        s0 = self.down0(x, temb)
        s1 = self.down1_attn(self.down1(self.downsample0(s0), temb), cond)
        s2 = self.down2_attn(self.down2(self.downsample1(s1), temb), cond)
        x = self.mid2(self.mid_attn(self.mid1(s2, temb), cond), temb)
        x = self.up2_attn(self.up2(torch.cat([x, s2], 1), temb), cond)
        x = self.upsample2(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = self.up1_attn(self.up1(torch.cat([x, s1], 1), temb), cond)
        x = self.upsample1(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = self.up0(torch.cat([x, s0], 1), temb)
        return self.out(x)

    def loss(self, latents: torch.Tensor, cond: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
        """Epsilon-prediction MSE at uniformly drawn timesteps; `acp` = alphas_cumprod on the same device."""
        t = torch.randint(0, acp.shape[0], (latents.shape[0],), device=latents.device)
        noise = torch.randn_like(latents)
        a = acp[t][:, None, None, None]
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        return F.mse_loss(self(noisy, t.float(), cond).float(), noise.float())


@torch.no_grad()
def ddim_sample(
    unet: UNet,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    noise: torch.Tensor,
    steps: int = 25,
    guidance: float = 5.0,
) -> torch.Tensor:
    """Deterministic DDIM (eta 0) with classifier-free guidance, matching SCHEDULER_CONFIG.

    cond/uncond [B,L,Dc] (uncond = text tower on the empty text; ignored when guidance == 1), noise
    [B,4,16,16] (the initial latent; init sigma is 1) -> scaled latents (divide by the VAE's scaling factor
    before decoding)."""
    acp = alphas_cumprod().to(noise.device)
    x = noise
    ratio = NUM_TRAIN_TIMESTEPS // steps
    use_cfg = uncond is not None and guidance != 1.0
    for t in ddim_timesteps(steps):
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        if use_cfg:
            eps_u, eps_c = unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond])).chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        else:
            eps = unet(x, tt, cond)
        prev = t - ratio
        a_t = acp[t]
        a_prev = acp[prev] if prev >= 0 else torch.ones((), device=x.device)  # set_alpha_to_one
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x
