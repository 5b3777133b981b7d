"""The GILL model (docs/gill-method.md §1-§3) on top of the frozen stand-in backbones: the modules the GILL stage adds,
the losses, and `GillModel`, which runs the three training forward passes (captioning, retrieval, generation).

Trainable, as in the paper: the r [IMG] rows of the LM's tied embedding matrix (gradient masked to those rows,
each renormalised after every step to the mean norm of the frozen rows), the visual prefix (pooled image
feature -> k LM input tokens), the retrieval projections and their learnable temperature, and the GILLMapper.
Training lives in `gill_train.py`, the reference inference pipeline in `pipeline.py`, the configurations in
`presets.py`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from . import data as D
from .export import Backbones
from .presets import GillConfig
from .tokenizer import IMG_TOKENS, Tokenizer

IGNORE = -100
IMG_SUFFIX = "".join(IMG_TOKENS)
GEN, RET = 0, 1  # decision classes, as the paper's idx2dec


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
        # The score enters as (score - centre) * scale: raw, one cosine among 256 hidden features, the head learnt
        # to ignore it and generated for most prompts whose image is in the gallery (models/training/README.md).
        # Set by the decision stage (centre: the training prompts' mean best cosine), fixed while training.
        self.register_buffer("score_center", torch.tensor(0.0))
        self.register_buffer("score_scale", torch.tensor(1.0))

    def forward(self, hidden: torch.Tensor, retrieval_score: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_score:
            if retrieval_score is None:
                raise ValueError("this decision head needs the best retrieval score of each prompt")
            score = (retrieval_score.reshape(-1, 1).to(hidden) - self.score_center) * self.score_scale
            hidden = torch.cat([hidden, score], -1)
        return self.linear(self.dropout(hidden))


class TextRetrieval(nn.Module):
    """The text-side retrieval projection on [IMG0]: the paper's linear `ret_text_hidden_fcs[0]` (parameters
    `weight`, `bias`, trained in the GILL stage), plus, when `mlp_hidden` > 0, a residual two-layer MLP that only
    the retrieval refinement trains (its last layer starts at zero, so it starts as the linear projection). The
    stand-in LM's [IMG0] states of names are far from linearly aligned with the image side: measured side by side
    on the same cached states, the MLP took held-out-name R@5 from 0.13 to 0.21 (models/training/README.md)."""

    def __init__(self, hidden: int, dim: int, mlp_hidden: int = 0, dropout: float = 0.2):
        super().__init__()
        lin = nn.Linear(hidden, dim)
        self.weight, self.bias = lin.weight, lin.bias
        self.mlp = None
        if mlp_hidden:
            self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(mlp_hidden, dim))
            nn.init.zeros_(self.mlp[3].weight)
            nn.init.zeros_(self.mlp[3].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.linear(hidden, self.weight, self.bias)
        return out if self.mlp is None else out + self.mlp(hidden)


class GillHeads(nn.Module):
    """Everything the GILL stage adds besides the [IMG] rows (names as export.GillHeads expects)."""

    def __init__(self, cfg: GillConfig, hidden: int, pooled: int, cond_len: int, cond_dim: int):
        super().__init__()
        self.num_visual_tokens = cfg.num_visual_tokens
        self.retrieval_dim = cfg.retrieval_dim
        self.visual_prefix = VisualPrefix(pooled, hidden, cfg.num_visual_tokens)
        self.image_retrieval = nn.Linear(pooled, cfg.retrieval_dim)  # the paper's visual_fc
        # ret_text_hidden_fcs[0] on [IMG0] (+ the refinement's residual MLP when refine_text_mlp > 0)
        self.text_retrieval = TextRetrieval(hidden, cfg.retrieval_dim, cfg.refine_text_mlp)
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

    def img_mode(self, ids: torch.Tensor, lens: list[int], concat: bool, ignore: torch.Tensor | None = None,
                 visual: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Retrieval/generation mode: text only, `BOS caption [IMG0..7]`. Returns (LM loss over the caption and
        [IMG0], hidden states [B,r,H] at the [IMG] positions, their input embeddings [B,r,H]).

        Concat: rows [BOS cap1 IMG x8 cap2 IMG x8 | pads]; both [IMG] groups are read, the second conditioned on
        the first. As in the paper's code, labels stop at the first [IMG1], so the concatenated rows supervise
        cap1 and its [IMG0] only. `ignore` (bool, like `ids`) leaves out labels that are not what the model
        should predict there (not with concat). `visual` = (mask like `ids`, pooled features [M,Dv]): pictures
        in the prompt, k visual tokens each at the masked positions, in row order (not with concat)."""
        r = len(self.img_ids)
        seq = self.lm.embed(ids)
        if visual is not None and visual[1].shape[0]:
            seq = seq.masked_scatter(visual[0][..., None], self.heads.visual_prefix(visual[1]))
        labels = _mask_from_first(ids.clone(), ids == self.tok.pad_id)
        if ignore is not None:
            labels = labels.masked_fill(ignore, IGNORE)
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

    def context_losses(self, ids: torch.Tensor, lens: list[int], cond_target: torch.Tensor,
                       ignore: torch.Tensor | None = None,
                       visual: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Context rows: 0.5 CE (the prompt and its [IMG0]) + ℓ_g. No captioning, and no contrastive term: many
        contexts end in the same few attribute combinations (false negatives), and measured with it, the shared
        retrieval heads lost two thirds of their emoji recall. `ignore`, `visual`: see img_mode."""
        ce, h, e = self.img_mode(ids, lens, False, ignore, visual)
        gen = l2_distance_loss(self.heads.mapper(h, e), cond_target)
        return {"ctx_loss": 0.5 * ce + gen, "ctx_ce": ce, "ctx_gen": gen}

    def image_question_loss(self, pooled: torch.Tensor, questions: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
        """Rows `BOS Q: question` [k visual tokens] `\nA: answer`, as the engine lays out a user turn that posts a
        picture: CE on the answer's tokens only (`answers[i]` starts with the `\nA:` tokens, which are not
        labels). Trains the visual prefix to be read inside a dialogue, not only at the start of a caption."""
        k = self.heads.num_visual_tokens
        dev = pooled.device
        head = len(self.tok.encode("\nA:"))
        width = max(len(q) + k + len(a) for q, a in zip(questions, answers))
        ids = torch.full((len(questions), width), self.tok.pad_id, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        is_vis = torch.zeros(len(questions), width, dtype=torch.bool)
        for i, (q, a) in enumerate(zip(questions, answers)):
            ids[i, : len(q)] = torch.tensor(q)
            is_vis[i, len(q) : len(q) + k] = True
            ids[i, len(q) + k : len(q) + k + len(a)] = torch.tensor(a)
            labels[i, len(q) + k + head : len(q) + k + len(a)] = torch.tensor(a[head:])
        ids, labels, is_vis = ids.to(dev), labels.to(dev), is_vis.to(dev)
        seq = self.lm.embed(ids).masked_scatter(is_vis[..., None], self.heads.visual_prefix(pooled))
        logits, _ = self.run_lm(seq)
        return lm_ce(logits, labels)

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
