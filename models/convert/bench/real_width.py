"""bench:real's Python side (bench/real.ts drives it): the converter's own modules at real width with random
weights, exported to ONNX the way convert.py exports them, and timed in PyTorch eager.

    real_width.py export lm1|lm2|unet|clip DIR    # DIR/<name>.onnx + .data; one JSON line: seconds, peak RSS
    real_width.py eager lm1|lm2|unet|clip THREADS ITERS WARMUP   # one JSON line: per-call ms, peak RSS

Widths: OPT-6.7B (hidden 4096, 32 heads, FFN 16384, vocab 50274) with 1 and 2 of its 32 layers, so the
per-layer cost is the difference; SD 1.5's UNet at 64×64 latents, batch 2 (guidance); CLIP ViT-L/14 at 224.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gillconv import export, graphs  # noqa: E402
from gillconv.clip import CLIPVision, TowerConfig  # noqa: E402
from gillconv.opt import OPT, OPTConfig  # noqa: E402
from gillconv.unet import UNet, UNetConfig  # noqa: E402

PAST = 64  # KV cache length of the timed decode step
SD15 = UNetConfig((320, 640, 1280, 1280), 2, 8, 768, 32)
CLIP_L = TowerConfig(1024, 24, 16, 4096, 1e-5)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("lm"):
        m = OPT(OPTConfig(4096, int(name[2:]), 32, 16384, 50274, 2048))
    elif name == "unet":
        m = UNet(SD15)
    else:
        m = CLIPVision(CLIP_L, 224, 14)
        with torch.no_grad():
            m.vision_model.embeddings.class_embedding.normal_()
    return m.eval().requires_grad_(False)


def inputs(name: str, m: torch.nn.Module) -> tuple:
    if name.startswith("lm"):
        c = m.config
        past = [torch.randn(1, c.num_heads, PAST, c.head_dim) for _ in range(2 * c.num_layers)]
        return (torch.randn(1, 1, c.hidden_size) * 0.02, torch.ones(1, PAST + 1, dtype=torch.long), *past)
    if name == "unet":
        return torch.randn(2, 4, 64, 64), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768)
    return (torch.randn(1, 3, 224, 224),)


def export_one(name: str, out: Path) -> None:
    """One graph per process, so the peak RSS printed is this export's (weights + what the exporter adds)."""
    m = build(name)
    spec = graphs.lm_decoder(m) if name.startswith("lm") else graphs.unet(m, 64, 77) if name == "unet" \
        else graphs.image_encoder(m)
    weights = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
    t = time.perf_counter()
    export.export(spec[0], spec[1], out / f"{name}.onnx", spec[2], spec[3], spec[4], external=True)
    print(json.dumps({"exported": name, "seconds": round(time.perf_counter() - t, 1), "weightsMiB": round(weights),
                      "peakRssMiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}), flush=True)


def eager(name: str, threads: int, iters: int, warmup: int) -> None:
    torch.set_num_threads(threads)
    m = build(name)
    args = inputs(name, m)
    times = []
    with torch.no_grad():
        for i in range(warmup + iters):
            t = time.perf_counter()
            m(*args)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"module": name, "ms": times, "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export_one(sys.argv[2], Path(sys.argv[3]))
    else:
        eager(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
