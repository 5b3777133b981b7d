"""CLIP towers (Radford et al. 2021, arXiv 2103.00020) with the Hugging Face key names.

Vision: pixel_values [B,3,S,S] -> pooler_output [B,D], the post-layernorm CLS token (what GILL feeds its
visual prefix and retrieval heads). Text: input_ids [B,L] -> last_hidden_state [B,L,D] after the final
layer norm, with a causal mask (Stable Diffusion 1.5's conditioning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .weights import ConversionError


@dataclass
class TowerConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    eps: float

    @staticmethod
    def from_hf(cfg: dict, what: str) -> "TowerConfig":
        act = cfg.get("hidden_act", "quick_gelu")
        if act != "quick_gelu":
            raise ConversionError(f"CLIP {what} config: hidden_act {act!r} is not supported (CLIP ViT-L/14 uses quick_gelu)")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in cfg]
        if missing:
            raise ConversionError(f"CLIP {what} config: missing {', '.join(missing)}")
        return TowerConfig(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                           cfg["intermediate_size"], cfg.get("layer_norm_eps", 1e-5))


class Attention(nn.Module):
    def __init__(self, c: TowerConfig, device=None):
        super().__init__()
        self.num_heads = c.num_heads
        d = c.hidden_size
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d, device=device) for _ in range(4))

    def forward(self, x, bias):
        b, t, d = x.shape
        split = lambda z: z.reshape(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
        q = split(self.q_proj(x)) * (d // self.num_heads) ** -0.5
        scores = torch.matmul(q, split(self.k_proj(x)).transpose(-1, -2))
        if bias is not None:
            scores = scores + bias
        w = torch.softmax(scores.float(), dim=-1).to(x.dtype)
        return self.out_proj(torch.matmul(w, split(self.v_proj(x))).transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, c: TowerConfig, device=None):
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.ffn_size, device=device)
        self.fc2 = nn.Linear(c.ffn_size, c.hidden_size, device=device)

    def forward(self, x):
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick_gelu


class Layer(nn.Module):
    def __init__(self, c: TowerConfig, device=None):
        super().__init__()
        self.self_attn = Attention(c, device)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.eps, device=device)
        self.mlp = MLP(c, device)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.eps, device=device)

    def forward(self, x, bias=None):
        x = x + self.self_attn(self.layer_norm1(x), bias)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c: TowerConfig, device=None):
        super().__init__()
        self.layers = nn.ModuleList(Layer(c, device) for _ in range(c.num_layers))

    def forward(self, x, bias=None):
        for layer in self.layers:
            x = layer(x, bias)
        return x


class VisionEmbeddings(nn.Module):
    def __init__(self, c: TowerConfig, image_size: int, patch_size: int, device=None):
        super().__init__()
        d = c.hidden_size
        self.class_embedding = nn.Parameter(torch.empty(d, device=device))
        self.patch_embedding = nn.Conv2d(3, d, patch_size, stride=patch_size, bias=False, device=device)
        self.position_embedding = nn.Embedding((image_size // patch_size) ** 2 + 1, d, device=device)

    def forward(self, pixels):
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class VisionTower(nn.Module):
    def __init__(self, c: TowerConfig, image_size: int, patch_size: int, device=None):
        super().__init__()
        self.embeddings = VisionEmbeddings(c, image_size, patch_size, device)
        self.pre_layrnorm = nn.LayerNorm(c.hidden_size, eps=c.eps, device=device)  # sic, Hugging Face's name
        self.encoder = Encoder(c, device)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.eps, device=device)


class CLIPVision(nn.Module):
    """Parameters under `vision_model.` as in CLIPModel / CLIPVisionModel checkpoints."""

    def __init__(self, c: TowerConfig, image_size: int, patch_size: int, device=None):
        super().__init__()
        self.config, self.image_size = c, image_size
        self.vision_model = VisionTower(c, image_size, patch_size, device)

    def forward(self, pixel_values):
        m = self.vision_model
        x = m.encoder(m.pre_layrnorm(m.embeddings(pixel_values)))
        return m.post_layernorm(x[:, 0]).float()


class TextEmbeddings(nn.Module):
    def __init__(self, c: TowerConfig, vocab_size: int, max_positions: int, device=None):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, c.hidden_size, device=device)
        self.position_embedding = nn.Embedding(max_positions, c.hidden_size, device=device)

    def forward(self, input_ids):
        return self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]


class TextTower(nn.Module):
    def __init__(self, c: TowerConfig, vocab_size: int, max_positions: int, device=None):
        super().__init__()
        self.embeddings = TextEmbeddings(c, vocab_size, max_positions, device)
        self.encoder = Encoder(c, device)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.eps, device=device)


class CLIPText(nn.Module):
    """Parameters under `text_model.` as in CLIPTextModel (Stable Diffusion's text_encoder/)."""

    def __init__(self, c: TowerConfig, vocab_size: int, max_positions: int, device=None):
        super().__init__()
        self.config, self.max_positions = c, max_positions
        self.text_model = TextTower(c, vocab_size, max_positions, device)

    def forward(self, input_ids):
        m = self.text_model
        x = m.embeddings(input_ids)
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        causal = (pos[None, :] > pos[:, None]).float() * torch.finfo(torch.float32).min
        return m.final_layer_norm(m.encoder(x, causal[None, None])).float()
