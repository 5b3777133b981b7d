"""Training presets: sizes of data and numbers of steps per stage. LM, CLIP and the graph interfaces are the same
in every preset (so `smoke` and `untrained` exercise the real export); `smoke` narrows the VAE and UNet and uses a
smaller vocabulary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Preset:
    name: str
    seed: int = 1234
    # Sized for about 6-7 minutes of these stages on one H100 (torch 2.11, bf16): measured with
    # bench_train_steps.py, every step is launch-bound (LM ~70, CLIP ~47, VAE ~45, UNet ~17 steps/s), so the
    # batches are large: the UNet at 1024 costs the same per step as at 256.
    images: dict[str, int] = field(default_factory=lambda: {"train": 50000, "val": 1000, "test": 1000})
    docs: dict[str, int] = field(default_factory=lambda: {"train": 60000, "val": 1000, "test": 1000})
    emoji_limit: int | None = None  # None = every usable emoji
    vocab_size: int = 1536
    lm_steps: int = 2000
    lm_batch: int = 256
    lm_lr: float = 1e-3
    clip_steps: int = 2000
    clip_batch: int = 512
    clip_lr: float = 1e-3
    vae_steps: int = 2000
    vae_batch: int = 256
    vae_lr: float = 1e-3
    unet_steps: int = 2000
    unet_batch: int = 1024
    unet_lr: float = 1e-3
    unet_emoji_frac: float = 0.1
    caption_dropout: float = 0.1
    eval_every: int = 1000  # steps between validation metrics
    eval_samples: int = 128  # generations scored by the quick diffusion check
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # Narrower VAE/UNet for the CPU smoke run (same inputs and outputs, so the same export path); None = default.
    vae_channels: tuple[int, int, int] | None = None
    unet_channels: tuple[int, int, int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "full": Preset("full"),
    "smoke": Preset(
        "smoke", images={"train": 256, "val": 64, "test": 64}, docs={"train": 400, "val": 64, "test": 64},
        emoji_limit=48, vocab_size=420, lm_steps=20, lm_batch=8, clip_steps=20, clip_batch=24, vae_steps=20,
        vae_batch=8, unet_steps=20, unet_batch=8, eval_every=20, eval_samples=4, lm_lr=3e-3, clip_lr=2e-3,
        vae_lr=3e-3, unet_lr=2e-3, vae_channels=(16, 16, 32), unet_channels=(16, 32, 32),
    ),
    "untrained": Preset(
        "untrained", images={"train": 64, "val": 16, "test": 16}, docs={"train": 4000, "val": 16, "test": 16},
        emoji_limit=None,
        lm_steps=0, clip_steps=0, vae_steps=0, unet_steps=0, eval_samples=0,
    ),
}
