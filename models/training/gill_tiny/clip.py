"""DualEncoder: the CLIP-style stand-in, trained contrastively on shapes captions and emoji names.

- Image tower (`encode_image`): a small CNN whose flattened 4x4 map (kept, so position survives) goes
  through an MLP and a final LayerNorm: the pooled, post-LN vector plays CLIP's `pooler_output` [B,Dv].
- Text tower (`encode_text_states`): a causal pre-LN Transformer over right-padded ids with a final
  LayerNorm; its token states [B,L,Dc] are the diffusion model's conditioning (SD's text-encoder role),
  and are what the GILLMapper learns to produce. No attention mask, as in SD: pads sit after the text and
  causal attention keeps them from changing the text positions.
- Projections for the contrastive loss only: image [Dv->E], text pooled at the last non-pad token [Dc->E].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .lm import attention


@dataclass
class ClipConfig:
    text_vocab_size: int
    pad_id: int = 0
    text_max_length: int = 32
    text_width: int = 128  # Dc, the conditioning dimension
    text_layers: int = 4
    text_heads: int = 4
    image_channels: tuple[int, ...] = (32, 64, 96, 128)
    pooled_size: int = 128  # Dv
    embed_dim: int = 128  # E, the contrastive space

    def to_dict(self) -> dict:
        return asdict(self)


class TextBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = (z.reshape(b, t, self.heads, w // self.heads).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(w, -1))
        x = x + self.out(attention(q, k, v, causal).transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.ln2(x))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU(),
    )


class DualEncoder(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg
        chans = (3, *cfg.image_channels)
        self.image_convs = nn.Sequential(*(_conv_block(a, b) for a, b in zip(chans, chans[1:])))  # 64 -> 4
        side = 64 // 2 ** len(cfg.image_channels)
        self.image_head = nn.Sequential(
            nn.Conv2d(chans[-1], 32, 1), nn.GELU(), nn.Flatten(),  # keep the 4x4 layout: position matters
            nn.Linear(32 * side * side, 2 * cfg.pooled_size), nn.GELU(), nn.Linear(2 * cfg.pooled_size, cfg.pooled_size),
        )
        self.image_post_norm = nn.LayerNorm(cfg.pooled_size)
        self.token_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_width)
        self.position_embedding = nn.Parameter(torch.randn(cfg.text_max_length, cfg.text_width) * 0.01)
        self.text_blocks = nn.ModuleList(TextBlock(cfg.text_width, cfg.text_heads) for _ in range(cfg.text_layers))
        self.text_final_norm = nn.LayerNorm(cfg.text_width)
        self.image_projection = nn.Linear(cfg.pooled_size, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B,3,64,64] normalised to [-1,1] -> pooled, post-LN [B,Dv] (the `pooler_output`)."""
        return self.image_post_norm(self.image_head(self.image_convs(pixel_values)))

    def encode_text_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B,L] right-padded -> post-final-LN token states [B,L,Dc] (SD's `last_hidden_state`)."""
        t = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding[:t]
        pos = torch.arange(t, device=input_ids.device)
        causal = (pos[None, :] <= pos[:, None])[None, None]
        for block in self.text_blocks:
            x = block(x, causal)
        return self.text_final_norm(x)

    def pool_text(self, states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The state at the last non-pad token (position 0 for an empty text), as CLIP pools at EOS."""
        nonpad = (input_ids != self.cfg.pad_id).long()
        last = (nonpad * torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)).argmax(-1)
        return states[torch.arange(states.shape[0], device=states.device), last]

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.encode_image(pixel_values)), dim=-1)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        states = self.encode_text_states(input_ids)
        return F.normalize(self.text_projection(self.pool_text(states, input_ids)), dim=-1)

    def contrastive_loss(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, groups: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric InfoNCE; returns (loss, image->text top-1 accuracy). `groups` [B] marks rows showing the same
        content (same scene or emoji): they count as positives for each other instead of as negatives."""
        img = self.embed_image(pixel_values)
        txt = self.embed_text(input_ids)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * img.float() @ txt.float().t()
        if groups is None:
            groups = torch.arange(logits.shape[0], device=logits.device)
        same = (groups[:, None] == groups[None, :]).float()
        target = same / same.sum(-1, keepdim=True)
        loss = (-(target * F.log_softmax(logits, -1)).sum(-1).mean() - (target * F.log_softmax(logits.t(), -1)).sum(-1).mean()) / 2
        correct = same[torch.arange(logits.shape[0], device=logits.device), logits.argmax(-1)]
        return loss, correct.mean()
