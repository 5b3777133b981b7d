"""Training of the GILL model (`gill.py`): the GILL stage, the retrieval refinement and the decision stage, with
their data (pairs, context rows), optimiser, validation and checkpoint I/O. Each `stage_*` takes the run's
`stages.Context` and writes `<work>/<stage>.pt`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from . import data as D
from .export import Backbones
from .gill import GEN, IMG_SUFFIX, RET, GillHeads, GillModel, build_heads, contrastive_loss, freeze, to_pixels, tokenize_captions
from .pipeline import GillPipeline
from .dialogue_turns import turn_type
from .presets import GillConfig, gill_config
from .wordings import image_question, make_thread


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
    """Dialogue / thread / story prompts (`BOS prompt[IMG0..7] pad`) with the caption of their final scene; in
    threads, some of the bot's earlier pictures sit after its reply text as k visual tokens each."""

    ids: torch.Tensor  # [N,context_max_len] (a visual token's position holds BOS as a placeholder)
    lens: torch.Tensor  # [N] (CPU)
    cond_ids: torch.Tensor  # [N,L] text-tower ids of the final scene's caption
    ignore: torch.Tensor  # [N,context_max_len] bool: labels left out (visual tokens, see dialogue_row)
    visual: torch.Tensor  # [N,context_max_len] bool: positions of visual tokens
    pooled: torch.Tensor  # [M,Dv] the pictures' pooled features, in row order
    pictures: list[list[int]]  # per row, its pictures' indices into `pooled`
    prompts: list[str]


def dialogue_row(tok, d: D.Dialogue, shown: set[int], k: int) -> tuple[list[int], list[int], list[int]]:
    """`BOS d.prompt() [IMG0..7]` as the engine lays a thread out, with the bot's picture for each turn in
    `shown` after its reply's text as `k` visual tokens (text pieces tokenised apart, as the engine does).
    -> (ids, positions whose labels are left out, positions of visual tokens).

    Left out: the visual tokens, and the first token of each earlier reply to a request. The bot answered
    those with a picture, so "not [IMG0]" is not the label there. After statements and small talk the label
    stays: no [IMG0] there is the lesson."""
    types = d.turn_types or [turn_type(d, i) for i in range(len(d.turns))]
    ids, ignore, visual = [tok.bos_id], [], []
    text = ""
    for i, ((q, a), kind) in enumerate(zip(d.turns[:-1], types)):
        text += f"Q: {q}\nA:"
        if kind == "request":
            ignore.append(len(ids) + len(tok.encode(text)))
        text += f" {a}"
        if i in shown:
            ids += tok.encode(text)
            visual += range(len(ids), len(ids) + k)
            ids += [tok.bos_id] * k
            text = ""
        text += "\n"
    ids += tok.encode(text + f"Q: {d.turns[-1][0]}\nA:" + IMG_SUFFIX)
    return ids, ignore + visual, visual


def make_context_pairs(model: GillModel, split: str, n: int, seed: int, max_len: int,
                       bot_pictures: float = 0.0) -> ContextPairs:
    """`n` seeded contexts of `split` in turn: clean dialogues (GILL's `Q: ... A:` template, as evaluated), threads
    worded as people write (wordings.TRAIN; each picture the bot drew shown in the context with probability
    `bot_pictures`) and stories, each with a caption of its final scene. A thread longer than `max_len` tokens is
    drawn again; a clean dialogue or story that long raises ValueError."""
    rng = random.Random(seed)
    k = model.heads.num_visual_tokens
    contexts, prompts, rows, ignores, visuals, scenes, pictures = [], [], [], [], [], [], []
    while len(contexts) < n:
        c = (D.make_dialogue, make_thread, D.make_story)[len(contexts) % 3](rng, split)
        shown: set[int] = set()
        if isinstance(c, D.Dialogue):
            shown = {i for i, sc in enumerate(c.turn_scenes[:-1]) if sc is not None and rng.random() < bot_pictures}
            row, ignore, visual = dialogue_row(model.tok, c, shown, k)
            prompt = c.prompt()
        else:
            prompt = c.text()
            row, ignore, visual = model.tok.encode(prompt + IMG_SUFFIX, add_bos=True), [], []
        if len(row) > max_len:
            if not isinstance(c, D.Dialogue) or c.turn_types == []:  # the clean ones always fit the full preset
                raise ValueError(f"context prompt of {len(row)} tokens exceeds context_max_len {max_len}: {prompt[:80]!r}...")
            continue  # a long thread: drawn again (truncating would cut its last turn)
        pictures.append(list(range(len(scenes), len(scenes) + len(shown))))
        scenes += [c.turn_scenes[i] for i in sorted(shown)]
        contexts.append(c)
        prompts.append(prompt)
        rows.append(row)
        ignores.append(ignore)
        visuals.append(visual)
    ignore_mask = torch.zeros(n, max_len, dtype=torch.bool)
    visual_mask = torch.zeros(n, max_len, dtype=torch.bool)
    for i in range(n):
        ignore_mask[i, ignores[i]] = True
        visual_mask[i, visuals[i]] = True
    dev = model.embed_weight.device
    ids = torch.tensor([x + [model.tok.pad_id] * (max_len - len(x)) for x in rows], dtype=torch.long)
    L = model.clip.cfg.text_max_length
    cond = torch.tensor([model.tok.encode_text_condition(D.caption(c.final_scene, rng), L) for c in contexts])
    images = np.stack([D.render(sc, rng) for sc in scenes]) if scenes else np.zeros((0, D.IMAGE_SIZE, D.IMAGE_SIZE, 3), np.uint8)
    pooled = model.pooled(images) if len(images) else torch.zeros(0, model.clip.cfg.pooled_size, device=dev)
    return ContextPairs(ids.to(dev), torch.tensor([len(x) for x in rows]), cond.to(dev), ignore_mask.to(dev),
                        visual_mask.to(dev), pooled, pictures, prompts)


