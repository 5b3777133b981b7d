"""The backbone stages of the training pipeline (data, tokenizer, lm, clip, vae, latents, unet) and the shared
run context: checkpoints in the work dir, resumable training loops, metrics.

Each stage writes `<work>/<stage>.pt` when finished (atomically) and is skipped when that file exists.
Long loops also save `<work>/<stage>.partial.pt` every `checkpoint_seconds` and resume from it. Every
checkpoint records the preset and model config it was made with; loading one made with a different
configuration is an error naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

from .clip import ClipConfig, DualEncoder
from .data import (COLOURS, POSITIONS, SHAPES, SIZES, SPLITS, Obj, Scene, caption, emoji_caption, lm_documents,
                   load_emoji, render, sample_scene)
from .diffusion import VAE, UNet, UNetConfig, VAEConfig, alphas_cumprod, ddim_sample
from .lm import LMConfig, TinyLM
from .presets import Preset
from .tokenizer import Tokenizer, train_bpe
from .wordings import make_thread

TEXT_MAX_LENGTH = 32
LM_SEQ_LEN = 160
CAPTION_VARIANTS = 3  # caption wordings per image, drawn at random each step


@dataclass
class Context:
    preset: Preset
    device: torch.device
    work: Path
    out: Path
    emoji_dir: Path
    checkpoint_seconds: float = 120.0
    gill_overrides: dict[str, str] = field(default_factory=dict)  # GillConfig fields set on the command line
    chat_overrides: dict[str, str] = field(default_factory=dict)  # chat_settings keys set on the command line
    # other emoji art styles (fetch_emoji_art.mjs); `twitter/` in it is read by the evaluation only
    art_dir: Path | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.work / f"{name}.pt"

    def done(self, name: str) -> bool:
        return self.path(name).exists()

    def save(self, name: str, obj: dict) -> None:
        _atomic_save(obj, self.path(name))
        self._cache[name] = obj

    def load(self, name: str) -> dict:
        if name not in self._cache:
            self._cache[name] = _load_checked(self.path(name), self.preset)
        return self._cache[name]

    def metric(self, stage: str, **values: Any) -> None:
        rec = {"stage": stage, "time": round(time.time(), 2), **values}
        with open(self.work / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    def autocast(self):
        if self.device.type == "cuda" and self.preset.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # backbones, loaded from finished stages
    def tokenizer(self) -> Tokenizer:
        return Tokenizer([tuple(m) for m in self.load("tokenizer")["merges"]])

    def lm(self) -> TinyLM:
        """The frozen LM every later stage reads: the chat-tuned one once that stage is done."""
        name = "chat" if self.done("chat") else "lm"
        return _restore(self.load(name), lambda c: TinyLM(LMConfig(**c)), self.path(name))

    def clip(self) -> DualEncoder:
        return _restore(self.load("clip"), lambda c: DualEncoder(ClipConfig(**c)), self.path("clip"))

    def vae(self) -> VAE:
        return _restore(self.load("vae"), lambda c: VAE(VAEConfig(**c)), self.path("vae"))

    def unet(self) -> UNet:
        return _restore(self.load("unet"), lambda c: UNet(UNetConfig(**c)), self.path("unet"))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _load_checked(path: Path, preset: Preset) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # holds dataclasses (Scene); torch >= 2.6 defaults to True
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise RuntimeError(f"checkpoint {path} cannot be read ({e}); delete it to redo the stage") from e
    # Fields added to Preset after a checkpoint was made (absent from its record) configure later stages only.
    saved = obj.get("preset") if isinstance(obj, dict) else None
    if not isinstance(saved, dict) or saved != {k: v for k, v in preset.to_dict().items() if k in saved}:
        raise RuntimeError(
            f"checkpoint {path} was made with a different preset than {preset.name!r} (or is not a stage checkpoint); "
            "use another --work dir or delete it to redo the stage"
        )
    return obj


def _restore(ckpt: dict, build: Callable[[dict], torch.nn.Module], path: Path) -> Any:
    model = build(_tuples(ckpt["config"]))
    try:
        model.load_state_dict(ckpt["state"])
    except RuntimeError as e:
        raise RuntimeError(f"checkpoint {path} does not match the model code: {e}") from e
    return model.eval()


def _tuples(cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,64,64,3] -> float [B,3,64,64] in [-1,1] (the bundle's mean/std 0.5 normalisation)."""
    return images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# generic resumable loop ------------------------------------------------------------------------------------

