"""The bundle's graphs: which module, which trace inputs, which names and dynamic axes (models/README.md)."""

from __future__ import annotations

import torch
from torch import nn

from .clip import CLIPText, CLIPVision
from .heads import CastLinear, GILLMapper, VisualPrefix
from .opt import OPT
from .unet import UNet
from .vae import VAEDecoder


class _Embed(nn.Module):
    def __init__(self, lm: OPT):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm.embed(input_ids)


def _batch(*names: str) -> dict:
    return {n: {0: "batch"} for n in names}


def lm_embed(lm: OPT) -> tuple:
    return (_Embed(lm), (torch.tensor([[2, 5, 7]]),), ["input_ids"], ["inputs_embeds"],
            {"input_ids": {0: "batch", 1: "seq"}, "inputs_embeds": {0: "batch", 1: "seq"}})


def lm_decoder(lm: OPT) -> tuple:
    c = lm.config
    dtype = lm.decoder.embed_tokens.weight.dtype
    kv_in = [f"past_key_values.{i}.{kv}" for i in range(c.num_layers) for kv in ("key", "value")]
    kv_out = [f"present.{i}.{kv}" for i in range(c.num_layers) for kv in ("key", "value")]
    b, t, p = 2, 3, 2
    args = (torch.randn(b, t, c.hidden_size), torch.ones(b, p + t, dtype=torch.long),
            *[torch.randn(b, c.num_heads, p, c.head_dim).to(dtype) for _ in kv_in])
    axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
            "logits": {0: "batch", 1: "seq"}, "hidden_states": {0: "batch", 1: "seq"}}
    axes.update({n: {0: "batch", 2: "past"} for n in kv_in})
    axes.update({n: {0: "batch", 2: "total"} for n in kv_out})
    return lm, args, ["inputs_embeds", "attention_mask", *kv_in], ["logits", "hidden_states", *kv_out], axes


def image_encoder(m: CLIPVision) -> tuple:
    s = m.image_size
    return m, (torch.randn(1, 3, s, s),), ["pixel_values"], ["pooler_output"], _batch("pixel_values", "pooler_output")


def text_encoder(m: CLIPText) -> tuple:
    return (m, (torch.zeros(1, m.max_positions, dtype=torch.long),), ["input_ids"], ["last_hidden_state"],
            _batch("input_ids", "last_hidden_state"))


def visual_prefix(m: VisualPrefix, dv: int) -> tuple:
    return m, (torch.randn(1, dv),), ["pooled"], ["prefix"], _batch("pooled", "prefix")


def projection(m: CastLinear, input_name: str) -> tuple:
    return m, (torch.randn(1, m.in_features),), [input_name], ["embedding"], _batch(input_name, "embedding")


def decision(m: CastLinear) -> tuple:
    return m, (torch.randn(1, m.in_features),), ["hidden"], ["logits"], _batch("hidden", "logits")


def mapper(m: GILLMapper, r: int, h: int) -> tuple:
    return (m, (torch.randn(1, r, h), torch.randn(1, r, h)), ["hidden", "token_embeds"], ["cond"],
            _batch("hidden", "token_embeds", "cond"))


def unet(m: UNet, latent: int, context_len: int) -> tuple:
    c = m.config
    args = (torch.randn(2, c.in_channels, latent, latent), torch.tensor([999.0, 10.0]),
            torch.randn(2, context_len, c.cross_attention_dim))
    return (m, args, ["sample", "timestep", "encoder_hidden_states"], ["noise_pred"],
            _batch("sample", "timestep", "encoder_hidden_states", "noise_pred"))


def vae_decoder(m: VAEDecoder, latent: int) -> tuple:
    return (m, (torch.randn(1, m.config.latent_channels, latent, latent),), ["latent"], ["image"],
            _batch("latent", "image"))
