"""The PyTorch reference text-to-image pipeline of models/training, timed for bench/engine.ts: text tower on the
prompt -> DDIM with classifier-free guidance (`gill_tiny.diffusion.ddim_sample`) -> VAE decode -> PNG, the same
work the engine's `imagine` does (the "" embedding is computed once, as the engine caches it).

It serves one timed run per request, so the benchmark can alternate engine and reference runs and both meet the
same load on a shared machine. After loading it prints {"ready": true, ...}; then each stdin line
{"prompt": TEXT, "seed": N} gets one line {"ms": total, "denoise_ms": the DDIM loop}.

    /usr/bin/python3 models/training/bench_reference.py --bundle models/gill-tiny --work models/training/runs/full \
        --threads 2 --steps 25 --guidance 5
    /usr/bin/python3 models/training/bench_reference.py --bundle models/gill-tiny --flops-only

`--flops-only` prints the UNet's multiply-add FLOPs per call, counted by the PyTorch profiler.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gill_tiny.diffusion import UNet, UNetConfig, ddim_sample  # noqa: E402
from gill_tiny.stages import Context  # noqa: E402

# The matrix-multiply and convolution kernels: what the GFLOP/s figure is about (elementwise ops are left out).
FLOP_OPS = {"aten::conv2d", "aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}


class _StoredPreset:
    """The preset a run's checkpoints were made with, as stored in them: the benchmark loads exactly the weights
    the bundle was exported from, even when presets.py has changed since (the stages still check that every
    checkpoint of the run agrees with it)."""

    def __init__(self, stored: dict):
        self._stored = stored
        self.name = stored["name"]

    def to_dict(self) -> dict:
        return self._stored


def load_models(work: Path, bundle: Path):
    """The trained backbones from the training run's stage checkpoints (the weights the bundle was exported from)."""
    unet_ckpt = work / "unet.pt"
    if not unet_ckpt.is_file():
        raise SystemExit(f"bench_reference: no trained UNet at {unet_ckpt} (run models/training/train.py first)")
    ctx = Context(_StoredPreset(torch.load(unet_ckpt, map_location="cpu")["preset"]), torch.device("cpu"), work, bundle,
                  Path("."))
    return ctx.tokenizer(), ctx.clip(), ctx.unet(), ctx.vae()


def unet_gflop_per_call(unet: UNet, batch: int, channels: int, size: int, length: int, dim: int) -> float:
    sample = torch.randn(batch, channels, size, size)
    t = torch.full((batch,), 500.0)
    cond = torch.randn(batch, length, dim)
    with torch.no_grad(), torch.profiler.profile(with_flops=True) as prof:
        unet(sample, t, cond)
    # Only top-level kernels carry flops in the profiler, so no op is counted twice.
    return sum(e.flops for e in prof.key_averages() if e.key in FLOP_OPS and e.flops) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="the training run's checkpoint folder (required unless --flops-only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--flops-only", action="store_true",
                    help="only count the UNet's FLOPs, on the model code's UNet (no checkpoints needed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    d = manifest["diffusion"]
    L, C, h, scaling = d["textMaxLength"], d["latentChannels"], d["latentSize"], d["vaeScalingFactor"]
    batch = 2 if args.guidance > 1 else 1
    if args.flops_only:
        # FLOPs depend on the architecture alone; every preset shares UNetConfig's shapes.
        unet = UNet(UNetConfig(latent_channels=C, cond_dim=d["conditioningDim"])).eval()
        print(json.dumps({"unet_gflop_per_call": unet_gflop_per_call(unet, batch, C, h, L, d["conditioningDim"])}))
        return
    if args.work is None:
        ap.error("--work is required (the training run's checkpoint folder)")
    tok, clip, unet, vae = load_models(args.work, args.bundle)

    def encode(text: str) -> torch.Tensor:
        return clip.encode_text_states(torch.tensor([tok.encode_text_condition(text, L)]))

    with torch.no_grad():
        uncond = encode("")
        print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            started = time.perf_counter()
            cond = encode(request["prompt"])
            noise = torch.randn(1, C, h, h, generator=torch.Generator().manual_seed(int(request["seed"])))
            loop = time.perf_counter()
            latent = ddim_sample(unet, cond, uncond, noise, steps=args.steps, guidance=args.guidance)
            loop_ms = (time.perf_counter() - loop) * 1000
            image = vae.decode(latent / scaling)[0]
            rgb = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(rgb).save(io.BytesIO(), format="PNG")
            total_ms = (time.perf_counter() - started) * 1000
            print(json.dumps({"ms": total_ms, "denoise_ms": loop_ms}), flush=True)


if __name__ == "__main__":
    main()
