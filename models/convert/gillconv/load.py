"""Builds each of the converter's modules from its checkpoint folder, strictly (see weights.bind)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .clip import CLIPText, CLIPVision, TowerConfig
from .heads import CastLinear, GILLMapper, VisualPrefix
from .opt import OPT, OPTConfig
from .unet import UNet, UNetConfig
from .vae import LEGACY_ATTENTION, VAEConfig, VAEDecoder
from .weights import ConversionError, Source, bind, expect, read_folder, read_pth

META = torch.device("meta")


def read_json(path: Path, label: str) -> dict:
    if not path.exists():
        raise ConversionError(f"{label}: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{label}: {path} is not valid JSON ({e})") from e


@dataclass
class Gill:
    """GILL's released layers, read from `pretrained_ckpt.pth.tar` and `decision_model.pth.tar`."""
    source: Source
    decision: Source
    img_rows: torch.Tensor  # [r, H], the [IMG] rows of the LM's embedding table
    logit_scale: float
    num_visual_tokens: int

    @staticmethod
    def read(folder: Path, hidden: int) -> "Gill":
        folder = Path(folder)
        src = read_pth(folder / "pretrained_ckpt.pth.tar", "--gill pretrained_ckpt.pth.tar")
        dec = read_pth(folder / "decision_model.pth.tar", "--gill decision_model.pth.tar")
        if "input_embeddings.weight" not in src.shapes:
            raise ConversionError(f"{src.label}: missing input_embeddings.weight [num_tokens, {hidden}]")
        r = src.shapes["input_embeddings.weight"][0]
        rows = expect(src, "input_embeddings.weight", (r, hidden))
        scale = expect(src, "logit_scale", tuple(src.shapes.get("logit_scale", ())))
        if scale.numel() != 1:
            raise ConversionError(f"{src.label}: logit_scale has shape {list(scale.shape)}, expected a scalar")
        vis = src.shapes.get("visual_embeddings.weight")
        if vis is None or vis[0] % hidden:
            raise ConversionError(f"{src.label}: visual_embeddings.weight {vis} is not [k*{hidden}, Dv]")
        k = vis[0] // hidden
        args = folder / "model_args.json"
        if args.exists():
            a = read_json(args, "--gill model_args.json")
            for name, got in (("num_tokens", r), ("n_visual_tokens", k)):
                if name in a and a[name] != got:
                    raise ConversionError(f"--gill: model_args.json says {name}={a[name]}, the checkpoint has {got}")
        return Gill(src, dec, rows, float(scale.float()), k)


def opt_prefix(src: Source) -> str:
    for p in ("model.decoder.", "decoder."):
        if f"{p}final_layer_norm.weight" in src.shapes:
            return p[: -len("decoder.")]
    raise ConversionError(f"{src.label}: no decoder.final_layer_norm.weight: not an OPT checkpoint")


def build_lm(folder: Path, gill: Gill, base_vocab: int, dtype: torch.dtype) -> OPT:
    """OPT with its table cut to the tokenizer's `base_vocab` + <|image|> rows, then GILL's [IMG] rows appended
    (the resize GILL does; the head stays tied to this table)."""
    cfg = read_json(Path(folder) / "config.json", "--opt config.json")
    src = read_folder(folder, "--opt", "model")
    r, h = gill.img_rows.shape
    c = OPTConfig.from_hf(cfg, base_vocab + 1 + r)
    lm = OPT(c, device=META)
    p = opt_prefix(src)
    table_key = f"{p}decoder.embed_tokens.weight"
    if table_key not in src.shapes:
        raise ConversionError(f"{src.label}: missing {table_key}")
    rows, width = src.shapes[table_key]
    if width != h or rows < base_vocab + 1:
        raise ConversionError(f"{src.label}: {table_key} is [{rows}, {width}], need at least "
                              f"[{base_vocab + 1}, {h}] (the tokenizer's {base_vocab} tokens, <|image|>, width of GILL's rows)")
    table = torch.cat([src.get(table_key)[: base_vocab + 1].to(dtype), gill.img_rows.to(dtype)])
    lm.decoder.embed_tokens.weight = torch.nn.Parameter(table, requires_grad=False)
    for name in ("embed_positions", "layers", "final_layer_norm"):
        bind(getattr(lm.decoder, name), src, f"{p}decoder.{name}.", dtype)
    src.ignore(r"lm_head\.weight")  # tied to the token embeddings
    src.check_all_used()
    return lm


