"""Evaluation of the trained tiny bundle, written to `<bundle>/EVAL.md` (and `<work>/eval.json`).

Generated images are scored by a probe classifier trained only on rendered images (never on model outputs)
that predicts colour, shape, size and position of a single object. Sections: captioning attribute accuracy,
text->image retrieval R@1/5/10 (emoji gallery, held-out scenes), generation accuracy, the paper's
context-dependence comparison (GILL vs the diffusion model fed only the last message), the decision head, and
accuracy over training time from the training logs.

Runs as the last training stage, or alone (from models/training):
    /usr/bin/python3 -m gill_tiny.evaluate --work models/training/runs/full --preset full --out models/gill-tiny
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import data as D
from .gill import to_pixels
from .gill_train import backbones, gill_model
from .pipeline import GillPipeline
from .presets import gill_config

ATTRS = {"colour": list(D.COLOURS), "shape": list(D.SHAPES), "size": list(D.SIZES), "position": list(D.POSITIONS)}


@dataclass
class EvalConfig:
    samples: int = 200  # prompts per generation / captioning / context setting
    steps: int = 25  # DDIM steps (the manifest default)
    guidance: float = 5.0
    probe_images: int = 12000
    probe_steps: int = 1500
    retrieval_scenes: int = 500


EVAL_CONFIGS = {"full": EvalConfig(), "smoke": EvalConfig(samples=6, steps=3, probe_images=256, probe_steps=20,
                                                          retrieval_scenes=32)}


# probe classifier ------------------------------------------------------------------------------------------

class Probe(nn.Module):
    """Small CNN with one linear head per attribute, trained on rendered single-object images only."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU())
        self.heads = nn.ModuleDict({a: nn.Linear(256, len(v)) for a, v in ATTRS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {a: h(f) for a, h in self.heads.items()}


def _labels(scenes: list[D.Scene]) -> dict[str, torch.Tensor]:
    return {a: torch.tensor([v.index(getattr(s.objects[0], a)) for s in scenes]) for a, v in ATTRS.items()}


def train_probe(cfg: EvalConfig, device: torch.device, seed: int) -> tuple[Probe, dict[str, float]]:
    """Trained on train-split renders (with jitter); accuracy reported on test-split renders."""
    rng = random.Random(seed)
    scenes = [D.sample_scene(rng, "train", 1) for _ in range(cfg.probe_images)]
    x = to_pixels(np.stack([D.render(s, rng) for s in scenes])).to(device)
    y = {a: t.to(device) for a, t in _labels(scenes).items()}
    torch.manual_seed(seed)
    probe = Probe().to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(cfg.probe_steps):
        i = torch.randint(len(scenes), (min(128, len(scenes)),), generator=g).to(device)
        out = probe(x[i])
        loss = sum(F.cross_entropy(out[a], y[a][i]) for a in ATTRS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.eval()
    test = [D.sample_scene(rng, "test", 1) for _ in range(500)]
    return probe, probe_accuracy(probe, to_pixels(np.stack([D.render(s, rng) for s in test])).to(device), test)


@torch.no_grad()
def probe_accuracy(probe: Probe, images: torch.Tensor, scenes: list[D.Scene]) -> dict[str, float]:
    """Per-attribute accuracy of the probe on `images` [N,3,64,64] against single-object `scenes`, and the mean."""
    out = probe(images.float())
    y = _labels(scenes)
    acc = {a: float((out[a].argmax(-1).cpu() == y[a]).float().mean()) for a in ATTRS}
    acc["mean"] = sum(acc.values()) / len(ATTRS)
    return {k: round(v, 4) for k, v in acc.items()}


# helpers -------------------------------------------------------------------------------------------------

def parse_attributes(text: str) -> dict[str, str | None]:
    """The first colour, shape, size and position named in a caption of a single object."""
    words = re.findall(r"[a-z]+", text.lower())
    size_words = {w: s for s, ws in D.SIZE_WORDS.items() for w in ws}
    res: dict[str, str | None] = {
        "colour": next((w for w in words if w in D.COLOURS), None),
        "shape": next((w for w in words if w in D.SHAPES), None),
        "size": next((size_words[w] for w in words if w in size_words), None),
    }
    pos = None
    for p, phrases in D.POSITION_PHRASES.items():
        if any(ph in text.lower() for ph in phrases):
            pos = p
            break
    res["position"] = pos
    return res


def recall_at(scores: torch.Tensor, correct: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """scores [Q,N], correct bool [Q,N] -> R@k: share of queries with a correct item in the top k."""
    order = scores.argsort(-1, descending=True)
    hit = torch.gather(correct, 1, order)
    return {f"R@{k}": round(float(hit[:, :k].any(-1).float().mean()), 4) for k in ks}


def _batches(n: int, size: int = 64):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


@torch.no_grad()
def gill_images(pipe: GillPipeline, prompts: list[str], cfg: EvalConfig, seed: int) -> torch.Tensor:
    """The paper's eval protocol: [IMG0..7] right after the prompt (num_words=2, gen_scale_factor=1e5), the
    mapper's output to the diffusion model; the same noise per prompt index for every system."""
    out = []
    for s in _batches(len(prompts)):
        h, e = pipe.model.img_states(prompts[s])
        out.append(pipe.generate_images(pipe.mapper_cond(h, e), pipe.noise(s.stop - s.start, seed + s.start),
                                        cfg.steps, cfg.guidance))
    return torch.cat(out)


@torch.no_grad()
def sd_images(pipe: GillPipeline, prompts: list[str], cfg: EvalConfig, seed: int) -> torch.Tensor:
    """The diffusion model alone: the text tower on the prompt (truncated to its length), as SD is prompted."""
    out = []
    for s in _batches(len(prompts)):
        out.append(pipe.generate_images(pipe.model.cond_states(prompts[s]), pipe.noise(s.stop - s.start, seed + s.start),
                                        cfg.steps, cfg.guidance))
    return torch.cat(out)


# sections ------------------------------------------------------------------------------------------------

@torch.no_grad()
def eval_captioning(pipe: GillPipeline, cfg: EvalConfig, rng: random.Random) -> dict:
    """Test-split single-object renders, prompt [image, "a"], greedy 12 words; attributes parsed from the text."""
    scenes = [D.sample_scene(rng, "test", 1) for _ in range(cfg.samples)]
    hits = {a: 0 for a in ATTRS}
    examples = []
    for s in scenes:
        img = D.render(s, rng)
        res = pipe.decode(pipe.embed_prompt([img, "a"]), num_words=12)
        text = "a" + res.text
        got = parse_attributes(text)
        for a in ATTRS:
            hits[a] += got[a] == getattr(s.objects[0], a)
        if len(examples) < 5:
            examples.append({"truth": D.caption(s), "caption": text})
    acc = {a: round(h / len(scenes), 4) for a, h in hits.items()}
    acc["mean"] = round(sum(acc.values()) / len(ATTRS), 4)
    return {"n": len(scenes), "accuracy": acc, "examples": examples}


def eval_image_questions(pipe: GillPipeline, cfg: EvalConfig, rng: random.Random) -> dict:
    """A picture posted in a thread with a question: test-split single-object renders in the engine's layout,
    `Q: question` [image] `\nA:`, greedy; the answer should name the colour (colour questions) or the shape
    (shape questions and "what is this?"), worded as the held-out threads word things."""
    asks = {"colour": ("What colour is this one?", "which color is it"), "shape": ("what is this?", "What shape did I draw")}
    hits = {a: 0 for a in asks}
    examples = []
    n = max(1, cfg.samples // 2)
    for _ in range(n):
        s = D.sample_scene(rng, "test", 1)
        img = D.render(s, rng)
        for attr, questions in asks.items():
            q = rng.choice(questions)
            text = pipe.decode(pipe.embed_prompt([f"Q: {q}", img, "\nA:"]), num_words=12).text
            hits[attr] += parse_attributes(text)[attr] == getattr(s.objects[0], attr)
            if len(examples) < 6:
                examples.append({"truth": D.caption(s), "question": q, "answer": text.strip()})
    return {"n": n, "accuracy": {a: round(h / n, 4) for a, h in hits.items()}, "examples": examples}


@torch.no_grad()
def eval_retrieval(pipe: GillPipeline, data: dict, cfg: EvalConfig, emoji_dir: Path | None = None,
                   art_dir: Path | None = None, emoji_limit: int | None = None) -> dict:
    """Text->image R@1/5/10. Emoji: every emoji is in the gallery, queries are names (split into names the GILL
    stage trained on and held-out names). Scenes: held-out test renders, queries their canonical captions; any
    image of the same scene content counts as correct."""
    res = {}
    em = data["emoji"]
    gal = pipe.gallery_embeddings(em["images"].numpy())
    names = list(em["names"])
    q = torch.cat([pipe.retrieval_embedding(pipe.model.img_states(names[s])[0][:, 0]) for s in _batches(len(names))])
    scores = q @ gal.t()
    correct = torch.eye(len(names), dtype=torch.bool, device=scores.device)
    for split in ("train", "heldout"):
        keep = torch.tensor([(sp == "train") == (split == "train") for sp in em["splits"]], device=scores.device)
        if keep.any():
            res[f"emoji_{split}"] = {"queries": int(keep.sum()), "gallery": len(names),
                                     **recall_at(scores[keep], correct[keep])}
    twitter = Path(art_dir) / "twitter" if art_dir else None
    if twitter is not None and emoji_dir is not None and (twitter / "emoji.json").exists():
        # A style the stand-in CLIP and the retrieval heads never saw (D.HELD_OUT_STYLES): the same emoji names as
        # queries, every twemoji image as the gallery. Evaluation only.
        es = D.load_emoji(emoji_dir, emoji_limit)
        files = es.files if es.names == names else []
        if files:
            tw, found = D.load_style_images(files, twitter, training=False)
            keep = torch.from_numpy(found).to(scores.device)
            tw_scores = (q @ pipe.gallery_embeddings(tw[found]).t())
            tw_correct = correct[:, keep]
            res["twemoji_all"] = {"queries": int(keep.sum()), "gallery": int(keep.sum()),
                                  **recall_at(tw_scores[keep], tw_correct[keep])}
            held = keep & torch.tensor([sp != "train" for sp in em["splits"]], device=scores.device)
            res["twemoji_heldout"] = {"queries": int(held.sum()), "gallery": int(keep.sum()),
                                      **recall_at(tw_scores[held], tw_correct[held])}
    test = data["shapes"]["test"]
    n = min(cfg.retrieval_scenes, len(test["scenes"]))
    keys = [s.key() for s in test["scenes"][:n]]
    gal = pipe.gallery_embeddings(test["images"][:n].numpy())
    caps = [D.caption(s) for s in test["scenes"][:n]]
    q = torch.cat([pipe.retrieval_embedding(pipe.model.img_states(caps[s])[0][:, 0]) for s in _batches(n)])
    correct = torch.tensor([[a == b for b in keys] for a in keys], device=q.device)
    res["scenes_heldout"] = {"queries": n, "gallery": n, **recall_at(q @ gal.t(), correct)}
    return res


@torch.no_grad()
def eval_generation(pipe: GillPipeline, probe: Probe, cfg: EvalConfig, rng: random.Random, seed: int) -> dict:
    """Single-object test-split captions: GILL ([IMG] after the caption) vs the diffusion model on the caption."""
    scenes = [D.sample_scene(rng, "test", 1) for _ in range(cfg.samples)]
    caps = [D.caption(s) for s in scenes]
    return {"n": len(scenes), "gill": probe_accuracy(probe, gill_images(pipe, caps, cfg, seed), scenes),
            "diffusion_only": probe_accuracy(probe, sd_images(pipe, caps, cfg, seed), scenes)}


@torch.no_grad()
def eval_context(pipe: GillPipeline, probe: Probe, cfg: EvalConfig, rng: random.Random, seed: int) -> dict:
    """The paper's context-dependence comparison on dialogues (VisDial's role) and stories (VIST's role): each
    system fed the last message only (1 turn) or the full context, scored on the final scene's attributes."""
    res = {}
    dialogues = [D.make_dialogue(rng, "test") for _ in range(cfg.samples)]
    stories = [D.make_story(rng, "test") for _ in range(cfg.samples)]
    settings = {
        "dialogue": ([d.last_message for d in dialogues], [d.prompt() for d in dialogues], [d.final_scene for d in dialogues]),
        "story": ([s.sentences[-1] for s in stories], [s.text() for s in stories], [s.final_scene for s in stories]),
    }
    for name, (last, full, scenes) in settings.items():
        res[name] = {
            "n": len(scenes),
            "gill_full_context": probe_accuracy(probe, gill_images(pipe, full, cfg, seed), scenes),
            "gill_last_message": probe_accuracy(probe, gill_images(pipe, last, cfg, seed), scenes),
            "diffusion_last_message": probe_accuracy(probe, sd_images(pipe, last, cfg, seed), scenes),
            "diffusion_full_context": probe_accuracy(probe, sd_images(pipe, full, cfg, seed), scenes),
        }
        r = res[name]
        r["gill_minus_last_message_baseline"] = round(r["gill_full_context"]["mean"] - r["diffusion_last_message"]["mean"], 4)
    return res


def training_curves(work: Path) -> dict[str, list[dict]]:
    """Validation rows of every stage from `<work>/metrics.jsonl` (at most 8 per stage, evenly spaced)."""
    path = work / "metrics.jsonl"
    if not path.exists():
        return {}
    rows: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if any(k.startswith(("val_", "gen_")) for k in rec):
            rows.setdefault(rec["stage"], []).append(rec)
    out = {}
    for stage, rs in rows.items():
        idx = sorted({round(i * (len(rs) - 1) / 7) for i in range(8)}) if len(rs) > 8 else range(len(rs))
        out[stage] = [{k: v for k, v in rs[i].items() if k not in ("stage", "time")} for i in idx]
    return out


# report --------------------------------------------------------------------------------------------------

def _acc_row(name: str, acc: dict) -> str:
    return f"| {name} | " + " | ".join(f"{100 * acc[a]:.1f}" for a in (*ATTRS, "mean")) + " |"


def render_report(r: dict) -> str:
    head = "| system | colour | shape | size | position | mean |\n|---|---|---|---|---|---|"
    L = [f"# gill-tiny evaluation ({r['preset']} preset)", "",
         f"Generated by `models/training/gill_tiny/evaluate.py` on {r['date']} (torch {r['torch']}, {r['device']}). "
         "Attribute accuracies are in %. Images are scored by a probe classifier trained only on rendered images "
         f"(its accuracy on held-out renders: colour {100 * r['probe']['colour']:.1f}, shape {100 * r['probe']['shape']:.1f}, "
         f"size {100 * r['probe']['size']:.1f}, position {100 * r['probe']['position']:.1f}). "
         f"Diffusion: DDIM {r['config']['steps']} steps, guidance {r['config']['guidance']}, the same initial noise per "
         "prompt for every system. GILL images follow the paper's evaluation protocol: the [IMG] block right after the "
         "prompt (num_words 2, gen_scale_factor 1e5), the GILLMapper's output to the diffusion model.", ""]
    g = r["gill_config"]
    L += [f"GILL stage: {g['steps']} steps of {g['batch_size']} caption pairs ({100 * g['emoji_frac']:.0f}% emoji), each "
          f"loss's batch concatenated with probability {g['concat_prob']} as in the paper"
          + (f", plus {g['context_rows']} context rows a step (a training-split dialogue, thread or story with its final "
             "scene's caption, for the [IMG] and mapper losses: an addition to the paper's caption-only stage)" if g["context_rows"] else "")
          + (f" and {g['image_question_rows']} questions about a posted picture" if g.get("image_question_rows") else "")
          + (f", warm-started from `{g['init']}`" if g.get("init") else "")
          + (f"; then {g['refine_steps']} steps refining the retrieval projections on cached [IMG0] states in batches of "
             f"{g['refine_batch']}" if g["refine_steps"] else "") + ".", ""]
    c = r["captioning"]
    L += ["## Captioning (visual prefix)", "",
          f"{c['n']} held-out single-object renders, prompt `[image] a`, greedy; attributes parsed from the caption.", "",
          head, _acc_row("GILL caption", c["accuracy"]), ""]
    L += ["| ground truth | caption |", "|---|---|"] + [f"| {e['truth']} | {e['caption']} |" for e in c["examples"]] + [""]
    q = r.get("image_questions")
    if q:
        L += ["## Questions about a posted picture", "",
              f"{q['n']} held-out single-object renders posted with a question, in the engine's layout "
              "(`Q: question` [image] `\\nA:`), greedy: the share of answers naming the asked attribute "
              "(\"what is this?\" asks for the shape).", "",
              "| colour questions | shape questions |", "|---|---|",
              f"| {100 * q['accuracy']['colour']:.1f} | {100 * q['accuracy']['shape']:.1f} |", "",
              "| picture | question | answer |", "|---|---|---|"]
        L += [f"| {e['truth']} | {e['question']} | {e['answer']} |" for e in q["examples"]] + [""]
    L += ["## Text→image retrieval", "", "| queries | gallery | n | R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|"]
    labels = {"emoji_train": "emoji names seen in the GILL stage", "emoji_heldout": "held-out emoji names",
              "scenes_heldout": "held-out scene captions",
              "twemoji_all": "twemoji art (never trained on), every emoji name",
              "twemoji_heldout": "twemoji art (never trained on), held-out emoji names"}
    galleries = {"emoji": "all emoji", "twemoji": "all twemoji", "scenes": "held-out scenes"}
    for k, v in r["retrieval"].items():
        gal = galleries[k.split("_")[0]]
        L.append(f"| {labels[k]} | {gal} ({v['gallery']}) | {v['queries']} | {v['R@1']:.3f} | {v['R@5']:.3f} | {v['R@10']:.3f} |")
    g = r["generation"]
    L += ["", "## Generation", "", f"{g['n']} held-out single-object captions.", "", head,
          _acc_row("GILL (mapper → diffusion)", g["gill"]), _acc_row("diffusion model on the caption", g["diffusion_only"]), ""]
    L += ["## Context dependence (the paper's VisDial / VIST comparison)", "",
          "Final scene's attributes after a multi-turn dialogue (favourite colour, \"now make it blue\", \"the same "
          "shape but bigger\", ...) or a story whose last sentence changes one attribute. \"last message\" feeds only "
          "the final user message / sentence; \"full context\" the whole dialogue (GILL's `Q: … A:` template) or story.", ""]
    for name, v in r["context"].items():
        L += [f"### {'stories' if name == 'story' else name + 's'} ({v['n']})", "", head,
              _acc_row("GILL, full context", v["gill_full_context"]), _acc_row("GILL, last message", v["gill_last_message"]),
              _acc_row("diffusion, last message", v["diffusion_last_message"]),
              _acc_row("diffusion, full context (truncated to its text length)", v["diffusion_full_context"]), "",
              f"GILL with context minus the last-message diffusion baseline: **{100 * v['gill_minus_last_message_baseline']:+.1f}** "
              "points of mean attribute accuracy.", ""]
    d = r["decision"]
    if d:
        t, ta = d["test"], d["test_all"]
        feature = ("the [IMG0] hidden state and the best gallery cosine (the paper's first decision model)"
                    if d.get("uses_score") else "the [IMG0] hidden state")
        L += ["## Decision head", "",
              f"Input: {feature}. Labels made by retrieving (gallery: every emoji + held-out scenes) and generating for "
              f"each of {d['n_prompts']} prompts and keeping whichever image the stand-in CLIP image tower finds closer to "
              f"the ground truth. {d['ties']} prompts are ties (the two images within {d['tie_margin']} cosine: either "
              "serves) and are left out of the headline figure, as the paper's PartiPromptsDecisionsConfident keeps "
              "only confident labels. "
              + ("Ties are labelled \"retrieve\" for training and in the with-ties figures: either image serves, and "
                 "the community's own image costs no GPU time (a product choice). "
                 if d.get("ties_policy") == "retrieve" else "Ties are left out of training. ") +
              f"{100 * d['labels_ret_share']:.0f}% of the other labels are \"retrieve\". Test split ({d['n_test']} prompts): "
              f"accuracy {100 * t['accuracy']:.1f}%, macro-F1 **{t['macro_f1']:.3f}** (F1 gen {t['f1_gen']:.3f}, "
              f"ret {t['f1_ret']:.3f}); majority-class accuracy {100 * d['majority_test_accuracy']:.1f}%. With the ties "
              f"counted ({d['n_test_all']} prompts): accuracy {100 * ta['accuracy']:.1f}%, macro-F1 **{ta['macro_f1']:.3f}**"
              + (f" (ties scored against whichever image was closer, however slightly: macro-F1 "
                 f"{d['test_all_closer']['macro_f1']:.3f})" if "test_all_closer" in d else "") + ". "
              + (f"The manifest's `minRetrieveSimilarity` is {d['min_retrieve_similarity']}: the "
                 f"{100 * r['gill_config'].get('decision_floor_quantile', 0.05):.0f}th percentile of the best gallery cosine over the training prompts whose retrieved image was clearly better." 
                 if d.get("min_retrieve_similarity") is not None else ""), "",
              "| prompt kind | n | ties | labelled retrieve (no ties) | predicted retrieve | mean best cosine |",
              "|---|---|---|---|---|---|"]
        for kind, k in d["by_kind"].items():
            L.append(f"| {kind} | {k['n']} | {k['ties']} | {100 * k['label_ret']:.0f}% | {100 * k['pred_ret']:.0f}% | "
                     f"{k['score']:.3f} |")
        L.append("")
    L += ["## Targets", "", "| target | reached | value |", "|---|---|---|"]
    for t in r["targets"]:
        L.append(f"| {t['name']} | {'yes' if t['ok'] else 'no'} | {t['value']} |")
    L += ["", "## Accuracy over training time", "", "Validation rows of each stage from the training log (`metrics.jsonl`).", ""]
    for stage, rows in r["curves"].items():
        keys = [k for k in rows[-1] if k not in ("step", "elapsed_s")][:7]
        L += [f"### {stage}", "", "| step | seconds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for row in rows:
            L.append(f"| {row.get('step', '')} | {row.get('elapsed_s', '')} | " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
        L.append("")
    L += ["## Limits", "", *[f"- {x}" for x in r["limits"]], ""]
    return "\n".join(L)


THREAD_REPLAY_RESULTS = Path("eval") / "thread-replay.json"


def with_thread_replay(report: str, bundle: Path, r: dict) -> str:
    """`report` with a "Thread replay" section (issue #12 §1) before "Accuracy over training time", rendered from
    `<bundle>/eval/thread-replay.json` (`npm run eval:threads -- --results …`) when that file exists."""
    path = Path(bundle) / THREAD_REPLAY_RESULTS
    if not path.exists():
        return report
    t = json.loads(path.read_text())
    clean = 100 * r["context"]["dialogue"]["gill_full_context"]["mean"]
    b = t["bundle"]
    settings = (f"retScaleFactor {b['retScaleFactor']}" + (", [IMG0] weighed only as the reply's first token"
                if b["imgAtReplyStart"] else "") + (", its logit scaled keeping its sign" if b.get("imgScaleAbs") is False else "")
                + (", its [IMG] block read after the reply's text" if b.get("imgAfterText") else "")
                + (", a lowercasing LM tokenizer" if b["lmNormalizer"] else "")
                + (", typos and everyday synonyms read through its lexicon" if b.get("lexicon") else "")
                + (", a reply-image head after a reply that got no image at its first token" if b.get("replyImage") else "")
                + (", its own earlier answers read as text" if b.get("ownImagesInContext") is False else "")
                + (f", minRetrieveSimilarity {b['minRetrieveSimilarity']}" if b["minRetrieveSimilarity"] is not None else ""))
    L = ["## Thread replay", "",
         f"{t['conversations']} held-out conversations (`{t['set']}`, written by `gill_tiny/threads.py` in wordings "
         "no training path uses (`wordings.EVAL`), ending in test-split scenes: favourite colour, recolour, resize, "
         "reshape, move, stories; US and UK spelling, casing, typos, chit-chat, the bot mentioned or not) replayed by "
         "`npm run eval:threads` through the loopback Discord, the loopback Slack and the playground, the bot's replies "
         "staying in the thread; the last image scored by its pixels. Bundle settings: "
         f"{settings}. Run on {t['date']}, {t['wallSeconds']} s; contexts identical on all platforms for "
         f"{t['contextsIdenticalOnAllPlatforms']} of {t['conversations']} conversations.", "",
         "| platform | colour | shape | size | position | mean | clean dialogues | gap | within 5 points |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name, p in t["platforms"].items():
        a = p["accuracy"]
        L.append(f"| {name} | " + " | ".join(f"{a[k]:.1f}" for k in (*ATTRS, "mean"))
                 + f" | {clean:.1f} | {a['mean'] - clean:+.1f} | {'yes' if a['mean'] >= clean - 5 else 'no'} |")
    L += ["", "Statements are the turns that ask for no image: favourite-colour statements, chit-chat and story sentences "
          "before the last turn. The reply rubric counts the stated attributes a reply names.", "",
          "| platform | statements with an image (target 0%) | requests with an image (target ≥ 95%) | "
          "reply rubric, all turns | reply rubric, statements (no target) |", "|---|---|---|---|---|"]
    for name, p in t["platforms"].items():
        L.append(f"| {name} | {p['statementsWithImagePct']:.1f}% ({p['statementsWithImage']} of {p['statements']}) | "
                 f"{p['requestsWithImagePct']:.1f}% ({p['requestsWithImage']} of {p['requests']}) | "
                 f"{p['replyRubric']:.1f}% of {p['rubricWords']} words | {p['statementRubric']:.1f}% of "
                 f"{p['statementRubricWords']} words |")
    by_type = {name: p.get("withImageByType") for name, p in t["platforms"].items() if p.get("withImageByType")}
    if by_type:
        names = {"statement": "statements (favourite colour)", "chat": "small talk", "story": "story sentences"}
        types = [k for k in names if k in next(iter(by_type.values()))]
        L += ["", "Turns that ask for no image, by kind, and how many got one (a story sentence describes a scene; "
              "GILL illustrates stories, and so does this bundle):", "",
              "| platform | " + " | ".join(names[k] for k in types) + " |", "|---|" + "---|" * len(types)]
        for name, counts in by_type.items():
            L.append(f"| {name} | " + " | ".join(f"{counts[k]['withImage']} of {counts[k]['turns']}" for k in types) + " |")
    kinds = list(next(iter(t["platforms"].values()))["accuracyByKind"])
    L += ["", "Mean attribute accuracy per conversation kind:", "", "| platform | " + " | ".join(kinds) + " |",
          "|---|" + "---|" * len(kinds)]
    for name, p in t["platforms"].items():
        L.append(f"| {name} | " + " | ".join(f"{p['accuracyByKind'][k]:.1f}" for k in kinds) + " |")
    L.append("")
    marker = "## Accuracy over training time"
    section = "\n".join(L) + "\n"
    return report.replace(marker, section + marker, 1) if marker in report else report + "\n" + section


def _targets(r: dict) -> list[dict]:
    g, ctx, ret, d = r["generation"]["gill"], r["context"], r["retrieval"], r["decision"]
    gaps = {k: v["gill_minus_last_message_baseline"] for k, v in ctx.items()}
    emoji = ret.get("emoji_train", ret.get("emoji_heldout", {"R@5": 0.0}))
    rows = [("single-object colour accuracy ≥ 90%", g["colour"] >= 0.9, f"{100 * g['colour']:.1f}%"),
            ("single-object shape accuracy ≥ 80%", g["shape"] >= 0.8, f"{100 * g['shape']:.1f}%"),
            *[(f"{k}: GILL beats the last-message baseline by ≥ 30 points", v >= 0.3, f"{100 * v:+.1f}") for k, v in gaps.items()],
            ("emoji name→image R@5 ≥ 0.8 (names seen in the GILL stage)", emoji["R@5"] >= 0.8, f"{emoji['R@5']:.3f}")]
    if "emoji_heldout" in ret:
        rows.append(("emoji R@5 ≥ 0.6 on held-out names (never paired with their image in training)",
                     ret["emoji_heldout"]["R@5"] >= 0.6, f"{ret['emoji_heldout']['R@5']:.3f}"))
    if "twemoji_all" in ret:
        rows.append(("twemoji art (never trained on) names→images R@5 ≥ 0.5, gallery = all twemoji",
                     ret["twemoji_all"]["R@5"] >= 0.5, f"{ret['twemoji_all']['R@5']:.3f}"))
    if d:
        rows.append(("decision macro-F1 ≥ 0.8 (ties left out)", d["test"]["macro_f1"] >= 0.8, f"{d['test']['macro_f1']:.3f}"))
        tie_label = "ties count as “retrieve”" if d.get("ties_policy") == "retrieve" else "ties keep the closer image's label"
        rows.append((f"decision macro-F1 ≥ 0.85 with ties counted ({tie_label})", d["test_all"]["macro_f1"] >= 0.85,
                     f"{d['test_all']['macro_f1']:.3f}"))
        kinds = d.get("by_kind", {})
        if "gallery_scene" in kinds:
            v = kinds["gallery_scene"]["pred_ret"]
            rows.append(("gallery_scene prompts predicted “retrieve” ≥ 80%", v >= 0.8, f"{100 * v:.0f}%"))
        if "novel_scene" in kinds:
            v = kinds["novel_scene"]["pred_ret"]
            rows.append(("novel_scene prompts predicted “retrieve” ≤ 10%", v <= 0.1, f"{100 * v:.0f}%"))
    return [{"name": n, "ok": bool(ok), "value": v} for n, ok, v in rows]


def _limits(r: dict) -> list[str]:
    out = []
    g = r["generation"]
    if g["diffusion_only"]["mean"] < 0.9:
        out.append(f"The diffusion stand-in itself reaches {100 * g['diffusion_only']['mean']:.1f}% mean attribute accuracy "
                   "from the exact caption: GILL's generation accuracy cannot exceed what the frozen generator can draw.")
    if g["gill"]["mean"] < g["diffusion_only"]["mean"] - 0.05:
        out.append("GILL is below the diffusion model on plain captions: the mapper's outputs are not yet close enough to "
                   "the text tower's states (see the gill stage's val_gen distance over training).")
    for k, v in r["context"].items():
        if v["gill_full_context"]["mean"] < v["diffusion_full_context"]["mean"]:
            trained_on = ("captions and training-split contexts" if r.get("gill_config", {}).get("context_rows")
                          else "captions only, as in the paper")
            out.append(f"{k}s: GILL with context is below the diffusion model fed the whole context; the frozen LM's [IMG] "
                       f"states after a dialogue or story are further from what the mapper was trained on ({trained_on}).")
    if "emoji_heldout" in r["retrieval"]:
        out.append("Held-out emoji names were never paired with their image in the GILL stage; their recall measures "
                   "generalisation of the retrieval heads, which the paper gets from a 6.7B LM and CLIP ViT-L.")
    if r["preset"] != "full":
        out.append(f"This report comes from the `{r['preset']}` preset (a few steps per stage): its numbers only check "
                   "that the pipeline runs.")
    return out or ["None observed."]


def evaluate(ctx, cfg: EvalConfig) -> dict:
    gcfg = gill_config(ctx.preset.name, ctx.gill_overrides)
    b = backbones(ctx)
    model = gill_model(ctx, b, gcfg, trained=True).eval()
    pipe = GillPipeline(model, b.vae, b.unet, str(ctx.device))
    data = ctx.load("data")
    seed = ctx.preset.seed + 50
    probe, probe_acc = train_probe(cfg, ctx.device, seed)
    r = {"preset": ctx.preset.name, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
         "device": str(ctx.device), "config": cfg.__dict__, "gill_config": gcfg.to_dict(), "probe": probe_acc}
    r["captioning"] = eval_captioning(pipe, cfg, random.Random(seed + 1))
    r["image_questions"] = eval_image_questions(pipe, cfg, random.Random(seed + 4))
    r["retrieval"] = eval_retrieval(pipe, data, cfg, ctx.emoji_dir, getattr(ctx, "art_dir", None),
                                    ctx.preset.emoji_limit)
    r["generation"] = eval_generation(pipe, probe, cfg, random.Random(seed + 2), seed)
    r["context"] = eval_context(pipe, probe, cfg, random.Random(seed + 3), seed)
    r["decision"] = {}
    if ctx.done("decision") and ctx.load("decision").get("rows"):
        dec = ctx.load("decision")
        rows, n_train = dec["rows"], dec["n_train"]
        kinds = sorted({x["kind"] for x in rows})
        def mean(values: list[float]) -> float:
            return sum(values) / max(1, len(values))

        r["decision"] = {**dec["metrics"], "n_prompts": len(rows), "uses_score": gcfg.decision_score,
                         "n_test": sum(x["confident"] for x in rows[n_train:]), "n_test_all": len(rows) - n_train,
                         "by_kind": {k: {
                             "n": sum(x["kind"] == k for x in rows),
                             "ties": sum(x["kind"] == k and not x["confident"] for x in rows),
                             "score": mean([x["score"] for x in rows if x["kind"] == k]),
                             "label_ret": mean([x["label"] for x in rows if x["kind"] == k and x["confident"]]),
                             "pred_ret": mean([x["pred"] for x in rows if x["kind"] == k])} for k in kinds}}
    r["curves"] = training_curves(ctx.work)
    r["targets"] = _targets(r)
    r["limits"] = _limits(r)
    return r


def stage_eval(ctx) -> None:
    """Training stage: writes `<out>/EVAL.md` and `<work>/eval.json` (skipped for the untrained preset). The
    results are kept in `<work>/eval.pt` with the modification times of the checkpoints they were computed from,
    so a re-run only re-renders the report unless a model changed."""
    if ctx.preset.name not in EVAL_CONFIGS:
        print(f"[eval] no evaluation for the {ctx.preset.name!r} preset", flush=True)
        return
    stamp = {n: ctx.path(n).stat().st_mtime for n in ("lm", "chat", "clip", "vae", "unet", "gill", "retrieval", "decision")}
    if ctx.done("eval") and ctx.load("eval")["stamp"] == stamp:
        r = ctx.load("eval")["report"]
        print("[eval] models unchanged since the last evaluation; re-rendering EVAL.md only", flush=True)
    else:
        r = evaluate(ctx, EVAL_CONFIGS[ctx.preset.name])
        ctx.save("eval", {"preset": ctx.preset.to_dict(), "stamp": stamp, "report": r})
        (ctx.work / "eval.json").write_text(json.dumps(r, indent=1))
        ctx.metric("eval", **{t["name"]: t["value"] for t in r["targets"]})
    Path(ctx.out).mkdir(parents=True, exist_ok=True)
    (Path(ctx.out) / "EVAL.md").write_text(with_thread_replay(render_report(r), Path(ctx.out), r))


def main() -> None:
    from .presets import PRESETS
    from .stages import Context

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--out", type=Path, required=True, help="bundle folder; EVAL.md goes there")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    stage_eval(Context(PRESETS[args.preset], torch.device(args.device), args.work, args.out, Path()))


if __name__ == "__main__":
    main()
