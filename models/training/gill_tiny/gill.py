"""The GILL stage (gill-method.md §1-§3) on top of the frozen stand-in backbones.

Trainable, as in the paper: the r [IMG] rows of the LM's tied embedding matrix (gradient masked to those rows,
each renormalised after every step to the mean norm of the frozen rows), the visual prefix (pooled image
feature -> k LM input tokens), the retrieval projections and their learnable temperature, and the GILLMapper.
The decision head is trained afterwards on labels made by actually retrieving and generating (`decision_stage`).

This module also holds the PyTorch reference pipeline (prompt embedding, GILL's decoding loop, retrieval,
decision, mapper + diffusion) that the golden fixtures, the evaluation and the benchmark run.
"""

from __future__ import annotations

import math
import random
import time
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from . import data as D
from .diffusion import VAE, UNet, ddim_sample
from .export import Backbones
from .tokenizer import IMG_TOKENS, Tokenizer

IGNORE = -100
IMG_SUFFIX = "".join(IMG_TOKENS)
GEN, RET = 0, 1  # decision classes, as the paper's idx2dec


@dataclass
class GillConfig:
    num_visual_tokens: int = 4  # k
    retrieval_dim: int = 128  # R
    mapper_width: int = 128  # the paper's 512, scaled down with the LM
    mapper_heads: int = 4
    mapper_layers: int = 2  # encoder and decoder layers each (paper: 4 + 4)
    mapper_ffn: int = 512
    max_len: int = 32  # caption tokens incl. BOS and the [IMG] block (--max-len)
    concat_prob: float = 0.5
    batch_size: int = 128
    steps: int = 4000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_frac: float = 0.1  # paper: 2k warmup of 20k steps, x0.1 at 12k
    decay_frac: float = 0.6
    grad_clip: float = 1.0
    emoji_frac: float = 0.3  # share of emoji pairs in a batch
    # Context pairs (an addition to the paper's caption-only stage): a training-split dialogue or story with a caption
    # of its final scene, extra rows per step for the [IMG] and mapper losses. The paper's 7B LM already
    # reads a dialogue into the state its caption would give; the stand-in LM needs these rows to learn that.
    context_rows: int = 0
    context_pairs: int = 20000
    context_max_len: int = 128
    eval_every: int = 250
    # retrieval refinement (stage_retrieval): the same contrastive loss on cached [IMG0] states, big batches
    refine_steps: int = 0
    refine_batch: int = 2048
    refine_lr: float = 3e-3
    refine_scenes: int = 20000  # training scenes whose captions are cached (all emoji always are)
    # decision stage
    decision_score: bool = True  # [h_IMG0 ; best retrieval cosine], the paper's first decision model (4097-d)
    # Prompts whose retrieved and generated images are within this CLIP cosine of each other are ties (either
    # image serves): left out of training and of the headline F1, as the paper's PartiPromptsDecisionsConfident
    # keeps only confident labels.
    decision_tie_margin: float = 0.02
    decision_prompts: int = 900
    decision_gallery_scenes: int = 300
    decision_steps: int = 2000
    gen_steps: int = 10  # DDIM steps used to label decisions and in evaluation
    guidance: float = 5.0

    def to_dict(self) -> dict:
        return asdict(self)


# modules ---------------------------------------------------------------------------------------------------

class VisualPrefix(nn.Module):
    """`visual_embeddings`: pooled [B,Dv] -> k soft LM tokens [B,k,H]."""

    def __init__(self, pooled: int, hidden: int, k: int):
        super().__init__()
        self.k, self.hidden = k, hidden
        self.visual_embeddings = nn.Linear(pooled, k * hidden)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.visual_embeddings(pooled).reshape(pooled.shape[0], self.k, self.hidden)