def sample_context_batch(p: ContextPairs, g: torch.Generator, batch: int) -> tuple:
    """-> ids (trimmed to the longest row), lens (list), cond_ids, ignore (trimmed like ids), and the visual
    tokens' (mask, pooled features) of the batch."""
    idx = torch.randint(len(p.prompts), (batch,), generator=g)
    dev_idx = idx.to(p.ids.device)
    width = int(p.lens[idx].max())
    picked = [j for i in idx.tolist() for j in p.pictures[i]]
    visual = (p.visual[dev_idx, :width], p.pooled[torch.tensor(picked, dtype=torch.long, device=p.pooled.device)])
    return p.ids[dev_idx, :width], p.lens[idx].tolist(), p.cond_ids[dev_idx], p.ignore[dev_idx, :width], visual


@dataclass
class ImageQuestions:
    """Questions about a posted picture (wordings.image_question), tokenised, with the row of `Pairs` holding
    the picture's pooled features."""

    rows: torch.Tensor  # [N] indices into Pairs.pooled
    questions: list[list[int]]  # `BOS Q: question`
    answers: list[list[int]]  # `\nA: answer`


def make_image_questions(model: GillModel, data: dict, pairs: Pairs, split: str, n: int, seed: int) -> ImageQuestions:
    """`n` seeded questions about the scenes and emoji of `pairs` (made by make_pairs for `split`)."""
    rng = random.Random(seed)
    scenes = data["shapes"][split]["scenes"]
    names = [data["emoji"]["names"][i] for i, s in enumerate(data["emoji"]["splits"]) if s == split]
    rows, questions, answers = [], [], []
    for _ in range(n):
        r = rng.randrange(len(pairs.captions))
        is_scene = r < len(scenes)
        q, a = image_question(scenes[r] if is_scene else None, None if is_scene else names[r - len(scenes)], rng)
        rows.append(r)
        questions.append(model.tok.encode(f"Q: {q}".rstrip(), add_bos=True))
        answers.append(model.tok.encode(f"\nA: {a}"))
    return ImageQuestions(torch.tensor(rows), questions, answers)


def sample_image_questions(q: ImageQuestions, pooled: torch.Tensor, g: torch.Generator, batch: int):
    """-> pooled features, questions, answers of `batch` random rows."""
    idx = torch.randint(len(q.questions), (batch,), generator=g).tolist()
    return pooled[q.rows[idx].to(pooled.device)], [q.questions[i] for i in idx], [q.answers[i] for i in idx]


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

REFINE_ONLY = "text_retrieval.mlp."  # trained by the retrieval refinement only, never in the GILL stage

