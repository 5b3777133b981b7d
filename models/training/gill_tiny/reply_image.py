"""The reply-image head: whether a reply the LM wrote without an [IMG] block should end with one.

The bundle decides an image at the reply's first token ([IMG0] against the text tokens, `imgAtReplyStart`), where
its context rows train [IMG0]. A request worded in a way the 3M-parameter LM never read ("swap it for a star")
misses there, yet the LM's own reply still reads like one ("here is a small green star."). This head is a linear
probe on the frozen LM's hidden state at the reply's last token, trained on threads in the training wordings
(wordings.TRAIN; requests 1; statements, small talk, story sentences and answers about a posted picture 0). The
engine asks it only when the first token chose no image (src/engine/gill/decode.ts, `imageAfterReply`); the block
then follows the reply's text, where the GILL reference puts it.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import data as D
from .gill import GillModel
from .pipeline import GillPipeline
from .wordings import image_question, make_thread


MISREAD = 0.5  # share of non-request turns also shown with a reply that presents a picture (labelled 0)


def thread_replies(split: str, n: int, seed: int, misread: float = 0.0) -> tuple[list[str], list[float], list[str]]:
    """Every turn of `n` threads as the engine lays it out up to the end of the bot's reply (its earlier replies
    as text): (texts, labels, turn types); label 1 for a request. With probability `misread`, a turn that asks
    for no picture also comes with a reply that presents one ("hmm let me think" answered "here is a big red
    star."), labelled 0: the LM sometimes misreads small talk so, and the head must not follow it there."""
    rng = random.Random(seed)
    texts, labels, types = [], [], []
    for _ in range(n):
        d = make_thread(rng, split)
        for i, ((q, a), kind) in enumerate(zip(d.turns, d.turn_types)):
            replies = [a]
            if kind != "request" and rng.random() < misread:
                replies.append(D.here_is(D.sample_scene(rng, split, 1), rng))
            for reply in replies:
                texts.append(D.Dialogue(d.turns[:i] + [(q, reply)], d.final_scene, d.kind).text())
                labels.append(1.0 if kind == "request" else 0.0)
                types.append(kind if reply == a else f"{kind}, misread")
    return texts, labels, types


@torch.no_grad()
def last_hidden(model: GillModel, texts: list[str], max_len: int, batch: int = 128) -> torch.Tensor:
    """The LM's final hidden state at the last token of each text (BOS first; a long text keeps its end)."""
    tok, dev, out = model.tok, model.embed_weight.device, []
    for i in range(0, len(texts), batch):
        rows = [tok.encode(t, add_bos=True)[-max_len:] for t in texts[i : i + batch]]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows], device=dev)
        _, hidden = model.run_lm(model.lm.embed(ids))
        out.append(hidden[torch.arange(len(rows), device=dev), torch.tensor([len(r) - 1 for r in rows], device=dev)])
    return torch.cat(out).float().cpu()


@torch.no_grad()
def picture_answers(pipe: GillPipeline, split: str, n: int, seed: int) -> torch.Tensor:
    """Hidden states at the end of answers about a posted picture (`Q: question` [image] `\\nA: answer`)."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        scene = D.sample_scene(rng, split, rng.choice((1, 1, 2)))
        q, a = image_question(scene, None, rng)
        _, hidden = pipe.model.run_lm(pipe.embed_prompt([f"Q: {q}", D.render(scene, rng), f"\nA: {a}"]))
        out.append(hidden[0, -1].float().cpu())
    return torch.stack(out)


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> nn.Linear:
    """Logistic regression (L-BFGS), the decision boundary at logit 0."""
    head = nn.Linear(x.shape[1], 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(x).squeeze(-1), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head.requires_grad_(False)


def share_positive(head: nn.Linear, x: torch.Tensor) -> float:
    return round(float((head(x).squeeze(-1) > 0).float().mean()), 4) if len(x) else float("nan")


def stage_reply_image(ctx) -> None:
    from .gill_train import backbones, gill_model
    from .presets import gill_config

    b = backbones(ctx)
    model = gill_model(ctx, b, gill_config(ctx.preset.name, ctx.gill_overrides), trained=True).eval()
    pipe = GillPipeline(model, b.vae, b.unet, str(ctx.device))
    p, seed = ctx.preset, ctx.preset.seed + 70
    n_threads, n_pictures = (6000, 1500) if p.name == "full" else (60, 20)
    max_len = model.lm.cfg.max_positions
    texts, labels, _ = thread_replies("train", n_threads, seed, misread=MISREAD)
    x = torch.cat([last_hidden(model, texts, max_len), picture_answers(pipe, "train", n_pictures, seed + 1)])
    y = torch.cat([torch.tensor(labels), torch.zeros(n_pictures)])
    head = fit_probe(x, y)
    val_texts, _, val_types = thread_replies("val", max(20, n_threads // 6), seed + 2, misread=MISREAD)
    xv, types = last_hidden(model, val_texts, max_len), np.array(val_types)
    metrics = {f"val_{k.replace(', ', '_')}_with_image": share_positive(head, xv[torch.from_numpy(types == k)])
               for k in ("request", "statement", "chat", "story", "statement, misread", "chat, misread", "story, misread")}
    metrics["val_picture_answers_with_image"] = share_positive(head, picture_answers(pipe, "val", max(10, n_pictures // 5),
                                                                                      seed + 3))
    print(f"[reply_image] {len(y)} replies; validation: {metrics}", flush=True)
    ctx.metric("reply_image", **metrics)
    ctx.save("reply_image", {"preset": p.to_dict(), "hidden": x.shape[1], "metrics": metrics,
                             "state": {k: v.cpu() for k, v in head.state_dict().items()}})


def load_head(ckpt: dict) -> nn.Linear:
    head = nn.Linear(ckpt["hidden"], 1)
    head.load_state_dict(ckpt["state"])
    return head.eval()