def build_vision(folder: Path, dtype: torch.dtype) -> CLIPVision:
    cfg = read_json(Path(folder) / "config.json", "--clip config.json")
    vc = cfg.get("vision_config", cfg)
    m = CLIPVision(TowerConfig.from_hf(vc, "vision"), vc.get("image_size", 224), vc.get("patch_size", 14), META)
    src = read_folder(folder, "--clip", "model")
    bind(m, src, "", dtype)
    # CLIPModel also holds the text tower and projections; GILL uses the vision tower's pooled output only.
    src.ignore(r"text_model\..*|visual_projection\.weight|text_projection\.weight|logit_scale|.*position_ids")
    src.check_all_used()
    return m


def build_text(folder: Path, dtype: torch.dtype) -> CLIPText:
    cfg = read_json(Path(folder) / "config.json", "--sd text_encoder/config.json")
    tc = cfg.get("text_config", cfg)
    m = CLIPText(TowerConfig.from_hf(tc, "text"), tc.get("vocab_size", 49408), tc.get("max_position_embeddings", 77), META)
    src = read_folder(folder, "--sd text_encoder", "model")
    # CLIPTextModel files hold `text_model.…` (transformers 4, SD 1.5's own) or the bare names (transformers 5).
    bare = "text_model.final_layer_norm.weight" not in src.shapes
    bind(m, src, "", dtype, (lambda n: n[len("text_model."):]) if bare else (lambda n: n))
    src.ignore(r".*position_ids")
    src.check_all_used()
    return m


def build_unet(folder: Path, dtype: torch.dtype) -> UNet:
    c = UNetConfig.from_diffusers(read_json(Path(folder) / "config.json", "--sd unet/config.json"))
    return bind_unet(UNet(c, META), read_folder(folder, "--sd unet", "diffusion_pytorch_model"), dtype)


def bind_unet(m: UNet, src: Source, dtype: torch.dtype) -> UNet:
    bind(m, src, "", dtype)
    src.check_all_used()
    return m


def build_vae(folder: Path, dtype: torch.dtype) -> VAEDecoder:
    c = VAEConfig.from_diffusers(read_json(Path(folder) / "config.json", "--sd vae/config.json"))
    return bind_vae(VAEDecoder(c, META), read_folder(folder, "--sd vae", "diffusion_pytorch_model"), dtype)


def bind_vae(m: VAEDecoder, src: Source, dtype: torch.dtype) -> VAEDecoder:
    legacy = "decoder.mid_block.attentions.0.query.weight" in src.shapes

    def rename(name: str) -> str:
        if legacy:
            for new_old in LEGACY_ATTENTION.items():
                name = name.replace(f"attentions.0.{new_old[1]}", f"attentions.0.{new_old[0]}")
        return name

    bind(m, src, "", dtype, rename)
    src.ignore(r"encoder\..*|quant_conv\..*")  # the encoder half; the bundle only decodes
    src.check_all_used()
    return m


def build_heads(gill: Gill, h: int, dv: int, dc: int, dtype: torch.dtype) -> dict:
    src = gill.source
    prefix = VisualPrefix(dv, h, gill.num_visual_tokens, META)
    bind(prefix, src, "", dtype)
    ret = src.shapes.get("visual_fc.weight", (0,))[0]
    image_ret = CastLinear(dv, ret, device=META)
    bind(image_ret, src, "visual_fc.", dtype)
    text_ret = CastLinear(h, ret, device=META)
    bind(text_ret, src, "ret_text_hidden_fcs.0.model.", dtype)
    count = lambda part: len({m.group(1) for k in src.shapes  # noqa: E731
                              if (m := re.match(rf"gen_text_hidden_fcs\.0\.tfm\.{part}\.layers\.(\d+)\.", k))})
    queries = src.shapes.get("gen_text_hidden_fcs.0.query_embs", (1, 0, 0))[1]
    mapper = GILLMapper(h, dc, queries, count("encoder"), count("decoder"), META)
    bind(mapper, src, "gen_text_hidden_fcs.0.", dtype)
    src.check_all_used()
    decision = CastLinear(h, 2, device=META)
    bind(decision, gill.decision, "1.", dtype)
    gill.decision.check_all_used()
    return {"visual_prefix": prefix, "image_retrieval": image_ret, "text_retrieval": text_ret, "mapper": mapper,
            "decision": decision, "retrieval_dim": ret, "num_queries": queries}
