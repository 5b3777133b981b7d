"""Writes models/convert/fixtures/: the SD 1.5 UNet and VAE-decoder key/shape listings (from this converter's
modules at diffusers' SD 1.5 config; parity.py checks them against the published parameter totals) and a
stand-in for GILL's decision_model.pth.tar with the released file's structure and random values."""

import collections
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gillconv.unet import UNet, UNetConfig  # noqa: E402
from gillconv.vae import VAEConfig, VAEDecoder  # noqa: E402

SD15_UNET = UNetConfig((320, 640, 1280, 1280), 2, 8, 768, 32)
SD15_VAE = VAEConfig((128, 256, 512, 512), 2, 32)


def listing(module: torch.nn.Module) -> str:
    return "".join(f"{k} {','.join(map(str, v.shape))}\n" for k, v in module.state_dict().items())


if __name__ == "__main__":
    out = HERE.parent / "fixtures"
    out.mkdir(exist_ok=True)
    meta = torch.device("meta")
    (out / "sd15_unet_keys.txt").write_text(listing(UNet(SD15_UNET, meta)))
    (out / "sd15_vae_decoder_keys.txt").write_text(listing(VAEDecoder(SD15_VAE, meta)))
    g = torch.Generator().manual_seed(0)
    decision = collections.OrderedDict([("1.weight", torch.randn(2, 4096, generator=g) * 0.01),
                                        ("1.bias", torch.zeros(2))])
    torch.save(decision, out / "decision_model.pth.tar")
