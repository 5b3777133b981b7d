"""The PyTorch reference of the engine's GILL path (docs/gill-method.md §3): prompt embedding, GILL's decoding loop,
retrieval, decision, mapper + diffusion. The golden fixtures, the evaluation, the decision labels and the
benchmark run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .diffusion import VAE, UNet, ddim_sample
from .gill import GillModel
from .tokenizer import Tokenizer


@dataclass
class DecodeResult:
    ids: list[int]  # generated ids, [IMG] blocks included
    text: str  # decoded text before the first image (newline-truncated), [IMG] strings excluded
    img_hidden: torch.Tensor | None  # [r,H] hidden states at the first [IMG0..7], or None
    img_embeds: torch.Tensor | None  # [r,H] their input embeddings
    img_position: int | None  # index of [IMG0] in `ids`
    stop: str = ""


@dataclass
class GillPipeline:
    """PyTorch reference of the engine's path: prompt embedding, GILL decoding, heads, mapper + DDIM."""

    model: GillModel
    vae: VAE
    unet: UNet
    device: str = "cpu"
    _uncond: torch.Tensor | None = field(default=None, repr=False)

    @property
    def tok(self) -> Tokenizer:
        return self.model.tok

    # step 1
    @torch.no_grad()
    def embed_prompt(self, segments: Sequence[str | np.ndarray]) -> torch.Tensor:
        """Strings are tokenised independently, BOS before the first string only, no separators; an image
        (uint8 [64,64,3]) becomes k visual tokens. -> [1,T,H]"""
        parts, first_text = [], True
        for seg in segments:
            if isinstance(seg, str):
                ids = self.tok.encode(seg, add_bos=first_text)
                first_text = False
                if ids:
                    parts.append(self.model.lm.embed(torch.tensor([ids], device=self.device)))
            elif isinstance(seg, np.ndarray):
                parts.append(self.model.heads.visual_prefix(self.model.pooled(seg[None] if seg.ndim == 3 else seg)))
            else:
                raise TypeError(f"prompt segment must be str or an image array, got {type(seg).__name__}")
        if not parts:
            raise ValueError("empty prompt")
        return torch.cat(parts, 1)

    # steps 2-5
    @torch.no_grad()
    def decode(self, embeds: torch.Tensor, num_words: int = 32, min_word_tokens: int = 0,
               ret_scale_factor: float = 1.0, gen_scale_factor: float = 1.0) -> DecodeResult:
        """Greedy GILL decoding with a KV cache: [IMG1..] blocked, [IMG0] optionally boosted by |logit|*factor,
        the whole block forced after [IMG0]. As the engine (not the paper's code): every emitted token is fed
        forward, so an [IMG0] on the last iteration still has hidden states; decoding stops at EOS or at a
        newline after the first token (the paper decodes on and cuts at that newline: same text)."""
        lm, img, r = self.model.lm, self.model.img_ids, len(self.model.img_ids)
        max_pos = lm.cfg.max_positions
        if embeds.shape[1] >= max_pos:
            raise ValueError(f"prompt of {embeds.shape[1]} tokens does not fit the LM context ({max_pos})")
        past, pos0, pending = None, 0, embeds
        ids: list[int] = []
        hiddens: list[torch.Tensor] = []  # hidden states of every fed chunk after the prompt
        stop = "max_words"
        for i in range(num_words):
            pos = torch.arange(pos0, pos0 + pending.shape[1], device=self.device)[None]
            logits, hidden, past = lm(pending, pos, past)
            pos0 += pending.shape[1]
            pending = None
            if i > 0:
                hiddens.append(hidden[0])
            lg = logits[0, -1].float().clone()
            lg[img[1:]] = -math.inf
            if i < min_word_tokens or pos0 + r > max_pos:  # the whole block must fit the context
                lg[img[0]] = -math.inf
            else:
                if ret_scale_factor > 1:
                    lg[img[0]] = lg[img[0]].abs() * ret_scale_factor
                if gen_scale_factor > 1:
                    lg[img[0]] = lg[img[0]].abs() * gen_scale_factor
            t = int(lg.argmax())
            if t == self.tok.eos_id:
                stop = "eos"
                break
            if t == self.tok.newline_id and ids:
                stop = "newline"
                break
            if pos0 + 1 > max_pos:
                stop = "context"
                break
            new = list(img) if t == img[0] else [t]
            ids += new
            pending = lm.embed(torch.tensor([new], device=self.device))
        if pending is not None:  # the last chunk was never fed: feed it so its hidden states exist
            pos = torch.arange(pos0, pos0 + pending.shape[1], device=self.device)[None]
            hiddens.append(lm(pending, pos, past)[1][0])
        gen_hidden = torch.cat(hiddens) if hiddens else torch.zeros(0, lm.cfg.hidden_size, device=self.device)
        p = ids.index(img[0]) if img[0] in ids else None
        if p is not None and ids[p : p + r] != img:
            raise AssertionError(f"[IMG] block broken at {p}: {ids[p : p + r]}")
        text = self.tok.decode(ids[:p] if p is not None else ids)
        if p is None:
            return DecodeResult(ids, text, None, None, None, stop)
        return DecodeResult(ids, text, gen_hidden[p : p + r], lm.embed(torch.tensor(img, device=self.device)), p, stop)

    # heads
    @torch.no_grad()
    def retrieval_embedding(self, h_img0: torch.Tensor) -> torch.Tensor:
        """Normalised text-side retrieval embedding [B,R] from [IMG0] hidden states [B,H]."""
        return F.normalize(self.model.heads.text_retrieval(h_img0), dim=-1)

    @torch.no_grad()
    def gallery_embeddings(self, images: np.ndarray) -> torch.Tensor:
        """exp(logit_scale) * normalised image-side embeddings [N,R] (the paper's emb_matrix)."""
        v = self.model.heads.image_retrieval(self.model.pooled(images))
        return self.model.heads.logit_scale.exp() * F.normalize(v, dim=-1)

    @torch.no_grad()
    def decision_probs(self, h_img0: torch.Tensor, retrieval_score: torch.Tensor | None = None) -> torch.Tensor:
        """[p_gen, p_ret] per row [B,2] (eval mode: dropout off); `retrieval_score` [B]: the best gallery cosine,
        for a head that takes it."""
        self.model.heads.decision.eval()
        return torch.softmax(self.model.heads.decision(h_img0, retrieval_score).float(), -1)

    @torch.no_grad()
    def mapper_cond(self, hidden: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """[B,r,H] x2 -> conditioning [B,L,Dc]."""
        return self.model.heads.mapper(hidden, embeds)

    @torch.no_grad()
    def uncond(self) -> torch.Tensor:
        """Text tower on the empty text [1,L,Dc]: the negative branch of classifier-free guidance."""
        if self._uncond is None:
            self._uncond = self.model.cond_states([""])
        return self._uncond

    @torch.no_grad()
    def generate_images(self, cond: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
        """DDIM with guidance from `noise` [B,4,16,16]; -> images [B,3,64,64] in [-1,1]."""
        un = self.uncond().expand(cond.shape[0], -1, -1)
        lat = ddim_sample(self.unet, cond, un, noise, steps=steps, guidance=guidance)
        return self.vae.decode(lat / self.vae.scaling_factor)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        c = self.unet.cfg.latent_channels
        return torch.randn(n, c, 16, 16, generator=g).to(self.device)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,S,S] in [-1,1] -> uint8 [B,S,S,3]."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()
