"""Golden fixtures for the TypeScript engine's parity tests: PyTorch reference outputs of the trained bundle for
fixed inputs, written to `<bundle>/fixtures/` (format and tolerances in that folder's README.md).

Run as a training stage (`train.py` runs it after the export) or alone:
    /usr/bin/python3 -m gill_tiny.fixtures --work models/training/runs/full --preset full --out models/gill-tiny
(from models/training). Always computed on the CPU in float32, so the numbers do not depend on the GPU used for
training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import data as D
from .gill import GEN, IMG_SUFFIX, to_pixels
from .gill_train import backbones, gill_model
from .pipeline import GillPipeline, to_uint8
from .presets import gill_config

FORMAT = "gill-fixtures/1"
# Prompts decoded greedily; each segment is a string or {"image": name of a fixture image}.
DECODE_CASES = [
    {"name": "chat_text", "segments": ["Q: draw a big red star on the left.\nA:"], "num_words": 16,
     "ret_scale_factor": 1.3, "gen_scale_factor": 1.0},
    {"name": "forced_image", "segments": ["a small blue circle at the top"], "num_words": 2,
     "ret_scale_factor": 1.0, "gen_scale_factor": 1e5},
    {"name": "dialogue_context", "segments": [
        "Q: my favourite colour is green.\nA: nice choice!\nQ: draw a small star in the middle in my favourite colour.\nA:"],
     "num_words": 24, "ret_scale_factor": 1.3, "gen_scale_factor": 1.0},
    {"name": "caption_image", "segments": [{"image": "scene"}, "a"], "num_words": 12,
     "ret_scale_factor": 1.0, "gen_scale_factor": 1.0},
    {"name": "interleaved_image", "segments": ["Q: look at this.", {"image": "scene"}, "\nA:"], "num_words": 16,
     "ret_scale_factor": 1.3, "gen_scale_factor": 1.0},
]
TOKEN_STRINGS = [
    "a big red star on the left",
    "a big red star on the left[IMG0][IMG1][IMG2][IMG3][IMG4][IMG5][IMG6][IMG7]",
    "Q: draw a cat face.\nA: here is [IMG0][IMG1][IMG2][IMG3][IMG4][IMG5][IMG6][IMG7] done",
    "grinning face with smiling eyes",
    "Ünïcödé & emoji 😀 [IMG3]",
]
FIXED_SCENE = D.Scene((D.Obj("star", "red", "big", "left"), D.Obj("circle", "blue", "small", "right")), "left of")
IMG_PROMPT = "a big green triangle at the bottom"
DIFFUSION = {"seed": 1234, "steps": 25, "guidance": 5.0}
DECISION_RETRIEVAL_SCORE = 0.5


def _t(x: torch.Tensor | np.ndarray, digits: int = 7) -> dict:
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    return {"dims": list(a.shape), "data": [float(f"{v:.{digits}g}") for v in a.reshape(-1).tolist()]}


@torch.no_grad()
def build_fixtures(pipe: GillPipeline, out_dir: Path) -> dict:
    """Computes every fixture and writes fixtures.json plus its PNG images into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = pipe.model, pipe.model.tok
    heads = model.heads.eval()
    fx: dict = {"format": FORMAT}
    # The best-gallery-cosine input of a decision head that takes one: a fixed value, fed with every [IMG0] below.
    score = torch.tensor([DECISION_RETRIEVAL_SCORE]) if heads.decision.uses_score else None
    fx["decisionRetrievalScore"] = DECISION_RETRIEVAL_SCORE if score is not None else None

    fx["tokens"] = [{"text": s, "ids": tok.encode(s, add_bos=True), "idsNoBos": tok.encode(s)} for s in TOKEN_STRINGS]
    fx["textEncoderTokens"] = [{"text": s, "ids": tok.encode_text_condition(s, model.clip.cfg.text_max_length)}
                               for s in ("a big red star on the left", "")]

    # Visual path of a fixed image (stored as PNG; 64x64 so the resize is the identity).
    img = D.render(FIXED_SCENE)
    Image.fromarray(img).save(out_dir / "scene.png")
    px = to_pixels(img)
    pooled = model.clip.encode_image(px)
    fx["image"] = {"file": "scene.png", "caption": D.caption(FIXED_SCENE), "pixelValues": _t(px), "pooled": _t(pooled),
                   "visualPrefix": _t(heads.visual_prefix(pooled)),
                   "imageRetrievalEmbedding": _t(heads.image_retrieval(pooled))}

    # [IMG] states of a text prompt with the block appended, and every head on them.
    h, e = model.img_states([IMG_PROMPT])
    ret = heads.text_retrieval(h[:, 0])
    cond = heads.mapper(h, e)
    fx["imgPrompt"] = {
        "text": IMG_PROMPT + IMG_SUFFIX, "ids": tok.encode(IMG_PROMPT + IMG_SUFFIX, add_bos=True),
        "imgHidden": _t(h[0]), "imgTokenEmbeds": _t(e[0]), "textRetrievalEmbedding": _t(ret[0]),
        "textRetrievalNormalised": _t(torch.nn.functional.normalize(ret, dim=-1)[0]),
        "mapperCond": _t(cond[0]), "decisionProbs": _t(pipe.decision_probs(h[:, 0], score)[0]),
        "logitScale": float(heads.logit_scale),
    }

    # GILL decoding (§3 steps 1-5).
    images = {"scene": img}
    fx["decode"] = []
    for case in DECODE_CASES:
        segs = [images[s["image"]] if isinstance(s, dict) else s for s in case["segments"]]
        emb = pipe.embed_prompt(segs)
        res = pipe.decode(emb, case["num_words"], ret_scale_factor=case["ret_scale_factor"],
                          gen_scale_factor=case["gen_scale_factor"])
        rec = {**case, "promptLength": emb.shape[1], "ids": res.ids, "text": res.text, "stop": res.stop,
               "imgPosition": res.img_position}
        if res.img_hidden is not None:
            probs = pipe.decision_probs(res.img_hidden[None, 0], score)[0]
            rec.update(imgHidden=_t(res.img_hidden), decisionProbs=_t(probs),
                       decision="gen" if int(probs.argmax()) == GEN else "ret",
                       textRetrievalEmbedding=_t(heads.text_retrieval(res.img_hidden[None, 0])[0]))
        fx["decode"].append(rec)

    # One diffusion run from the mapper output of the [IMG] prompt, fixed noise, DDIM, guidance.
    noise = pipe.noise(1, DIFFUSION["seed"])
    final = pipe.generate_images(cond, noise, DIFFUSION["steps"], DIFFUSION["guidance"])
    Image.fromarray(to_uint8(final)[0]).save(out_dir / "diffusion.png")
    fx["diffusion"] = {**DIFFUSION, "scheduler": "ddim", "prompt": IMG_PROMPT, "cond": "imgPrompt.mapperCond",
                       "uncond": _t(pipe.uncond()[0]), "initialNoise": _t(noise[0]),
                       "file": "diffusion.png"}
    (out_dir / "fixtures.json").write_text(json.dumps(fx, separators=(",", ":")) + "\n")
    return fx


def stage_fixtures(ctx) -> None:
    """Training stage: fixtures of the bundle just exported, computed on the CPU."""
    cpu = ctx.device
    ctx.device = torch.device("cpu")
    try:
        b = backbones(ctx)
        model = gill_model(ctx, b, gill_config(ctx.preset.name, ctx.gill_overrides), trained=True)
        fx = build_fixtures(GillPipeline(model.eval(), b.vae, b.unet, "cpu"), Path(ctx.out) / "fixtures")
    finally:
        ctx.device = cpu
    ctx.metric("fixtures", decode=[{"name": d["name"], "text": d["text"], "img": d["imgPosition"]} for d in fx["decode"]])


def main() -> None:
    from .presets import PRESETS
    from .stages import Context

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--out", type=Path, required=True, help="bundle folder; fixtures go to <out>/fixtures")
    args = ap.parse_args()
    stage_fixtures(Context(PRESETS[args.preset], torch.device("cpu"), args.work, args.out, Path()))


if __name__ == "__main__":
    main()