class GILLMapper(nn.Module):
    """Pre-LN nn.Transformer encoder-decoder (final norms included, ReLU, no dropout, no masks) from the r [IMG]
    states plus their input embeddings to the text tower's token states [B,L,Dc] (gill/layers.py)."""

    def __init__(self, hidden: int, width: int, heads: int, layers: int, ffn: int, length: int, cond_dim: int):
        super().__init__()
        self.fc = nn.Linear(hidden, width)
        self.tfm = nn.Transformer(
            d_model=width, nhead=heads, num_encoder_layers=layers, num_decoder_layers=layers, dim_feedforward=ffn,
            dropout=0.0, activation="relu", batch_first=True, norm_first=True,
        )
        self.model = nn.Linear(width, cond_dim)
        self.query_embs = nn.Parameter(torch.randn(1, length, width))  # std 1, as the paper

    def forward(self, hidden: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        x = self.fc(hidden + token_embeds)
        q = self.query_embs.expand(x.shape[0], -1, -1)
        return self.model(self.tfm(x, q))


class DecisionHead(nn.Module):
    """`Dropout(0.5) -> Linear(H [+1], 2)` on the [IMG0] hidden state, with the best gallery cosine appended when
    `uses_score` (the reference code's input until Aug 2023: [h_IMG0 ; max retrieval score]). Without it the head
    cannot tell a prompt whose image is in the gallery from one whose image is not."""

    def __init__(self, hidden: int, uses_score: bool):
        super().__init__()
        self.uses_score = uses_score
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(hidden + int(uses_score), 2)

    def forward(self, hidden: torch.Tensor, retrieval_score: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_score:
            if retrieval_score is None:
                raise ValueError("this decision head needs the best retrieval score of each prompt")
            hidden = torch.cat([hidden, retrieval_score.reshape(-1, 1).to(hidden)], -1)
        return self.linear(self.dropout(hidden))


class GillHeads(nn.Module):
    """Everything the GILL stage adds besides the [IMG] rows (names as export.GillHeads expects)."""

    def __init__(self, cfg: GillConfig, hidden: int, pooled: int, cond_len: int, cond_dim: int):
        super().__init__()
        self.num_visual_tokens = cfg.num_visual_tokens
        self.retrieval_dim = cfg.retrieval_dim
        self.visual_prefix = VisualPrefix(pooled, hidden, cfg.num_visual_tokens)
        self.image_retrieval = nn.Linear(pooled, cfg.retrieval_dim)  # the paper's visual_fc
        self.text_retrieval = nn.Linear(hidden, cfg.retrieval_dim)  # ret_text_hidden_fcs[0] on [IMG0]
        self.mapper = GILLMapper(hidden, cfg.mapper_width, cfg.mapper_heads, cfg.mapper_layers, cfg.mapper_ffn,
                                 cond_len, cond_dim)
        self.decision = DecisionHead(hidden, cfg.decision_score)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # never clamped, as the paper


def freeze(b: Backbones) -> None:
    for m in (b.lm, b.clip, b.vae, b.unet):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def build_heads(cfg: GillConfig, b: Backbones) -> GillHeads:
    c = b.clip.cfg
    return GillHeads(cfg, b.lm.cfg.hidden_size, c.pooled_size, c.text_max_length, c.text_width)


# image input ---------------------------------------------------------------------------------------------

def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,64,64,3] (or [64,64,3]) -> float [N,3,64,64] normalised with mean = std = 0.5 (the manifest's)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    if x.dim() == 3:
        x = x[None]
    return x.permute(0, 3, 1, 2) / 127.5 - 1.0


def load_image(path: Path, size: int = D.IMAGE_SIZE) -> np.ndarray:
    """An image file -> uint8 [size,size,3], the manifest's preprocessing (shortest side bicubic, centre crop;
    alpha flattened onto white). A missing or unreadable file raises ValueError naming it."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgba = im.convert("RGBA")
    except FileNotFoundError as e:
        raise ValueError(f"image file not found: {path}") from e
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, D.BACKGROUND + (255,)), rgba).convert("RGB")
    w, h = rgb.size
    s = size / min(w, h)
    rgb = rgb.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = rgb.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)


# batches -------------------------------------------------------------------------------------------------

def tokenize_captions(tok: Tokenizer, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, list[int]]:
    """`BOS caption[IMG0..7] pad...` [B,max_len] and the non-pad lengths. As the paper's data.py: a caption
    that does not fit is truncated and its last r tokens overwritten with the [IMG] block."""
    r = len(tok.img_ids)
    rows, lens = [], []
    for c in captions:
        ids = tok.encode(c + IMG_SUFFIX, add_bos=True)
        if len(ids) > max_len:
            ids = ids[:max_len]
            ids[-r:] = tok.img_ids
        lens.append(len(ids))
        rows.append(ids + [tok.pad_id] * (max_len - len(ids)))
    return torch.tensor(rows, dtype=torch.long), lens


def _concat_index(lens_a: Sequence[int], lens_b: Sequence[int], width: int, drop: int) -> torch.Tensor:
    """Flat source indices for the paper's concatenated-caption rows: for pairs (2i, 2i+1) of rows of `width`
    positions, `[a[:la], b[:lb] without position drop, a[la:], b[lb:] without drop]` -> [B/2, 2*width-1]."""
    rows = []
    for i, (la, lb) in enumerate(zip(lens_a, lens_b)):
        a0, b0 = 2 * i * width, (2 * i + 1) * width
        b_text = [b0 + j for j in range(lb) if j != drop]
        rows.append([a0 + j for j in range(la)] + b_text + [a0 + j for j in range(la, width)]
                    + [b0 + j for j in range(lb, width)])
    return torch.tensor(rows, dtype=torch.long)


def _mask_from_first(labels: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Labels set to IGNORE from the first position where `stop` holds, in each row."""
    return labels.masked_fill(stop.long().cumsum(1) > 0, IGNORE)


def lm_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF's shifted mean token cross-entropy."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)


def contrastive_loss(text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-way InfoNCE (losses.py): logits_per_image = e^s norm(v) norm(t)^T, targets arange.
    Returns (loss, text->image top-1 accuracy)."""
    t = F.normalize(text.float(), dim=-1)
    v = F.normalize(image.float(), dim=-1)
    logits_per_image = logit_scale.exp() * v @ t.t()
    target = torch.arange(t.shape[0], device=t.device)
    loss = (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.t(), target)) / 2
    acc = (logits_per_image.t().argmax(-1) == target).float().mean()
    return loss, acc


def l2_distance_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ℓ_g: per-token Euclidean distance, averaged over batch and tokens (not MSE)."""
    return (pred.float() - target.float()).pow(2).sum(-1).sqrt().mean()


class GillModel(nn.Module):
    """Frozen backbones + trainable heads + the trainable [IMG] rows of the tied LM embedding."""

    def __init__(self, b: Backbones, heads: GillHeads):
        super().__init__()
        self.tok = b.tokenizer
        self.lm, self.clip, self.heads = b.lm, b.clip, heads
        self.img_ids = list(self.tok.img_ids)
        V = self.lm.cfg.vocab_size
        if V != self.tok.vocab_size:
            raise ValueError(f"LM vocabulary ({V}) does not match the tokenizer ({self.tok.vocab_size})")
        if self.img_ids != list(range(V - len(self.img_ids), V)):
            raise ValueError("the [IMG] tokens must be the last rows of the vocabulary")
        mask = torch.zeros(V, 1, device=self.embed_weight.device)
        mask[self.img_ids] = 1.0
        self.register_buffer("grad_mask", mask, persistent=False)

    @property
    def embed_weight(self) -> nn.Parameter:
        return self.lm.embed_tokens.weight

    def train(self, mode: bool = True) -> "GillModel":
        super().train(mode)
        self.lm.eval()  # the frozen backbones stay in eval mode, as GILLModel.train does
        self.clip.eval()
        return self

    def enable_img_row_training(self) -> None:
        """The whole tied matrix takes gradients, masked to the [IMG] rows (main.py:584-593)."""
        w = self.embed_weight
        w.requires_grad_(True)
        w.register_hook(lambda g: g * self.grad_mask.to(g))

    @torch.no_grad()
    def renormalise_img_rows(self) -> None:
        """Each [IMG] row rescaled to the mean L2 norm of the frozen rows (main.py:602-607)."""
        w = self.embed_weight
        r = len(self.img_ids)
        frozen_norm = w[:-r].norm(dim=-1).mean()
        w[-r:] = w[-r:] * (frozen_norm / w[-r:].norm(dim=-1, keepdim=True))

    def run_lm(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-sequence LM pass, no attention mask (right padding, causal only) -> logits, post-norm hidden."""
        b, t, _ = embeds.shape
        pos = torch.arange(t, device=embeds.device).expand(b, t)
        logits, hidden, _ = self.lm(embeds, pos)
        return logits, hidden

    # the three training forward passes (models.py:164-441) ------------------------------------------------
    def captioning(self, pooled: torch.Tensor, ids: torch.Tensor, lens: list[int], concat: bool) -> torch.Tensor:
        """[k visual tokens ; BOS caption [IMG..] pad]: the LM loss covers predicting BOS after the visual tokens
        and every caption token, not the [IMG] block. Concat: [vis1 BOS cap1 vis2 cap2 | pads]."""
        k = self.heads.num_visual_tokens
        vis = self.heads.visual_prefix(pooled)
        seq = torch.cat([vis, self.lm.embed(ids)], 1)
        labels = torch.cat([torch.full((ids.shape[0], k), IGNORE, device=ids.device), ids], 1)
        stop = (labels == self.tok.pad_id) | torch.isin(labels, torch.tensor(self.img_ids, device=ids.device))
        labels = _mask_from_first(labels, stop)
        if concat:
            # pad_idx is the first pad or [IMG] position: the [IMG] block moves behind both captions.
            first = [k + n - len(self.img_ids) for n in lens]
            idx = _concat_index(first[0::2], first[1::2], seq.shape[1], drop=k).to(ids.device)
            seq = seq.reshape(-1, seq.shape[-1])[idx]
            labels = labels.reshape(-1)[idx]
        logits, _ = self.run_lm(seq)
        return lm_ce(logits, labels)

    def img_mode(self, ids: torch.Tensor, lens: list[int], concat: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Retrieval/generation mode: text only, `BOS caption [IMG0..7]`. Returns (LM loss over the caption and
        [IMG0], hidden states [B,r,H] at the [IMG] positions, their input embeddings [B,r,H]).

        Concat: rows [BOS cap1 IMG x8 cap2 IMG x8 | pads]; both [IMG] groups are read, the second conditioned on
        the first. As in the paper's code, labels stop at the first [IMG1], so the concatenated rows supervise
        cap1 and its [IMG0] only."""
        r = len(self.img_ids)
        seq = self.lm.embed(ids)
        labels = _mask_from_first(ids.clone(), ids == self.tok.pad_id)
        n = ids.shape[0]
        if concat:
            idx = _concat_index(lens[0::2], lens[1::2], ids.shape[1], drop=0).to(ids.device)
            seq = seq.reshape(-1, seq.shape[-1])[idx]
            labels = labels.reshape(-1)[idx]
            la, lb = lens[0::2], lens[1::2]
            rows = [i // 2 for i in range(n)]
            ends = [la[i // 2] if i % 2 == 0 else la[i // 2] + lb[i // 2] - 1 for i in range(n)]
        else:
            rows, ends = list(range(n)), list(lens)
        stop = (labels == self.tok.pad_id) | torch.isin(labels, torch.tensor(self.img_ids[1:], device=ids.device))
        labels = _mask_from_first(labels, stop)
        logits, hidden = self.run_lm(seq)
        row_t = torch.tensor(rows, device=ids.device)[:, None]
        pos = torch.tensor(ends, device=ids.device)[:, None] - r + torch.arange(r, device=ids.device)[None]
        return lm_ce(logits, labels), hidden[row_t, pos], seq[row_t, pos]

    def step_losses(self, pooled: torch.Tensor, ids: torch.Tensor, lens: list[int], cond_target: torch.Tensor,
                    draws: Sequence[bool]) -> dict[str, torch.Tensor]:
        """L = CE_cap + 0.5 CE_ret + 0.5 CE_gen + (CE_t2i + CE_i2t)/2 + ℓ_g; `draws` = concat flags per mode."""
        cap = self.captioning(pooled, ids, lens, draws[0])
        ce_ret, h_ret, _ = self.img_mode(ids, lens, draws[1])
        ret, t2i_acc = contrastive_loss(self.heads.text_retrieval(h_ret[:, 0]), self.heads.image_retrieval(pooled),
                                        self.heads.logit_scale)
        ce_gen, h_gen, e_gen = self.img_mode(ids, lens, draws[2])
        gen = l2_distance_loss(self.heads.mapper(h_gen, e_gen), cond_target)
        total = cap + 0.5 * ce_ret + 0.5 * ce_gen + ret + gen
        return {"loss": total, "cap": cap, "ce_ret": ce_ret, "ce_gen": ce_gen, "ret": ret, "gen": gen,
                "t2i_acc": t2i_acc}

    def context_losses(self, ids: torch.Tensor, lens: list[int], cond_target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Context rows: 0.5 CE (the prompt and its [IMG0]) + ℓ_g. No captioning, and no contrastive term: many
        contexts end in the same few attribute combinations (false negatives), and measured with it, the shared
        retrieval heads lost two thirds of their emoji recall."""
        ce, h, e = self.img_mode(ids, lens, False)
        gen = l2_distance_loss(self.heads.mapper(h, e), cond_target)
        return {"ctx_loss": 0.5 * ce + gen, "ctx_ce": ce, "ctx_gen": gen}

    # helpers used by inference, fixtures and evaluation ----------------------------------------------------
    @torch.no_grad()
    def pooled(self, images: np.ndarray, batch: int = 256) -> torch.Tensor:
        dev = self.embed_weight.device
        return torch.cat([self.clip.encode_image(to_pixels(images[i : i + batch]).to(dev))
                          for i in range(0, len(images), batch)])

    @torch.no_grad()
    def cond_states(self, texts: Sequence[str]) -> torch.Tensor:
        """The text tower's token states for `texts` (SD's conditioning; the GILLMapper's targets) [B,L,Dc]."""
        L = self.clip.cfg.text_max_length
        ids = torch.tensor([self.tok.encode_text_condition(t, L) for t in texts], device=self.embed_weight.device)
        return self.clip.encode_text_states(ids)

    @torch.no_grad()
    def img_states(self, texts: Sequence[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states and input embeddings at [IMG0..7] for `BOS text[IMG0..7]` (right-padded batch) [B,r,H]."""
        dev = self.embed_weight.device
        rows = [self.tok.encode(t + IMG_SUFFIX, add_bos=True) for t in texts]
        width = max(len(x) for x in rows) if max_len is None else max_len
        too_long = [t for t, x in zip(texts, rows) if len(x) > width or len(x) > self.lm.cfg.max_positions]
        if too_long:
            raise ValueError(f"prompt too long for the LM context: {too_long[0]!r}")
        ids = torch.tensor([x + [self.tok.pad_id] * (width - len(x)) for x in rows], device=dev)
        _, hidden = self.run_lm(self.lm.embed(ids))
        r = len(self.img_ids)
        pos = torch.tensor([len(x) for x in rows], device=dev)[:, None] - r + torch.arange(r, device=dev)[None]
        row = torch.arange(len(rows), device=dev)[:, None]
        return hidden[row, pos], self.lm.embed(ids)[row, pos]


# training data -------------------------------------------------------------------------------------------

@dataclass
class Pairs:
    """Image-caption pairs of one split, ready for indexing on the device: pooled features of the (frozen) image
    tower computed once, every caption wording pre-tokenised for the LM and for the text tower."""

    pooled: torch.Tensor  # [N,Dv]
    ids: torch.Tensor  # [N,V,max_len] `BOS caption[IMG0..7] pad`
    lens: torch.Tensor  # [N,V] non-pad lengths (CPU)
    cond_ids: torch.Tensor  # [N,V,L] text-tower ids of the same wording
    is_emoji: torch.Tensor  # [N] bool (CPU)
    captions: list[list[str]]


def make_pairs(model: GillModel, data: dict, split: str, max_len: int) -> Pairs:
    """Rendered scenes of `split` plus the emoji of `split` (emoji are split by name for the GILL stage)."""
    sh, em = data["shapes"][split], data["emoji"]
    keep = [i for i, s in enumerate(em["splits"]) if s == split]
    # Emoji take every wording (data's emoji captions are 3 random draws: a third of the names would never be
    # seen bare, which is how people search).
    caps = [list(c) for c in sh["captions"]] + [list(D.emoji_wordings(em["names"][i])) for i in keep]
    images = sh["images"].numpy()
    if keep:
        images = np.concatenate([images, em["images"][keep].numpy()])
    L = model.clip.cfg.text_max_length
    flat = [c for cs in caps for c in cs]
    ids, lens = tokenize_captions(model.tok, flat, max_len)
    n, v = len(caps), len(caps[0])
    cond = torch.tensor([model.tok.encode_text_condition(c, L) for c in flat])
    dev = model.embed_weight.device
    return Pairs(model.pooled(images), ids.reshape(n, v, -1).to(dev), torch.tensor(lens).reshape(n, v),
                 cond.reshape(n, v, -1).to(dev), torch.arange(n) >= len(sh["captions"]), caps)


@dataclass
class ContextPairs:
    """Dialogue / story prompts (`BOS prompt[IMG0..7] pad`) with the caption of their final scene."""

    ids: torch.Tensor  # [N,context_max_len]
    lens: torch.Tensor  # [N] (CPU)
    cond_ids: torch.Tensor  # [N,L] text-tower ids of the final scene's caption
    prompts: list[str]


def make_context_pairs(model: GillModel, split: str, n: int, seed: int, max_len: int) -> ContextPairs:
    """`n` seeded contexts of `split`, alternating dialogues (GILL's `Q: ... A:` template, as evaluated) and
    stories, each with a caption of its final scene. A prompt longer than `max_len` tokens raises ValueError (truncating would cut its last turn)."""
    rng = random.Random(seed)
    prompts, scenes = [], []
    for i in range(n):
        c = D.make_dialogue(rng, split) if i % 2 == 0 else D.make_story(rng, split)
        prompts.append(c.prompt() if isinstance(c, D.Dialogue) else c.text())
        scenes.append(c.final_scene)
    rows = [model.tok.encode(t + IMG_SUFFIX, add_bos=True) for t in prompts]
    longest = max(range(n), key=lambda i: len(rows[i]), default=None)
    if longest is not None and len(rows[longest]) > max_len:
        raise ValueError(f"context prompt of {len(rows[longest])} tokens exceeds context_max_len {max_len}: "
                         f"{prompts[longest][:80]!r}...")
    dev = model.embed_weight.device
    ids = torch.tensor([x + [model.tok.pad_id] * (max_len - len(x)) for x in rows], dtype=torch.long)
    L = model.clip.cfg.text_max_length
    cond = torch.tensor([model.tok.encode_text_condition(D.caption(sc, rng), L) for sc in scenes])
    return ContextPairs(ids.to(dev), torch.tensor([len(x) for x in rows]), cond.to(dev), prompts)


def sample_context_batch(p: ContextPairs, g: torch.Generator, batch: int) -> tuple[torch.Tensor, ...]:
    """-> ids (trimmed to the longest row), lens (list), cond_ids."""
    idx = torch.randint(len(p.prompts), (batch,), generator=g)
    dev_idx = idx.to(p.ids.device)
    width = int(p.lens[idx].max())
    return p.ids[dev_idx, :width], p.lens[idx].tolist(), p.cond_ids[dev_idx]


def sample_batch(p: Pairs, g: torch.Generator, batch: int, emoji_frac: float) -> tuple[torch.Tensor, ...]:
    """A batch with `emoji_frac` emoji pairs, a random wording each, shuffled so concatenated pairs mix kinds.
    -> pooled, ids, lens (list), cond_ids."""
    emoji_idx = torch.nonzero(p.is_emoji).flatten()
    scene_idx = torch.nonzero(~p.is_emoji).flatten()
    n_e = round(batch * emoji_frac) if len(emoji_idx) else 0
    idx = torch.cat([scene_idx[torch.randint(len(scene_idx), (batch - n_e,), generator=g)],
                     emoji_idx[torch.randint(max(1, len(emoji_idx)), (n_e,), generator=g)]])
    idx = idx[torch.randperm(batch, generator=g)]
    var = torch.randint(p.ids.shape[1], (batch,), generator=g)
    dev_idx, dev_var = idx.to(p.pooled.device), var.to(p.pooled.device)
    width = int(p.lens[idx, var].max())
    return (p.pooled[dev_idx], p.ids[dev_idx, dev_var, :width], p.lens[idx, var].tolist(), p.cond_ids[dev_idx, dev_var])


# training ------------------------------------------------------------------------------------------------

PRESET_CONFIGS = {
    # Trained on one H100 (about 4 minutes; on 2 CPU cores expect ~3 s a step). The paper's batch of 200 and
    # 30% emoji left emoji name->image R@5 at 0.36: 160 emoji rows a step give each name ~370 contrastive
    # views. The context rows lift dialogue / story generation from +20 to +72 points over the last-message
    # baseline (EVAL.md, measured side by side).
    "full": GillConfig(batch_size=320, steps=3000, emoji_frac=0.5, context_rows=64, refine_steps=2000),
    "smoke": GillConfig(steps=24, batch_size=8, eval_every=12, refine_steps=60, refine_batch=64, refine_scenes=64,
                        decision_prompts=24,
                        decision_gallery_scenes=16, decision_steps=60, gen_steps=4),
    "untrained": GillConfig(steps=0, decision_prompts=0),
}


def gill_config(preset_name: str, overrides: dict[str, str] | None = None) -> GillConfig:
    """The preset's GILL configuration with `overrides` (field name -> value as text, train.py's --gill)."""
    if preset_name not in PRESET_CONFIGS:
        raise ValueError(f"no GILL configuration for preset {preset_name!r}; known: {sorted(PRESET_CONFIGS)}")
    cfg = PRESET_CONFIGS[preset_name]
    fields = {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    changes = {}
    for key, text in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"unknown GILL setting {key!r}; known: {sorted(fields)}")
        kind = fields[key]
        if kind in (tuple, bool):
            raise ValueError(f"GILL setting {key!r} cannot be overridden from the command line")
        try:
            changes[key] = kind(text)
        except ValueError as e:
            raise ValueError(f"GILL setting {key}={text!r} is not a valid {kind.__name__}") from e
    return dataclasses.replace(cfg, **changes)


def _lr_lambda(cfg: GillConfig) -> Callable[[int], float]:
    """Linear warmup, then x0.1 once (the paper: 2k warmup, decay at 12k of 20k steps)."""
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    step_size = max(1, int((cfg.decay_frac - cfg.warmup_frac) * cfg.steps))
    return lambda s: (s + 1) / warm if s < warm else 0.1 ** ((s - warm) // step_size)


def make_optimizer(model: GillModel, cfg: GillConfig) -> torch.optim.Optimizer:
    """AdamW as main.py (lr 1e-3, betas 0.9/0.95, wd 0.01, eps 1e-8) with fp32 master weights. The embedding
    matrix gets no weight decay: decoupled decay would shrink the frozen rows, which the paper's bf16 run never
    did (its 1 - lr*wd rounded to 1); the [IMG] rows are renormalised after every step anyway."""
    heads = [p for n, p in model.heads.named_parameters() if not n.startswith("decision.")]
    return torch.optim.AdamW(
        [{"params": heads}, {"params": [model.embed_weight], "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps,
    )


@torch.no_grad()
def validate(model: GillModel, batch: tuple[torch.Tensor, ...],
             context: tuple[torch.Tensor, ...] | None = None) -> dict[str, float]:
    """Held-out batch: every loss term, text->image top-1 and teacher-forced caption token accuracy (and the
    context rows' losses when given)."""
    pooled, ids, lens, cond_ids = batch
    out = model.step_losses(pooled, ids, lens, model.clip.encode_text_states(cond_ids), (False, False, False))
    if context is not None:
        c_ids, c_lens, c_cond = context
        out.update(model.context_losses(c_ids, c_lens, model.clip.encode_text_states(c_cond)))
    k = model.heads.num_visual_tokens
    logits, _ = model.run_lm(torch.cat([model.heads.visual_prefix(pooled), model.lm.embed(ids)], 1))
    pred = logits[:, k - 1 : -1].argmax(-1)  # predictions of BOS and the caption tokens
    valid = (ids != model.tok.pad_id) & ~torch.isin(ids, torch.tensor(model.img_ids, device=ids.device))
    res = {f"val_{n}": round(float(v), 5) for n, v in out.items()}
    res["val_caption_token_acc"] = round(float(((pred == ids) & valid).sum() / valid.sum()), 4)
    return res


def backbones(ctx) -> Backbones:
    """The finished backbone stages of a run (`stages.Context`), frozen."""
    b = Backbones(ctx.tokenizer(), ctx.lm(), ctx.clip(), ctx.vae(), ctx.unet())
    freeze(b)
    return b


def gill_model(ctx, b: Backbones, cfg: GillConfig, trained: bool) -> GillModel:
    """GillModel on ctx.device; `trained` loads the finished gill (and, when present, retrieval and decision)
    stages."""
    torch.manual_seed(ctx.preset.seed + 20)
    heads = build_heads(cfg, b)
    for m in (b.lm, b.clip, b.vae, b.unet, heads):
        m.to(ctx.device)
    model = GillModel(b, heads)
    if trained:
        load_trained(ctx, model, need_decision=False)
    return model


def load_trained(ctx, model: GillModel, need_decision: bool) -> None:
    """The gill stage's heads and [IMG] rows, the refined retrieval projections, the decision head."""
    load_gill_state(ctx.load("gill"), model, ctx.path("gill"))
    if ctx.done("retrieval"):
        model.heads.load_state_dict(ctx.load("retrieval")["heads"], strict=False)
    if need_decision or ctx.done("decision"):
        try:
            model.heads.decision.load_state_dict(ctx.load("decision")["state"])
        except RuntimeError as e:
            raise ValueError(f"decision checkpoint {ctx.path('decision')} does not match the decision head ({e}); "
                             "delete it to redo the stage") from e


def stage_gill(ctx) -> None:
    """The GILL stage (stages.Context): resumable from `<work>/gill.partial.pt`, writes `<work>/gill.pt`."""
    from .stages import _atomic_save, _load_checked  # the run's checkpoint conventions

    cfg = gill_config(ctx.preset.name, ctx.gill_overrides)
    b = backbones(ctx)
    model = gill_model(ctx, b, cfg, trained=False)
    model.enable_img_row_training()
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    partial = ctx.work / "gill.partial.pt"
    start = 0
    if partial.exists():
        st = _load_checked(partial, ctx.preset)
        _check_config(st["config"], cfg, partial)
        load_gill_state(st, model, partial)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start = st["step"]
        print(f"[gill] resuming at step {start} from {partial}", flush=True)
    data = ctx.load("data")
    train = make_pairs(model, data, "train", cfg.max_len)
    val = make_pairs(model, data, "val", cfg.max_len)
    val_batch = sample_batch(val, torch.Generator().manual_seed(7), min(256, len(val.captions)), cfg.emoji_frac)
    ctx_train = ctx_val = None
    if cfg.context_rows:
        ctx_train = make_context_pairs(model, "train", cfg.context_pairs, ctx.preset.seed + 40, cfg.context_max_len)
        ctx_val = sample_context_batch(
            make_context_pairs(model, "val", 256, ctx.preset.seed + 41, cfg.context_max_len),
            torch.Generator().manual_seed(8), 256)
    params = [p for grp in opt.param_groups for p in grp["params"]]
    model.train()
    t0, last_save = time.time(), time.time()
    log_every = max(1, cfg.steps // 50)
    if start == 0 and cfg.steps > 0:
        model.eval()
        ctx.metric("gill", step=0, elapsed_s=0.0, **validate(model, val_batch, ctx_val))
        model.train()
    for step in range(start, cfg.steps):
        g = torch.Generator().manual_seed(ctx.preset.seed * 1_000_003 + step)
        pooled, ids, lens, cond_ids = sample_batch(train, g, cfg.batch_size, cfg.emoji_frac)
        draws = (torch.rand(3, generator=g) < cfg.concat_prob).tolist()
        target = model.clip.encode_text_states(cond_ids)  # frozen tower, no grad (its params are frozen)
        out = model.step_losses(pooled, ids, lens, target, draws)
        if ctx_train is not None:
            c_ids, c_lens, c_cond = sample_context_batch(ctx_train, g, cfg.context_rows)
            out.update(model.context_losses(c_ids, c_lens, model.clip.encode_text_states(c_cond)))
            out["loss"] = out["loss"] + out["ctx_loss"]
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        model.renormalise_img_rows()
        last = step + 1 == cfg.steps
        if step % log_every == 0 or last:
            ctx.metric("gill", step=step + 1, lr=round(sched.get_last_lr()[0], 7), elapsed_s=round(time.time() - t0, 1),
                       logit_scale=round(float(model.heads.logit_scale), 4),
                       **{n: round(float(v), 5) for n, v in out.items()})
        if (step + 1) % cfg.eval_every == 0 or last:
            model.eval()
            ctx.metric("gill", step=step + 1, elapsed_s=round(time.time() - t0, 1), **validate(model, val_batch, ctx_val))
            model.train()
        if time.time() - last_save > ctx.checkpoint_seconds and not last:
            _atomic_save({**gill_state(model, cfg, ctx.preset), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "step": step + 1}, partial)
            last_save = time.time()
    model.eval()
    model.embed_weight.requires_grad_(False)
    ctx.save("gill", gill_state(model, cfg, ctx.preset))
    partial.unlink(missing_ok=True)


def _check_config(saved: dict, cfg: GillConfig, path: Path) -> None:
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in cfg.to_dict().items()
            if saved.get(k) != v and not (isinstance(v, tuple) and list(v) == saved.get(k))]
    if diff:
        raise ValueError(f"checkpoint {path} was made with another GILL configuration ({'; '.join(diff)}); "
                         "delete it to redo the stage")


def gill_state(model: GillModel, cfg: GillConfig, preset) -> dict:
    """Heads + the [IMG] rows (all the paper's pruned checkpoint keeps) + the backbone shapes they fit."""
    return {"preset": preset.to_dict(), "config": cfg.to_dict(),
            "heads": {k: v.detach().cpu() for k, v in model.heads.state_dict().items() if not k.startswith("decision.")},
            "img_rows": model.embed_weight[model.img_ids].detach().cpu(), "shapes": _backbone_shapes(model)}


def _backbone_shapes(model: GillModel) -> dict:
    return {"lm_hidden": model.lm.cfg.hidden_size, "vocab": model.tok.vocab_size, "img_ids": model.img_ids,
            "pooled": model.clip.cfg.pooled_size, "cond": [model.clip.cfg.text_max_length, model.clip.cfg.text_width]}


def load_gill_state(st: dict, model: GillModel, path: Path) -> None:
    """Loads heads and [IMG] rows into `model` (the rows go into the LM's tied embedding). A checkpoint made for
    other backbones or another head configuration raises ValueError naming the file and the mismatch."""
    want = _backbone_shapes(model)
    got = st.get("shapes", {})
    bad = [f"{k}: checkpoint {got.get(k)} vs backbones {v}" for k, v in want.items() if got.get(k) != v]
    if bad:
        raise ValueError(f"GILL checkpoint {path} does not match the backbones ({'; '.join(bad)})")
    missing, unexpected = model.heads.load_state_dict(st["heads"], strict=False)
    missing = [k for k in missing if not k.startswith("decision.")]
    if missing or unexpected:
        raise ValueError(f"GILL checkpoint {path} does not match the heads (missing {missing}, unexpected {unexpected})")
    with torch.no_grad():
        model.embed_weight[model.img_ids] = st["img_rows"].to(model.embed_weight.device)


# retrieval refinement -------------------------------------------------------------------------------------

RETRIEVAL_KEYS = ("text_retrieval.", "image_retrieval.", "logit_scale")


@torch.no_grad()
def cached_img0_states(model: GillModel, p: Pairs, rows: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """[IMG0] hidden states of every wording of the pairs `rows` (`BOS caption[IMG0..7]`, no concatenation)
    -> [len(rows),V,H]."""
    r, v = len(model.img_ids), p.ids.shape[1]
    flat_ids = p.ids[rows.to(p.ids.device)].reshape(len(rows) * v, -1)
    flat_lens = p.lens[rows].reshape(-1)
    out = []
    for i in range(0, len(flat_ids), chunk):
        lens = flat_lens[i : i + chunk]
        ids = flat_ids[i : i + chunk, : int(lens.max())]
        _, hidden = model.run_lm(model.lm.embed(ids))
        out.append(hidden[torch.arange(len(ids), device=ids.device), (lens - r).to(ids.device)])
    return torch.cat(out).reshape(len(rows), v, -1)


def stage_retrieval(ctx) -> None:
    """After the GILL stage, with the [IMG] rows now fixed, the retrieval projections and temperature go on
    training with the same two-way contrastive loss on cached [IMG0] states, in batches of `refine_batch`
    (`emoji_frac` emoji). The joint stage's in-batch negatives see each emoji name a few hundred times, which
    leaves name->image recall far below what these features allow. Writes `<work>/retrieval.pt`."""
    cfg = gill_config(ctx.preset.name, ctx.gill_overrides)
    b = backbones(ctx)
    model = gill_model(ctx, b, cfg, trained=True)
    heads = model.heads
    params = [p for n, p in heads.named_parameters() if n.startswith(RETRIEVAL_KEYS)]
    if cfg.refine_steps:
        data = ctx.load("data")
        pairs = make_pairs(model, data, "train", cfg.max_len)
        scenes = torch.nonzero(~pairs.is_emoji).flatten()
        g = torch.Generator().manual_seed(ctx.preset.seed + 25)
        keep = torch.cat([scenes[torch.randperm(len(scenes), generator=g)[: cfg.refine_scenes]],
                          torch.nonzero(pairs.is_emoji).flatten()])
        t0 = time.time()
        states = cached_img0_states(model, pairs, keep)
        pooled, is_emoji = pairs.pooled[keep.to(pairs.pooled.device)], pairs.is_emoji[keep]
        ctx.metric("retrieval", cached=len(keep), cache_seconds=round(time.time() - t0, 1))
        emoji_idx, scene_idx = torch.nonzero(is_emoji).flatten(), torch.nonzero(~is_emoji).flatten()
        n_e = round(cfg.refine_batch * cfg.emoji_frac) if len(emoji_idx) else 0
        opt = torch.optim.AdamW(params, lr=cfg.refine_lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.refine_steps)
        for step in range(cfg.refine_steps):
            idx = torch.cat([scene_idx[torch.randint(len(scene_idx), (cfg.refine_batch - n_e,), generator=g)],
                             emoji_idx[torch.randint(max(1, len(emoji_idx)), (n_e,), generator=g)]])
            var = torch.randint(states.shape[1], (len(idx),), generator=g)
            dev_idx = idx.to(states.device)
            loss, acc = contrastive_loss(heads.text_retrieval(states[dev_idx, var.to(states.device)]),
                                         heads.image_retrieval(pooled[dev_idx]), heads.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % max(1, cfg.refine_steps // 20) == 0 or step + 1 == cfg.refine_steps:
                ctx.metric("retrieval", step=step + 1, loss=round(loss.item(), 5), t2i_acc=round(acc.item(), 4),
                           logit_scale=round(float(heads.logit_scale), 4), elapsed_s=round(time.time() - t0, 1))
    ctx.save("retrieval", {"preset": ctx.preset.to_dict(), "config": cfg.to_dict(),
                           "heads": {k: v.detach().cpu() for k, v in heads.state_dict().items()
                                     if k.startswith(RETRIEVAL_KEYS)}})


# decision head (models.py:553-561, TrainDecisionClassifier.ipynb) --------------------------------------------

def decision_prompts(data: dict, cfg: GillConfig, seed: int) -> tuple[list[dict], np.ndarray, list[str]]:
    """Prompts with their ground-truth image, and the gallery (every emoji + held-out val scenes).

    Kinds: emoji names (the gallery holds the very image), novel scenes (test split, not in the gallery) and
    gallery scenes (val captions whose image is in the gallery). -> (prompts, gallery images, gallery labels)."""
    rng = random.Random(seed)
    em, val, test = data["emoji"], data["shapes"]["val"], data["shapes"]["test"]
    n_gal = min(cfg.decision_gallery_scenes, len(val["scenes"]))
    gallery = np.concatenate([em["images"].numpy(), val["images"][:n_gal].numpy()])
    gallery_labels = list(em["names"]) + [D.caption(s) for s in val["scenes"][:n_gal]]
    n = cfg.decision_prompts
    n_emoji, n_novel = round(0.4 * n), round(0.4 * n)
    prompts = []
    for i in rng.sample(range(len(em["names"])), min(n_emoji, len(em["names"]))):
        prompts.append({"text": D.emoji_caption(em["names"][i]), "kind": "emoji", "gt": em["images"][i].numpy()})
    for i in rng.sample(range(len(test["scenes"])), min(n_novel, len(test["scenes"]))):
        prompts.append({"text": D.caption(test["scenes"][i]), "kind": "novel_scene", "gt": test["images"][i].numpy()})
    for i in rng.sample(range(n_gal), min(n - len(prompts), n_gal)):
        prompts.append({"text": D.caption(val["scenes"][i]), "kind": "gallery_scene", "gt": val["images"][i].numpy()})
    rng.shuffle(prompts)
    return prompts, gallery, gallery_labels


@torch.no_grad()
def label_decisions(pipe: "GillPipeline", prompts: list[dict], gallery: np.ndarray, cfg: GillConfig, seed: int,
                    batch: int = 64) -> tuple[torch.Tensor, list[dict]]:
    """For every prompt, retrieve (top-1 of the gallery) and generate (mapper + DDIM), and label it by whichever
    image is closer to the ground truth under the stand-in CLIP image tower. -> ([IMG0] features [N,H], the best
    gallery cosine of each [N], rows)."""
    clip = pipe.model.clip
    gal_emb = pipe.gallery_embeddings(gallery)
    gal_clip = torch.cat([clip.embed_image(to_pixels(gallery[i : i + 256]).to(pipe.device))
                          for i in range(0, len(gallery), 256)])
    feats, scores, rows = [], [], []
    scale = pipe.model.heads.logit_scale.exp()
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        h, e = pipe.model.img_states([p["text"] for p in chunk])
        best, top = (pipe.retrieval_embedding(h[:, 0]) @ gal_emb.t()).max(-1)
        gen = pipe.generate_images(pipe.mapper_cond(h, e), pipe.noise(len(chunk), seed + start), cfg.gen_steps, cfg.guidance)
        gt = clip.embed_image(to_pixels(np.stack([p["gt"] for p in chunk])).to(pipe.device))
        sim_ret = (gt * gal_clip[top]).sum(-1)
        sim_gen = (gt * clip.embed_image(gen)).sum(-1)
        feats.append(h[:, 0])
        scores.append(best / scale)  # gal_emb carries exp(logit_scale): back to the cosine the engine's store returns
        for p, t, c, sr, sg in zip(chunk, top.tolist(), scores[-1].tolist(), sim_ret.tolist(), sim_gen.tolist()):
            rows.append({"text": p["text"], "kind": p["kind"], "retrieved": t, "score": round(c, 4), "sim_ret": round(sr, 4),
                         "sim_gen": round(sg, 4), "label": RET if sr > sg else GEN})
    return torch.cat(feats), torch.cat(scores), rows


def f1_scores(pred: Sequence[int], gold: Sequence[int]) -> dict[str, float]:
    """Accuracy, per-class F1 and macro-F1 (the notebook's metric)."""
    res = {"accuracy": sum(p == g for p, g in zip(pred, gold)) / max(1, len(gold))}
    f1s = []
    for c, name in ((GEN, "gen"), (RET, "ret")):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        res[f"f1_{name}"] = f1
        f1s.append(f1)
    res["macro_f1"] = sum(f1s) / 2
    return {k: round(v, 4) for k, v in res.items()}


def stage_decision(ctx) -> None:
    """Label prompts honestly, then train the decision head as the notebook: full-batch AdamW (lr 1e-3, wd 0,
    seed 1337), first 2/3 train, last 1/3 test, CE; macro-F1 at argmax. Ties (`decision_tie_margin`) are left out
    of training and of the `test` metrics; `test_all` counts them. Writes `<work>/decision.pt`."""
    cfg = gill_config(ctx.preset.name, ctx.gill_overrides)
    b = backbones(ctx)
    model = gill_model(ctx, b, cfg, trained=True)
    pipe = GillPipeline(model, b.vae, b.unet, str(ctx.device))
    prompts, gallery, _ = decision_prompts(ctx.load("data"), cfg, ctx.preset.seed + 30)
    head = model.heads.decision
    result: dict = {"rows": [], "metrics": {}}
    if prompts:
        feats, scores, rows = label_decisions(pipe, prompts, gallery, cfg, ctx.preset.seed + 31)
        for r in rows:
            r["confident"] = abs(r["sim_ret"] - r["sim_gen"]) >= cfg.decision_tie_margin
        labels = torch.tensor([r["label"] for r in rows], device=feats.device)
        n_train = (2 * len(rows)) // 3
        train = torch.tensor([i for i in range(n_train) if rows[i]["confident"]], device=feats.device)
        torch.manual_seed(1337)
        head.train()
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.0, eps=1e-8)
        for step in range(cfg.decision_steps):
            loss = F.cross_entropy(head(feats[train], scores[train]), labels[train])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % max(1, cfg.decision_steps // 10) == 0 or step + 1 == cfg.decision_steps:
                ctx.metric("decision", step=step + 1, loss=round(loss.item(), 5))
        head.eval()
        with torch.no_grad():
            probs = torch.softmax(head(feats, scores), -1)
        for r, p, pr in zip(rows, probs.argmax(-1).tolist(), probs.tolist()):
            r.update(pred=p, p_gen=round(pr[0], 4), p_ret=round(pr[1], 4))

        def f1(part: list[dict]) -> dict[str, float]:
            return f1_scores([r["pred"] for r in part], [r["label"] for r in part])

        test = [r for r in rows[n_train:] if r["confident"]]
        gold = [r["label"] for r in test]
        result = {"rows": rows, "n_train": n_train, "metrics": {
            "train": f1([r for r in rows[:n_train] if r["confident"]]), "test": f1(test),
            "test_all": f1(rows[n_train:]), "ties": sum(not r["confident"] for r in rows),
            "tie_margin": cfg.decision_tie_margin,
            "labels_ret_share": round(sum(r["label"] for r in rows if r["confident"])
                                      / max(1, sum(r["confident"] for r in rows)), 4),
            "majority_test_accuracy": round(max(sum(gold), len(gold) - sum(gold)) / max(1, len(gold)), 4)}}
        ctx.metric("decision", **{f"test_{k}": v for k, v in result["metrics"]["test"].items()},
                   test_all_macro_f1=result["metrics"]["test_all"]["macro_f1"], ties=result["metrics"]["ties"],
                   labels_ret_share=result["metrics"]["labels_ret_share"])
    ctx.save("decision", {"preset": ctx.preset.to_dict(), "state": {k: v.cpu() for k, v in head.state_dict().items()},
                          **result})


def export_heads(ctx, b: Backbones) -> GillHeads:
    """The trained heads for export.export_bundle; writes the trained [IMG] rows into `b.lm`'s tied embedding."""
    cfg = gill_config(ctx.preset.name, ctx.gill_overrides)
    heads = build_heads(cfg, b)
    load_trained(ctx, GillModel(b, heads), need_decision=True)
    return heads.eval()


# reference inference pipeline (gill-method.md §3) -----------------------------------------------------------

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