def fit(
    ctx: Context,
    name: str,
    model: torch.nn.Module,
    steps: int,
    lr: float,
    loss_fn: Callable[[torch.Generator], tuple[torch.Tensor, dict]],
    eval_fn: Callable[[], dict] | None = None,
    params: list[torch.nn.Parameter] | None = None,
    weight_decay: float = 0.01,
) -> None:
    """AdamW with linear warmup (5%) and cosine decay, grad-norm clip 1.0; resumes from `<name>.partial.pt`.

    `loss_fn(generator)` draws its own batch with the given generator (seeded from the step, so a resumed run
    draws the same batches) and returns (loss, scalars to log)."""
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    partial = ctx.work / f"{name}.partial.pt"
    start = 0
    if partial.exists():
        state = _load_checked(partial, ctx.preset)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"[{name}] resuming at step {start} from {partial}", flush=True)
    warmup = max(1, steps // 20)
    last_save = time.time()
    t0 = time.time()
    model.train()
    for step in range(start, steps):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        g = torch.Generator(device="cpu").manual_seed(ctx.preset.seed * 1_000_003 + step)
        with ctx.autocast():
            loss, logs = loss_fn(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        last = step + 1 == steps
        if step % max(1, steps // 20) == 0 or last:
            ctx.metric(name, step=step + 1, loss=round(loss.item(), 5), lr=round(lr * scale, 7),
                       elapsed_s=round(time.time() - t0, 1), **{k: round(float(v), 5) for k, v in logs.items()})
        if eval_fn is not None and ((step + 1) % ctx.preset.eval_every == 0 or last):
            model.eval()
            with torch.no_grad(), ctx.autocast():
                ctx.metric(name, step=step + 1, elapsed_s=round(time.time() - t0, 1), **eval_fn())
            model.train()
        if time.time() - last_save > ctx.checkpoint_seconds and not last:
            _atomic_save({"preset": ctx.preset.to_dict(), "model": model.state_dict(), "opt": opt.state_dict(),
                          "step": step + 1}, partial)
            last_save = time.time()
    model.eval()
    partial.unlink(missing_ok=True)


def _idx(g: torch.Generator, n: int, b: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, n, (b,), generator=g).to(device)


# stages --------------------------------------------------------------------------------------------------

def stage_data(ctx: Context) -> None:
    """Render the shapes world per split, caption it, write LM documents, load the emoji set."""
    p = ctx.preset
    rng = random.Random(p.seed)
    emoji = load_emoji(ctx.emoji_dir, p.emoji_limit)
    shapes = {}
    for split in SPLITS:
        scenes = [sample_scene(rng, split) for _ in range(p.images[split])]
        shapes[split] = {
            "images": torch.from_numpy(np.stack([render(s, rng) for s in scenes])),
            "scenes": scenes,
            "captions": [[caption(s, rng) for _ in range(CAPTION_VARIANTS)] for s in scenes],
        }
    docs = {split: lm_documents(rng, p.docs[split], split, emoji.names) for split in SPLITS}
    ctx.save("data", {
        "preset": p.to_dict(), "shapes": shapes, "docs": docs,
        "emoji": {"names": emoji.names, "images": torch.from_numpy(emoji.images), "splits": emoji.splits,
                  "captions": [[emoji_caption(n, rng) for _ in range(CAPTION_VARIANTS)] for n in emoji.names]},
    })
    ctx.metric("data", **{f"images_{s}": p.images[s] for s in SPLITS}, emoji=len(emoji.names),
               docs_train=len(docs["train"]))


def stage_tokenizer(ctx: Context) -> None:
    data = ctx.load("data")
    corpus = list(data["docs"]["train"]) + [c for caps in data["shapes"]["train"]["captions"] for c in caps]
    corpus += data["emoji"]["names"]
    merges = train_bpe(corpus, ctx.preset.vocab_size)
    tok = Tokenizer(merges)
    ctx.save("tokenizer", {"preset": ctx.preset.to_dict(), "merges": [list(m) for m in merges]})
    ctx.metric("tokenizer", vocab_size=tok.vocab_size, merges=len(merges))


def _lm_tokens(tok: Tokenizer, docs: list[str], drop_long: bool = False) -> torch.Tensor:
    """Documents as right-padded LM rows. One over LM_SEQ_LEN tokens raises ValueError, or with `drop_long`
    is left out."""
    encoded = [tok.encode(d, add_bos=True) for d in docs]
    if drop_long:
        encoded = [ids for ids in encoded if len(ids) <= LM_SEQ_LEN]
    rows = torch.full((len(encoded), LM_SEQ_LEN), tok.pad_id, dtype=torch.long)
    for i, ids in enumerate(encoded):
        if len(ids) > LM_SEQ_LEN:
            raise ValueError(f"LM document {i} has {len(ids)} tokens, over {LM_SEQ_LEN}: {docs[i][:80]!r}...")
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


def stage_lm(ctx: Context) -> None:
    p, dev = ctx.preset, ctx.device
    tok = ctx.tokenizer()
    data = ctx.load("data")
    train = _lm_tokens(tok, data["docs"]["train"]).to(dev)
    val = _lm_tokens(tok, data["docs"]["val"]).to(dev)
    torch.manual_seed(p.seed + 1)
    cfg = LMConfig(vocab_size=tok.vocab_size, ffn_size=768, max_positions=256)
    lm = TinyLM(cfg).to(dev)

    def loss_fn(g):
        return lm.lm_loss(train[_idx(g, train.shape[0], p.lm_batch, dev)], tok.pad_id), {}

    def eval_fn():
        batch = val[:256]
        pos = torch.arange(batch.shape[1], device=dev).expand_as(batch)
        logits, _, _ = lm(lm.embed(batch), pos)
        target = batch[:, 1:]
        mask = target != tok.pad_id
        acc = ((logits[:, :-1].argmax(-1) == target) & mask).sum() / mask.sum()
        return {"val_loss": round(lm.lm_loss(batch, tok.pad_id).item(), 5), "val_token_acc": round(acc.item(), 4)}

    fit(ctx, "lm", lm, p.lm_steps, p.lm_lr, loss_fn, eval_fn)
    ctx.save("lm", {"preset": p.to_dict(), "config": cfg.to_dict(), "state": {k: v.cpu() for k, v in lm.state_dict().items()}})


CHAT_SETTINGS = ("init", "steps", "lr")


def chat_settings(preset: Preset, overrides: dict[str, str]) -> dict[str, Any]:
    """The chat stage's run: the preset's steps and lr from `lm.pt`, or what `--chat KEY=VALUE` sets (`init`: an
    LM checkpoint to continue from instead, e.g. the committed chat.pt when the thread wordings grew)."""
    unknown = sorted(set(overrides) - set(CHAT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown chat setting(s) {unknown}: expected {list(CHAT_SETTINGS)}")
    try:
        return {"init": overrides.get("init", ""), "steps": int(overrides.get("steps", preset.chat_steps)),
                "lr": float(overrides.get("lr", preset.chat_lr))}
    except ValueError as e:
        raise ValueError(f"chat steps must be an integer and lr a number: {e}") from e


def stage_chat(ctx: Context) -> None:
    """The LM's chat tuning: the pretrained LM continues on threads worded as people write in chat (wordings.TRAIN:
    small talk, US and UK spelling, typos, statements answered by an acknowledgement that restates them, requests
    by "here is …"), mixed 1:1 with its pretraining documents so it keeps what it knew. A frozen LM of GILL's size
    has read such text in pretraining; the stand-in needs it before the GILL stage reads its states."""
    p, dev = ctx.preset, ctx.device
    run = chat_settings(p, ctx.chat_overrides)
    tok = ctx.tokenizer()
    source = Path(run["init"]) if run["init"] else ctx.path("lm")
    start = _load_checked(source, p) if run["init"] else ctx.load("lm")
    lm = _restore(start, lambda c: TinyLM(LMConfig(**c)), source).to(dev)
    cfg = start["config"]
    data = ctx.load("data")
    rng = random.Random(p.seed + 3)
    threads = {split: [make_thread(rng, split).text() for _ in range(n)]
               for split, n in (("train", p.chat_threads), ("val", 256))}
    # a long thread in a small vocabulary (the smoke preset) can exceed the LM's training length: left out
    train_threads = _lm_tokens(tok, threads["train"], drop_long=True).to(dev)
    pretrain = _lm_tokens(tok, data["docs"]["train"]).to(dev)
    val = _lm_tokens(tok, threads["val"], drop_long=True).to(dev)
    half = p.chat_batch // 2

    def loss_fn(g):
        rows = torch.cat([train_threads[_idx(g, train_threads.shape[0], half, dev)],
                          pretrain[_idx(g, pretrain.shape[0], p.chat_batch - half, dev)]])
        return lm.lm_loss(rows, tok.pad_id), {}

    def eval_fn():
        return {"val_thread_loss": round(lm.lm_loss(val, tok.pad_id).item(), 5)}

    fit(ctx, "chat", lm, run["steps"], run["lr"], loss_fn, eval_fn)
    ctx.save("chat", {"preset": p.to_dict(), "config": cfg, "run": run,
                      "state": {k: v.cpu() for k, v in lm.state_dict().items()}})


def _caption_ids(tok: Tokenizer, captions: list[list[str]]) -> torch.Tensor:
    """[N, CAPTION_VARIANTS, TEXT_MAX_LENGTH] text-tower ids."""
    return torch.tensor([[tok.encode_text_condition(c, TEXT_MAX_LENGTH) for c in caps] for caps in captions])


def _pairs(ctx: Context, tok: Tokenizer, split: str) -> dict[str, torch.Tensor]:
    """Images, caption ids and content groups of a split, shapes then emoji (every emoji: the stand-in CLIP,
    like the real one, has seen all the concepts; held-out emoji splits apply to the GILL stage)."""
    data = ctx.load("data")
    sh, em = data["shapes"][split], data["emoji"]
    keys = {k: i for i, k in enumerate(sorted({s.key() for s in sh["scenes"]}))}
    images = [sh["images"]]
    ids = [_caption_ids(tok, sh["captions"])]
    groups = [torch.tensor([keys[s.key()] for s in sh["scenes"]])]
    if split == "train":
        images.append(em["images"])
        ids.append(_caption_ids(tok, em["captions"]))
        groups.append(torch.arange(len(em["names"])) + len(keys))
    return {"images": torch.cat(images).to(ctx.device), "ids": torch.cat(ids).to(ctx.device),
            "groups": torch.cat(groups).to(ctx.device), "n_shapes": torch.tensor(sh["images"].shape[0])}


def stage_clip(ctx: Context) -> None:
    p, dev = ctx.preset, ctx.device
    tok = ctx.tokenizer()
    train, val = _pairs(ctx, tok, "train"), _pairs(ctx, tok, "val")
    torch.manual_seed(p.seed + 2)
    cfg = ClipConfig(text_vocab_size=tok.text_vocab_size, pad_id=tok.pad_id, text_max_length=TEXT_MAX_LENGTH)
    clip = DualEncoder(cfg).to(dev)
    n = train["images"].shape[0]

    def loss_fn(g):
        i = _idx(g, n, p.clip_batch, dev)
        v = _idx(g, CAPTION_VARIANTS, p.clip_batch, dev)
        loss, acc = clip.contrastive_loss(pixels(train["images"][i]), train["ids"][i, v], train["groups"][i])
        return loss, {"acc": acc.item()}

    def eval_fn():
        m = min(256, val["images"].shape[0])
        _, acc = clip.contrastive_loss(pixels(val["images"][:m]), val["ids"][:m, 0], val["groups"][:m])
        return {"val_i2t_acc": round(acc.item(), 4), "val_batch": m}

    fit(ctx, "clip", clip, p.clip_steps, p.clip_lr, loss_fn, eval_fn)
    ctx.save("clip", {"preset": p.to_dict(), "config": cfg.to_dict(), "state": {k: v.cpu() for k, v in clip.state_dict().items()}})


def stage_vae(ctx: Context) -> None:
    p, dev = ctx.preset, ctx.device
    data = ctx.load("data")
    train = torch.cat([data["shapes"]["train"]["images"], data["emoji"]["images"]]).to(dev)
    val = data["shapes"]["val"]["images"][:256].to(dev)
    torch.manual_seed(p.seed + 3)
    cfg = VAEConfig(channels=p.vae_channels) if p.vae_channels else VAEConfig()
    vae = VAE(cfg).to(dev)

    def loss_fn(g):
        loss, mse = vae.loss(pixels(train[_idx(g, train.shape[0], p.vae_batch, dev)]))
        return loss, {"mse": mse.item()}

    def eval_fn():
        x = pixels(val)
        recon = vae.decode(vae.encode(x)[0])
        return {"val_mse_01": round(F.mse_loss(recon.float(), x.float()).item() / 4, 6)}  # on the 0..1 scale

    fit(ctx, "vae", vae, p.vae_steps, p.vae_lr, loss_fn, eval_fn, weight_decay=0.0)
    with torch.no_grad():
        means = torch.cat([vae.encode(pixels(train[i : i + 512]))[0].float() for i in range(0, min(2048, train.shape[0]), 512)])
        vae.scaling_factor.fill_(1.0 / means.std().clamp(min=1e-6).item())
    ctx.save("vae", {"preset": p.to_dict(), "config": cfg.to_dict(), "state": {k: v.cpu() for k, v in vae.state_dict().items()}})
    ctx.metric("vae", scaling_factor=round(float(vae.scaling_factor), 5))


def stage_latents(ctx: Context) -> None:
    """Cache scaled VAE latents (posterior means) and caption ids of every UNet training image."""
    dev = ctx.device
    tok = ctx.tokenizer()
    vae = ctx.vae().to(dev)
    data = ctx.load("data")

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([vae.encode(pixels(images[i : i + 512].to(dev)))[0].float().cpu()
                              for i in range(0, images.shape[0], 512)]) * vae.scaling_factor.cpu()

    ctx.save("latents", {
        "preset": ctx.preset.to_dict(),
        "shapes": encode(data["shapes"]["train"]["images"]), "shapes_ids": _caption_ids(tok, data["shapes"]["train"]["captions"]),
        "emoji": encode(data["emoji"]["images"]), "emoji_ids": _caption_ids(tok, data["emoji"]["captions"]),
    })


def stage_unet(ctx: Context) -> None:
    p, dev = ctx.preset, ctx.device
    tok = ctx.tokenizer()
    clip = ctx.clip().to(dev).requires_grad_(False)  # frozen: its states are the GILLMapper's targets
    vae = ctx.vae().to(dev)
    lat = ctx.load("latents")
    sh, sh_ids = lat["shapes"].to(dev), lat["shapes_ids"].to(dev)
    em, em_ids = lat["emoji"].to(dev), lat["emoji_ids"].to(dev)
    empty = torch.tensor([tok.encode_text_condition("", TEXT_MAX_LENGTH)], device=dev)
    acp = alphas_cumprod().to(dev)
    torch.manual_seed(p.seed + 4)
    cfg = UNetConfig(cond_dim=clip.cfg.text_width, **({"channels": p.unet_channels} if p.unet_channels else {}))
    unet = UNet(cfg).to(dev)
    n_emoji = int(round(p.unet_batch * p.unet_emoji_frac))

    def loss_fn(g):
        i = _idx(g, sh.shape[0], p.unet_batch - n_emoji, dev)
        j = _idx(g, em.shape[0], n_emoji, dev)
        v = _idx(g, CAPTION_VARIANTS, p.unet_batch, dev)
        latents = torch.cat([sh[i], em[j]])
        ids = torch.cat([sh_ids[i], em_ids[j]])[torch.arange(p.unet_batch, device=dev), v]
        drop = (torch.rand(p.unet_batch, generator=g) < p.caption_dropout).to(dev)
        ids = torch.where(drop[:, None], empty.expand_as(ids), ids)
        with torch.no_grad():
            cond = clip.encode_text_states(ids)
        return unet.loss(latents, cond, acp), {}

    val_scenes = [s for s in ctx.load("data")["shapes"]["val"]["scenes"] if len(s.objects) == 1][: p.eval_samples]

    def eval_fn():
        return generation_check(ctx, tok, clip, vae, unet, val_scenes) if val_scenes else {}

    fit(ctx, "unet", unet, p.unet_steps, p.unet_lr, loss_fn, eval_fn)
    ctx.save("unet", {"preset": p.to_dict(), "config": cfg.to_dict(), "state": {k: v.cpu() for k, v in unet.state_dict().items()}})


# quick generation check --------------------------------------------------------------------------------

_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
_SINGLE = [Scene((Obj(s, c, z, q),)) for s in SHAPES for c in COLOURS for z in SIZES for q in POSITIONS]


def colour_of(image_u8: torch.Tensor) -> str | None:
    """The palette colour nearest the mean of the clearly non-white pixels (None for a blank image)."""
    px = image_u8.reshape(-1, 3).float()
    fg = px[(255 - px).max(-1).values > 60]
    if fg.shape[0] < 8:
        return None
    return list(COLOURS)[int(torch.cdist(fg.mean(0, keepdim=True), _PALETTE).argmin())]


@torch.no_grad()
def generation_check(ctx: Context, tok: Tokenizer, clip: DualEncoder, vae: VAE, unet: UNet,
                     scenes: list[Scene], steps: int = 25, guidance: float = 5.0) -> dict:
    """Generate one image per single-object scene from its canonical caption and score it: colour by pixels,
    and each attribute by which of all single-object captions the stand-in CLIP ranks first. A quick training
    signal only; the evaluation proper (a probe classifier) is in evaluate.py."""
    dev = ctx.device
    ids = torch.tensor([tok.encode_text_condition(caption(s), TEXT_MAX_LENGTH) for s in scenes], device=dev)
    empty = torch.tensor([tok.encode_text_condition("", TEXT_MAX_LENGTH)] * len(scenes), device=dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(len(scenes), unet.cfg.latent_channels, 16, 16, generator=g).to(dev)
    lat = ddim_sample(unet, clip.encode_text_states(ids), clip.encode_text_states(empty), noise, steps, guidance)
    images = vae.decode(lat.float() / vae.scaling_factor)
    u8 = ((images.float().clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).cpu()
    colour_acc = sum(colour_of(u8[i]) == s.objects[0].colour for i, s in enumerate(scenes)) / len(scenes)
    cand = torch.tensor([tok.encode_text_condition(caption(s), TEXT_MAX_LENGTH) for s in _SINGLE], device=dev)
    best = (clip.embed_image(images.float()) @ clip.embed_text(cand).t()).argmax(-1).tolist()
    hits = {a: 0 for a in ("shape", "colour", "size", "position")}
    for i, s in enumerate(scenes):
        got, want = _SINGLE[best[i]].objects[0], s.objects[0]
        for a in hits:
            hits[a] += getattr(got, a) == getattr(want, a)
    return {"gen_colour_px": round(colour_acc, 3), **{f"gen_{a}_clip": round(h / len(scenes), 3) for a, h in hits.items()}}
