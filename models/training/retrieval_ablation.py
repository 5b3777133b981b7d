"""Side-by-side variants of the retrieval refinement on the same cached features (models/training/README.md,
"Unseen names and other art styles"). Not a training stage: nothing here is exported.

    /usr/bin/python3 models/training/retrieval_ablation.py --work models/training/runs/full \\
        --art-dir models/training/runs/art '{"name": "linear"}' '{"name": "mlp", "mlp": 512}' \\
        '{"name": "openmoji", "openmoji": 0.5}' '{"name": "keywords", "keywords": 0.3, "specific": 5}'

Needs a work folder with the backbone and gill stages done (data.pt included) and the art of
fetch_emoji_art.mjs. The first run caches [IMG0] states of every emoji text and 20,000 training scenes and the
image tower's features of every emoji in each style (`<work>/ablation_cache.pt`, ~10 minutes on 2 CPU cores).
Every variant trains only on training-split emoji (asserted); twemoji features are used for evaluation only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gill_tiny import data as D  # noqa: E402
from gill_tiny import stages  # noqa: E402
from gill_tiny.gill import contrastive_loss  # noqa: E402
from gill_tiny.gill_train import backbones, cached_img0_states, gill_model, make_pairs  # noqa: E402
from gill_tiny.presets import PRESETS, gill_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NAME, KEYWORD, KEYWORD_PHRASE = 0, 1, 2  # kinds of cached texts


@torch.no_grad()
def build_cache(work: Path, art: Path, emoji_dir: Path) -> dict:
    ctx = stages.Context(PRESETS["full"], torch.device("cpu"), work, Path("/nonexistent"), emoji_dir)
    cfg = gill_config("full")
    model = gill_model(ctx, backbones(ctx), cfg, trained=False)
    from gill_tiny.gill_train import load_gill_state
    load_gill_state(ctx.load("gill"), model, ctx.path("gill"))  # the GILL stage's heads, before any refinement
    model.eval()
    data = ctx.load("data")
    em = data["emoji"]
    es = D.load_emoji(emoji_dir)
    assert es.names == list(em["names"]), "emoji set differs from data.pt"
    keywords = D.load_emoji_keywords(es.files, ROOT / "node_modules/emojibase-data/en/data.json")
    openmoji, om_found = D.load_style_images(es.files, art / "openmoji" / "64", training=True)
    twemoji, tw_found = D.load_style_images(es.files, art / "twitter", training=False)  # evaluation only

    def states(texts: list[str]) -> torch.Tensor:
        return torch.cat([model.img_states(texts[i : i + 512])[0][:, 0] for i in range(0, len(texts), 512)])

    texts, owner, kind = [], [], []
    for i, n in enumerate(em["names"]):
        for w in D.emoji_wordings(n):
            texts.append(w), owner.append(i), kind.append(NAME)
        for k in keywords[i]:
            if k != n:
                texts += [k, f"an emoji of {k}"]
                owner += [i, i]
                kind += [KEYWORD, KEYWORD_PHRASE]
    pairs = make_pairs(model, data, "train", cfg.max_len)
    scenes = torch.nonzero(~pairs.is_emoji).flatten()
    g = torch.Generator().manual_seed(ctx.preset.seed + 25)
    keep = scenes[torch.randperm(len(scenes), generator=g)[: cfg.refine_scenes]]
    test = data["shapes"]["test"]
    return {
        "names": list(em["names"]), "splits": list(em["splits"]), "texts": texts, "owner": torch.tensor(owner),
        "kind": torch.tensor(kind), "states": states(texts),
        "pooled_google": model.pooled(em["images"].numpy()), "pooled_openmoji": model.pooled(openmoji),
        "openmoji_found": torch.from_numpy(om_found), "pooled_twemoji": model.pooled(twemoji),
        "twemoji_found": torch.from_numpy(tw_found),
        "scene_states": cached_img0_states(model, pairs, keep), "scene_pooled": pairs.pooled[keep],
        "test_keys": [s.key() for s in test["scenes"][:500]], "test_pooled": model.pooled(test["images"][:500].numpy()),
        "test_states": states([D.caption(s) for s in test["scenes"][:500]]),
        "heads": {k: v.clone() for k, v in model.heads.state_dict().items()},
    }


def recall(q: torch.Tensor, gallery: torch.Tensor, rows: torch.Tensor, k: int = 5) -> float:
    top = (F.normalize(q, dim=-1) @ F.normalize(gallery, dim=-1).t()).topk(k, -1).indices
    return round(float((top == rows[:, None]).any(-1).float().mean()), 3)


@torch.no_grad()
def evaluate(C: dict, text_proj, image_proj) -> dict:
    n = len(C["names"])
    seen = torch.tensor([s == "train" for s in C["splits"]])
    idx = torch.arange(n)
    bare = C["states"][C["kind"] == NAME].reshape(n, 3, -1)[:, 0]
    q = text_proj(bare)
    google, tw = image_proj(C["pooled_google"]), image_proj(C["pooled_twemoji"])
    twf = C["twemoji_found"]
    keys = C["test_keys"]
    correct = torch.tensor([[a == b for b in keys] for a in keys])
    top = (F.normalize(text_proj(C["test_states"]), dim=-1) @ F.normalize(image_proj(C["test_pooled"]), dim=-1).t()).topk(5, -1).indices
    return {"seen": recall(q[seen], google, idx[seen]), "heldout": recall(q[~seen], google, idx[~seen]),
            "twemoji_all": recall(q[twf], tw[twf], torch.arange(int(twf.sum()))),
            "twemoji_heldout": recall(q[~seen & twf], tw[twf], torch.cumsum(twf.long(), 0)[~seen & twf] - 1),
            "scenes": round(float(torch.gather(correct, 1, top).any(-1).float().mean()), 3)}


def run(C: dict, name: str, mlp: int = 0, keywords: float = 0.0, openmoji: float = 0.0, specific: int | None = None,
        steps: int = 600, batch: int = 1024, lr: float = 3e-3, wd: float = 0.01, emoji_frac: float = 0.5) -> dict:
    torch.manual_seed(0)
    h = C["heads"]
    hidden = C["states"].shape[1]
    lin = torch.nn.Linear(hidden, 128)
    lin.load_state_dict({"weight": h["text_retrieval.weight"], "bias": h["text_retrieval.bias"]})
    text_proj = lin if not mlp else torch.nn.Sequential(
        torch.nn.Linear(hidden, mlp), torch.nn.GELU(), torch.nn.Dropout(0.2), torch.nn.Linear(mlp, 128))
    image_proj = torch.nn.Linear(128, 128)
    image_proj.load_state_dict({"weight": h["image_retrieval.weight"], "bias": h["image_retrieval.bias"]})
    logit_scale = torch.nn.Parameter(h["logit_scale"].clone())
    seen = torch.tensor([s == "train" for s in C["splits"]])
    own, kind = C["owner"], C["kind"]
    name_rows = torch.nonzero(seen[own] & (kind == NAME)).flatten()
    kw_mask = seen[own] & (kind == KEYWORD)
    if specific is not None:  # only keywords shared by at most `specific` emoji
        count = Counter(C["texts"][i] for i in torch.nonzero(kind == KEYWORD).flatten().tolist())
        kw_mask &= torch.tensor([count.get(t, 0) <= specific for t in C["texts"]])
    kw_rows = torch.nonzero(kw_mask).flatten()
    assert bool(seen[own[name_rows]].all()) and bool(seen[own[kw_rows]].all()), "held-out emoji in training rows"
    params = [*text_proj.parameters(), *image_proj.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(1)
    n_e = round(batch * emoji_frac)
    n_kw = round(n_e * keywords) if len(kw_rows) else 0
    ss, sp = C["scene_states"], C["scene_pooled"]
    text_proj.train()
    t0 = time.time()
    for _ in range(steps):
        si = torch.randint(len(ss), (batch - n_e,), generator=g)
        sv = torch.randint(ss.shape[1], (batch - n_e,), generator=g)
        rows = torch.cat([name_rows[torch.randint(len(name_rows), (n_e - n_kw,), generator=g)],
                          kw_rows[torch.randint(max(1, len(kw_rows)), (n_kw,), generator=g)]])
        e = own[rows]
        img = C["pooled_google"][e]
        if openmoji:
            use = (torch.rand(len(e), generator=g) < openmoji) & C["openmoji_found"][e]
            img = torch.where(use[:, None], C["pooled_openmoji"][e], img)
        loss, _ = contrastive_loss(text_proj(torch.cat([ss[si, sv], C["states"][rows]])),
                                   image_proj(torch.cat([sp[si], img])), logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    text_proj.eval()
    return {"name": name, **evaluate(C, text_proj, image_proj), "seconds": round(time.time() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "models/training/runs/full")
    ap.add_argument("--art-dir", type=Path, default=ROOT / "models/training/runs/art")
    ap.add_argument("--emoji-dir", type=Path, default=ROOT / "node_modules/emoji-datasource-google")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("variants", nargs="*", help="JSON keyword arguments of run()")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = args.work / "ablation_cache.pt"
    if not cache.exists():
        torch.save(build_cache(args.work, args.art_dir, args.emoji_dir), cache)
    C = torch.load(cache)
    h = C["heads"]
    lin, img = torch.nn.Linear(C["states"].shape[1], 128), torch.nn.Linear(128, 128)
    lin.load_state_dict({"weight": h["text_retrieval.weight"], "bias": h["text_retrieval.bias"]})
    img.load_state_dict({"weight": h["image_retrieval.weight"], "bias": h["image_retrieval.bias"]})
    print(json.dumps({"name": "gill stage, no refinement", **evaluate(C, lin, img)}), flush=True)
    for spec in args.variants:
        print(json.dumps(run(C, **json.loads(spec))), flush=True)


if __name__ == "__main__":
    main()
