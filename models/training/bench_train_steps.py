"""Training throughput of each backbone stage at the `full` preset's model shapes and batch sizes.

    python3 models/training/bench_train_steps.py --device cuda [--steps 30]

Random inputs of the right shapes (throughput does not depend on the data). Prints one line per stage and a
final JSON line {stage: steps_per_s, ..., "full_preset_seconds": {stage: estimated seconds}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gill_tiny.clip import ClipConfig, DualEncoder  # noqa: E402
from gill_tiny.diffusion import VAE, UNet, UNetConfig, VAEConfig, alphas_cumprod  # noqa: E402
from gill_tiny.lm import LMConfig, TinyLM  # noqa: E402
from gill_tiny.presets import PRESETS  # noqa: E402
from gill_tiny.stages import TEXT_MAX_LENGTH  # noqa: E402


def timed(step, steps: int, device: torch.device) -> float:
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    dev = torch.device(args.device)
    p = PRESETS["full"]
    vocab, text_vocab = p.vocab_size, p.vocab_size - 8
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast(device_type="cpu", enabled=False)

    def trainer(model, loss):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with amp:
                value = loss()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        return step

    lm = TinyLM(LMConfig(vocab_size=vocab, ffn_size=768)).to(dev)
    ids = torch.randint(3, vocab, (p.lm_batch, 96), device=dev)
    clip = DualEncoder(ClipConfig(text_vocab_size=text_vocab, text_max_length=TEXT_MAX_LENGTH)).to(dev)
    px = torch.rand(p.clip_batch, 3, 64, 64, device=dev) * 2 - 1
    tids = torch.randint(3, text_vocab, (p.clip_batch, TEXT_MAX_LENGTH), device=dev)
    vae = VAE(VAEConfig()).to(dev)
    vpx = torch.rand(p.vae_batch, 3, 64, 64, device=dev) * 2 - 1
    unet = UNet(UNetConfig()).to(dev)
    lat = torch.randn(p.unet_batch, 4, 16, 16, device=dev)
    uids = torch.randint(3, text_vocab, (p.unet_batch, TEXT_MAX_LENGTH), device=dev)
    acp = alphas_cumprod().to(dev)

    def unet_loss():
        with torch.no_grad():
            cond = clip.encode_text_states(uids)
        return unet.loss(lat, cond, acp)

    rates = {
        "lm": timed(trainer(lm, lambda: lm.lm_loss(ids, 0)), args.steps, dev),
        "clip": timed(trainer(clip, lambda: clip.contrastive_loss(px, tids)[0]), args.steps, dev),
        "vae": timed(trainer(vae, lambda: vae.loss(vpx)[0]), args.steps, dev),
        "unet": timed(trainer(unet, unet_loss), args.steps, dev),
    }
    for k, v in rates.items():
        print(f"{k}: {v:.1f} steps/s", flush=True)
    planned = {"lm": p.lm_steps, "clip": p.clip_steps, "vae": p.vae_steps, "unet": p.unet_steps}
    est = {k: round(planned[k] / rates[k], 1) for k in rates}
    print(json.dumps({"device": str(dev), "torch": torch.__version__,
                      "steps_per_s": {k: round(v, 2) for k, v in rates.items()}, "full_preset_seconds": est}))


if __name__ == "__main__":
    main()
