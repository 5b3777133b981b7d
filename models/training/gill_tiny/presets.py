"""Training presets, all in one place: sizes of data and numbers of steps per backbone stage (`Preset`), and the
GILL stage's model and training configuration per preset (`GillConfig`). LM, CLIP and the graph interfaces are the
same in every preset (so `smoke` and `untrained` exercise the real export); `smoke` narrows the VAE and UNet and
uses a smaller vocabulary."""

from __future__ import annotations

import dataclasses
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
    # The LM's chat tuning (stage "chat"): the pretrained LM continues on threads worded as people write
    # (wordings.TRAIN) mixed 1:1 with its pretraining documents. Sized for 2 CPU cores (~1.5 s a step).
    chat_steps: int = 600
    chat_batch: int = 128
    chat_lr: float = 3e-4
    chat_threads: int = 30000
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
        vae_batch=8, chat_steps=20, chat_batch=8, chat_threads=200, unet_steps=20, unet_batch=8, eval_every=20, eval_samples=4, lm_lr=3e-3, clip_lr=2e-3,
        vae_lr=3e-3, unet_lr=2e-3, vae_channels=(16, 16, 32), unet_channels=(16, 32, 32),
    ),
    "untrained": Preset(
        "untrained", images={"train": 64, "val": 16, "test": 16}, docs={"train": 4000, "val": 16, "test": 16},
        emoji_limit=None,
        lm_steps=0, clip_steps=0, vae_steps=0, unet_steps=0, eval_samples=0,
    ),
}


@dataclass
class GillConfig:
    num_visual_tokens: int = 4  # k
    retrieval_dim: int = 128  # R
    mapper_width: int = 128  # the paper's 512, scaled down with the LM
    mapper_heads: int = 4
    mapper_layers: int = 2  # encoder and decoder layers each (paper: 4 + 4)
    mapper_ffn: int = 512
    max_len: int = 32  # caption tokens incl. BOS and the [IMG] block (--max-len)
    concat_prob: float = 0.5
    batch_size: int = 128
    steps: int = 4000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_frac: float = 0.1  # paper: 2k warmup of 20k steps, x0.1 at 12k
    decay_frac: float = 0.6
    grad_clip: float = 1.0
    emoji_frac: float = 0.3  # share of emoji pairs in a batch
    # Context pairs (an addition to the paper's caption-only stage): a training-split dialogue or story with a caption
    # of its final scene, extra rows per step for the [IMG] and mapper losses. The paper's 7B LM already
    # reads a dialogue into the state its caption would give; the stand-in LM needs these rows to learn that.
    context_rows: int = 0
    context_pairs: int = 20000
    context_max_len: int = 128
    # In the threads among the context rows, the share of the bot's earlier pictures shown after its reply's text
    # (as the engine shows the bot its own answers); the others are text only (left out by the context's budget).
    context_bot_pictures: float = 0.0
    # Rows a step of a question about a posted picture and its answer (gill.image_question_loss): the paper's
    # captioning rows put the picture first; in a thread it comes after the question, inside a `Q: … A:` turn.
    image_question_rows: int = 0
    # Warm start: a GILL checkpoint whose heads and [IMG] rows the stage starts from instead of a fresh
    # initialisation (e.g. the committed gill.pt after the LM's chat tuning moved its states a little).
    init: str = ""
    eval_every: int = 250
    # retrieval refinement (stage_retrieval): the same contrastive loss on cached [IMG0] states, big batches
    refine_steps: int = 0
    refine_batch: int = 2048
    refine_lr: float = 3e-3
    refine_scenes: int = 20000  # training scenes whose captions are cached (all emoji always are)
    # hidden width of a residual MLP on the text-side retrieval projection, trained only by the refinement
    # (0: the paper's linear projection alone)
    refine_text_mlp: int = 0
    # decision stage
    decision_score: bool = True  # [h_IMG0 ; best retrieval cosine], the paper's first decision model (4097-d)
    # Prompts whose retrieved and generated images are within this CLIP cosine of each other are ties (either
    # image serves): left out of training and of the headline F1, as the paper's PartiPromptsDecisionsConfident
    # keeps only confident labels.
    decision_tie_margin: float = 0.02
    # What a tie is labelled: "retrieve" (either image serves, and the community's own image costs no GPU time:
    # ties train as "retrieve" and count as "retrieve" in the with-ties figures) or "drop" (left out of training;
    # the with-ties figures keep whichever image was closer, however slightly).
    decision_ties: str = "retrieve"
    decision_score_scale: float = 100.0  # the decision head's input (best cosine - training mean) * this
    decision_floor_quantile: float = 0.05  # minRetrieveSimilarity = this quantile of good retrievals' cosines
    decision_prompts: int = 900
    decision_gallery_scenes: int = 300
    decision_steps: int = 4000
    gen_steps: int = 10  # DDIM steps used to label decisions and in evaluation
    guidance: float = 5.0

    def to_dict(self) -> dict:
        return asdict(self)


GILL_CONFIGS = {
    # Trained on one H100 (about 4 minutes; on 2 CPU cores expect ~3 s a step). The paper's batch of 200 and
    # 30% emoji left emoji name->image R@5 at 0.36: 160 emoji rows a step give each name ~370 contrastive
    # views. The context rows lift dialogue / story generation from +20 to +72 points over the last-message
    # baseline (EVAL.md, measured side by side).
    # The refinement (600 steps of 1,024 on 6,000 cached scenes + every training emoji) is sized for 2 shared CPU
    # cores: 2,000 steps of 2,048 on 20,000 scenes took 1.2 s a step there with the MLP; 600 steps of 1,024 are
    # what the README's side-by-side table (retrieval_ablation.py) measured.
    "full": GillConfig(batch_size=320, steps=3000, emoji_frac=0.5, context_rows=64, context_bot_pictures=0.7, image_question_rows=64, refine_steps=600,
                       refine_batch=1024, refine_scenes=6000, refine_text_mlp=512),
    "smoke": GillConfig(steps=24, batch_size=8, eval_every=12, context_rows=4, context_pairs=64, context_bot_pictures=0.7, image_question_rows=4, refine_steps=60, refine_batch=64, refine_scenes=64,
                        decision_prompts=24,
                        decision_gallery_scenes=16, decision_steps=60, gen_steps=4),
    "untrained": GillConfig(steps=0, decision_prompts=0),
}


def gill_config(preset_name: str, overrides: dict[str, str] | None = None) -> GillConfig:
    """The preset's GILL configuration with `overrides` (field name -> value as text, train.py's --gill)."""
    if preset_name not in GILL_CONFIGS:
        raise ValueError(f"no GILL configuration for preset {preset_name!r}; known: {sorted(GILL_CONFIGS)}")
    cfg = GILL_CONFIGS[preset_name]
    fields = {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    changes = {}
    for key, text in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"unknown GILL setting {key!r}; known: {sorted(fields)}")
        kind = fields[key]
        if kind in (tuple, bool):
            raise ValueError(f"GILL setting {key!r} cannot be overridden from the command line")
        try:
            changes[key] = kind(text)
        except ValueError as e:
            raise ValueError(f"GILL setting {key}={text!r} is not a valid {kind.__name__}") from e
    return dataclasses.replace(cfg, **changes)