def _lr_lambda(cfg: GillConfig) -> Callable[[int], float]:
    """Linear warmup, then x0.1 once (the paper: 2k warmup, decay at 12k of 20k steps)."""
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    step_size = max(1, int((cfg.decay_frac - cfg.warmup_frac) * cfg.steps))
    return lambda s: (s + 1) / warm if s < warm else 0.1 ** ((s - warm) // step_size)


def make_optimizer(model: GillModel, cfg: GillConfig) -> torch.optim.Optimizer:
    """AdamW as main.py (lr 1e-3, betas 0.9/0.95, wd 0.01, eps 1e-8) with fp32 master weights. The embedding
    matrix gets no weight decay: decoupled decay would shrink the frozen rows, which the paper's bf16 run never
    did (its 1 - lr*wd rounded to 1); the [IMG] rows are renormalised after every step anyway."""
    heads = [p for n, p in model.heads.named_parameters() if not n.startswith(("decision.", REFINE_ONLY))]
    return torch.optim.AdamW(
        [{"params": heads}, {"params": [model.embed_weight], "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps,
    )


@torch.no_grad()
def validate(model: GillModel, batch: tuple[torch.Tensor, ...],
             context: tuple[torch.Tensor, ...] | None = None, questions: tuple | None = None) -> dict[str, float]:
    """Held-out batch: every loss term, text->image top-1 and teacher-forced caption token accuracy (and the
    context rows' and image questions' losses when given)."""
    pooled, ids, lens, cond_ids = batch
    out = model.step_losses(pooled, ids, lens, model.clip.encode_text_states(cond_ids), (False, False, False))
    if questions is not None:
        out["image_qa"] = model.image_question_loss(*questions)
    if context is not None:
        c_ids, c_lens, c_cond, c_ignore, c_visual = context
        out.update(model.context_losses(c_ids, c_lens, model.clip.encode_text_states(c_cond), c_ignore, c_visual))
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
    if cfg.init and not partial.exists():
        load_gill_state(_load_checked(Path(cfg.init), ctx.preset), model, Path(cfg.init))
        print(f"[gill] warm start from {cfg.init}", flush=True)
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
        ctx_train = make_context_pairs(model, "train", cfg.context_pairs, ctx.preset.seed + 40, cfg.context_max_len,
                                       cfg.context_bot_pictures)
        ctx_val = sample_context_batch(
            make_context_pairs(model, "val", 256, ctx.preset.seed + 41, cfg.context_max_len, cfg.context_bot_pictures),
            torch.Generator().manual_seed(8), 256)
    questions = questions_val = None
    if cfg.image_question_rows:
        questions = make_image_questions(model, data, train, "train", 20000, ctx.preset.seed + 42)
        questions_val = sample_image_questions(make_image_questions(model, data, val, "val", 256, ctx.preset.seed + 43),
                                               val.pooled, torch.Generator().manual_seed(9), 256)
    params = [p for grp in opt.param_groups for p in grp["params"]]
    model.train()
    t0, last_save = time.time(), time.time()
    log_every = max(1, cfg.steps // 50)
    if start == 0 and cfg.steps > 0:
        model.eval()
        ctx.metric("gill", step=0, elapsed_s=0.0, **validate(model, val_batch, ctx_val, questions_val))
        model.train()
    for step in range(start, cfg.steps):
        g = torch.Generator().manual_seed(ctx.preset.seed * 1_000_003 + step)
        pooled, ids, lens, cond_ids = sample_batch(train, g, cfg.batch_size, cfg.emoji_frac)
        draws = (torch.rand(3, generator=g) < cfg.concat_prob).tolist()
        target = model.clip.encode_text_states(cond_ids)  # frozen tower, no grad (its params are frozen)
        out = model.step_losses(pooled, ids, lens, target, draws)
        if ctx_train is not None:
            c_ids, c_lens, c_cond, c_ignore, c_visual = sample_context_batch(ctx_train, g, cfg.context_rows)
            out.update(model.context_losses(c_ids, c_lens, model.clip.encode_text_states(c_cond), c_ignore, c_visual))
            out["loss"] = out["loss"] + out["ctx_loss"]
        if questions is not None:
            out["image_qa"] = model.image_question_loss(
                *sample_image_questions(questions, train.pooled, g, cfg.image_question_rows))
            out["loss"] = out["loss"] + out["image_qa"]
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
            ctx.metric("gill", step=step + 1, elapsed_s=round(time.time() - t0, 1), **validate(model, val_batch, ctx_val, questions_val))
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
            "heads": {k: v.detach().cpu() for k, v in model.heads.state_dict().items()
                      if not k.startswith(("decision.", REFINE_ONLY))},
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
    missing = [k for k in missing if not k.startswith(("decision.", REFINE_ONLY))]
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


def assert_no_heldout_emoji(data: dict, pairs: Pairs) -> None:
    """No held-out emoji (val/test split by name) may reach a training batch: neither its name in any wording nor
    its image."""
    em = data["emoji"]
    held = [i for i, s in enumerate(em["splits"]) if s != "train"]
    texts = {c for caps in pairs.captions for c in caps}
    leaked = [em["names"][i] for i in held if set(D.emoji_wordings(em["names"][i])) & texts]
    assert not leaked, f"held-out emoji names in the training pairs: {leaked[:5]}"
    emoji_images = pairs.pooled[pairs.is_emoji.to(pairs.pooled.device)]
    assert len(emoji_images) == len(em["names"]) - len(held), "training pairs hold emoji of another split"


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
        assert_no_heldout_emoji(data, pairs)
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
        heads.text_retrieval.train()  # the residual MLP's dropout
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
    heads.eval()
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


def retrieve_floor(rows: list[dict], quantile: float) -> float | None:
    """The manifest's `minRetrieveSimilarity`: the `quantile` of the best gallery cosines of the prompts whose
    retrieved image was clearly the better one (confident "retrieve" labels), rounded down to 0.01. Below it a
    gallery match is weaker than (1 - quantile) of the matches that were worth retrieving, so the engine
    generates instead when the head chose "retrieve" on its own (models/README.md, docs/gill-method.md)."""
    good = sorted(r["score"] for r in rows if r["confident"] and r["closer"] == RET)
    if not good:
        return None
    return float(np.floor(100 * float(np.quantile(good, quantile))) / 100)


def stage_decision(ctx) -> None:
    """Label prompts honestly, then train the decision head as the notebook: full-batch AdamW (lr 1e-3, wd 0,
    seed 1337), first 2/3 train, last 1/3 test, CE; macro-F1 at argmax. Ties (`decision_tie_margin`) are left out
    of the `test` metrics; `test_all` counts them with the `decision_ties` label (and trains on them when that is
    "retrieve"); `test_all_closer` counts them with whichever image was closer. Writes `<work>/decision.pt`."""
    cfg = gill_config(ctx.preset.name, ctx.gill_overrides)
    b = backbones(ctx)
    model = gill_model(ctx, b, cfg, trained=True).eval()  # labels come from the inference path (no dropout)
    pipe = GillPipeline(model, b.vae, b.unet, str(ctx.device))
    prompts, gallery, _ = decision_prompts(ctx.load("data"), cfg, ctx.preset.seed + 30)
    head = model.heads.decision
    result: dict = {"rows": [], "metrics": {}}
    if prompts:
        # Labelling (retrieve + generate every prompt) is the slow part: its result is kept in
        # <work>/decision_labels.pt and reused while the gill and retrieval checkpoints are unchanged.
        labels_path = ctx.work / "decision_labels.pt"
        stamp = {n: ctx.path(n).stat().st_mtime for n in ("gill", "retrieval") if ctx.done(n)}
        cached = torch.load(labels_path, weights_only=False) if labels_path.exists() else None
        if cached and cached["stamp"] == stamp and [r["text"] for r in cached["rows"]] == [p["text"] for p in prompts]:
            feats, scores, rows = cached["feats"].to(ctx.device), cached["scores"].to(ctx.device), [dict(r) for r in cached["rows"]]
            print(f"[decision] labels reused from {labels_path}", flush=True)
        else:
            feats, scores, rows = label_decisions(pipe, prompts, gallery, cfg, ctx.preset.seed + 31)
            torch.save({"stamp": stamp, "feats": feats.cpu(), "scores": scores.cpu(), "rows": [dict(r) for r in rows]},
                       labels_path)
        if cfg.decision_ties not in ("retrieve", "drop"):
            raise ValueError(f"decision_ties must be 'retrieve' or 'drop', not {cfg.decision_ties!r}")
        for r in rows:
            r["confident"] = abs(r["sim_ret"] - r["sim_gen"]) >= cfg.decision_tie_margin
            # `label` is the product's target; `closer` whichever image the CLIP tower found closer
            r["closer"] = r["label"]
            if not r["confident"] and cfg.decision_ties == "retrieve":
                r["label"] = RET
        labels = torch.tensor([r["label"] for r in rows], device=feats.device)
        n_train = (2 * len(rows)) // 3
        train = torch.tensor([i for i in range(n_train) if rows[i]["confident"] or cfg.decision_ties == "retrieve"],
                             device=feats.device)
        with torch.no_grad():
            head.score_center.fill_(float(scores[train].mean()))
            head.score_scale.fill_(cfg.decision_score_scale)
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
            # ties scored against whichever image was closer (the definition used before ties were labelled)
            "test_all_closer": f1_scores([r["pred"] for r in rows[n_train:]], [r["closer"] for r in rows[n_train:]]),
            "tie_margin": cfg.decision_tie_margin, "ties_policy": cfg.decision_ties,
            "labels_ret_share": round(sum(r["label"] for r in rows if r["confident"])
                                      / max(1, sum(r["confident"] for r in rows)), 4),
            "majority_test_accuracy": round(max(sum(gold), len(gold) - sum(gold)) / max(1, len(gold)), 4),
            "min_retrieve_similarity": retrieve_floor(rows[:n_train], cfg.decision_floor_quantile)}}
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
