#!/usr/bin/env python3
"""Converts GILL's released checkpoint (Koh et al. 2023, arXiv 2305.17216) and its frozen backbones (OPT,
CLIP ViT-L/14, Stable Diffusion 1.5) into a model bundle in the gill-bundle/2 format (models/README.md).

    python3 models/convert/convert.py --gill DIR --opt DIR --clip DIR --sd DIR --out DIR \
        [--dtype fp16|fp32] [--quantize-lm int8]

Graphs are exported one at a time from this converter's own modules and released before the next, so peak
memory is about one backbone (the LM) plus what the exporter folds; see models/convert/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gillconv import export, graphs, load  # noqa: E402
from gillconv.tokenizers_out import clip_tokenizer, opt_tokenizer  # noqa: E402
from gillconv.weights import ConversionError  # noqa: E402

CONVERTER = "gill-convert/1"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
# Stable Diffusion 1.5's scheduler_config.json (PNDM), in the manifest's names.
SD15_SCHEDULER = {"numTrainTimesteps": 1000, "betaSchedule": "scaled_linear", "betaStart": 0.00085, "betaEnd": 0.012,
                  "predictionType": "epsilon", "timestepSpacing": "leading", "stepsOffset": 1,
                  "setAlphaToOne": False, "clipSample": False}
LICENCES = {"lm": "OPT-175B License Agreement (non-commercial)", "vision": "MIT",
            "diffusion": "CreativeML OpenRAIL-M", "gill": "Apache-2.0"}
EXTERNAL = {"lm_embed.onnx", "lm.onnx", "image_encoder.onnx", "text_encoder.onnx", "unet.onnx", "vae_decoder.onnx"}


def log(msg: str) -> None:
    print(f"[convert {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def special_token(folder: Path, name: str, default: str) -> str:
    """A special token's text from tokenizer_config.json / special_tokens_map.json (plain or AddedToken dicts)."""
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        p = folder / f
        if p.exists():
            v = json.loads(p.read_text()).get(name)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                return v
    return default


def input_hashes(roots: dict[str, Path]) -> dict[str, str]:
    """sha256 of every file of every input folder (provenance)."""
    out = {}
    for name, root in roots.items():
        for p in sorted(Path(root).rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                out[f"{name}/{p.relative_to(root).as_posix()}"] = export.sha256(p)
    return out


def quantize_lm(out: Path, record: dict) -> dict:
    """onnxruntime's dynamic int8 quantization of lm.onnx; prints its hidden-state error against fp32."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = out / "lm.onnx", out / "lm.int8.onnx"
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=True)
    names = {}
    for path in (src, dst):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names[path] = s
    s32 = names[src]
    feeds = {}
    rng = np.random.default_rng(0)
    for i in s32.get_inputs():
        if i.name == "inputs_embeds":
            feeds[i.name] = rng.standard_normal((1, 8, record["hidden"]), dtype=np.float32) * 0.02
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, 8), dtype=np.int64)
        else:
            feeds[i.name] = np.zeros((1, record["heads"], 0, record["head_dim"]), dtype=np.float32)
    h32 = s32.run(["hidden_states"], feeds)[0]
    h8 = names[dst].run(["hidden_states"], feeds)[0]
    err = float(np.abs(h32 - h8).max())
    rel = float(np.linalg.norm(h32 - h8) / np.linalg.norm(h32))
    log(f"int8 LM: hidden-state max |error| {err:.4g}, relative L2 error {rel:.4g} (against fp32)")
    for path in (src, out / "lm.onnx.data"):
        path.unlink()
    dst.rename(src)
    data = out / "lm.int8.onnx.data"
    if data.exists():
        import onnx
        m = onnx.load(str(src), load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "lm.onnx.data"
        onnx.save_model(m, str(src))
        data.rename(out / "lm.onnx.data")
    return {"maxAbsError": err, "relativeL2Error": rel}


def convert(a: argparse.Namespace) -> dict:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.dtype == "fp16" and int(torch.__version__.split(".")[0]) < 2:
        raise ConversionError("--dtype fp16 traces the graphs in half precision on the CPU, which torch "
                              f"{torch.__version__} has no kernels for: use torch >= 2.0, or --dtype fp32")
    if a.quantize_lm and a.dtype != "fp32":
        raise ConversionError("--quantize-lm int8 quantizes a float32 LM: add --dtype fp32")
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    onnx_dtype = "float16" if a.dtype == "fp16" else "float32"
    opt_dir, clip_dir, sd, gill_dir = Path(a.opt), Path(a.clip), Path(a.sd), Path(a.gill)
    records: dict[str, dict] = {}

    def write(file: str, spec: tuple, graph_dtype: str = onnx_dtype) -> None:
        log(f"exporting {file}")
        module, args, inputs, outputs, axes = spec
        export.export(module, args, out / file, inputs, outputs, axes, external=file in EXTERNAL)
        records[file] = export.graph_record(out / file, graph_dtype)

    # Tokenizers first: the LM's table size follows from them.
    opt_cfg = load.read_json(opt_dir / "config.json", "--opt config.json")
    hidden = opt_cfg.get("hidden_size")
    gill = load.Gill.read(gill_dir, hidden)
    r = gill.img_rows.shape[0]
    bos, eos, pad = opt_cfg.get("bos_token_id", 2), opt_cfg.get("eos_token_id", 2), opt_cfg.get("pad_token_id", 1)
    lm_tok = opt_tokenizer(opt_dir, bos, r)
    base_vocab = lm_tok.token_to_id("<|image|>")
    img_ids = [lm_tok.token_to_id(f"[IMG{i}]") for i in range(r)]
    newline = lm_tok.encode("\n", add_special_tokens=False).ids
    if len(newline) != 1:
        raise ConversionError(f"--opt tokenizer: a newline encodes to {newline}, expected one token")
    lm_tok.save(str(out / "tokenizer.json"))
    text_dir = sd / "tokenizer"
    text_tok = clip_tokenizer(text_dir)
    text_json = json.loads(text_tok.to_str())
    text_json["post_processor"] = None
    (out / "text_tokenizer.json").write_text(json.dumps(text_json, ensure_ascii=False))
    text_pad = text_tok.token_to_id(special_token(text_dir, "pad_token", "<|endoftext|>"))
    text_bos, text_eos = text_tok.token_to_id("<|startoftext|>"), text_tok.token_to_id("<|endoftext|>")

    lm = load.build_lm(opt_dir, gill, base_vocab, dtype)
    c = lm.config
    write("lm_embed.onnx", graphs.lm_embed(lm))
    write("lm.onnx", graphs.lm_decoder(lm))
    del lm
    gc.collect()
    lm_info = {"hidden": c.hidden_size, "heads": c.num_heads, "head_dim": c.head_dim}
    quant = quantize_lm(out, lm_info) if a.quantize_lm else None
    if quant:
        records["lm.onnx"] = export.graph_record(out / "lm.onnx", "int8")

    vision = load.build_vision(clip_dir, dtype)
    dv, image_size = vision.config.hidden_size, vision.image_size
    write("image_encoder.onnx", graphs.image_encoder(vision))
    del vision

    text = load.build_text(sd / "text_encoder", dtype)
    dc, text_len = text.config.hidden_size, text.max_positions
    write("text_encoder.onnx", graphs.text_encoder(text))
    del text

    heads = load.build_heads(gill, c.hidden_size, dv, dc, dtype)
    write("visual_prefix.onnx", graphs.visual_prefix(heads["visual_prefix"], dv))
    write("image_retrieval.onnx", graphs.projection(heads["image_retrieval"], "pooled"))
    write("text_retrieval.onnx", graphs.projection(heads["text_retrieval"], "hidden"))
    write("gill_mapper.onnx", graphs.mapper(heads["mapper"], r, c.hidden_size))
    write("decision.onnx", graphs.decision(heads["decision"]))
    if heads["num_queries"] != text_len:
        raise ConversionError(f"--gill: the mapper makes {heads['num_queries']} tokens, the text encoder takes {text_len}")

    unet = load.build_unet(sd / "unet", dtype)
    if unet.config.cross_attention_dim != dc:
        raise ConversionError(f"--sd: the UNet attends to width {unet.config.cross_attention_dim}, the text encoder gives {dc}")
    latent, latent_ch = unet.config.sample_size, unet.config.in_channels
    write("unet.onnx", graphs.unet(unet, latent, text_len))
    del unet
    vae = load.build_vae(sd / "vae", dtype)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae_scaling = vae.config.scaling_factor
    write("vae_decoder.onnx", graphs.vae_decoder(vae, latent))
    del vae
    gc.collect()

    log("hashing inputs")
    manifest = {
        "format": "gill-bundle/2",
        "name": a.name or out.name,
        "lm": {
            "embed": "lm_embed.onnx", "decoder": "lm.onnx", "tokenizer": "tokenizer.json",
            "hiddenSize": c.hidden_size, "numLayers": c.num_layers, "numHeads": c.num_heads, "headDim": c.head_dim,
            "vocabSize": c.vocab_size, "maxPositions": c.max_positions, "bosId": bos, "eosId": eos, "padId": pad,
            "newlineId": newline[0], "addBos": True, "imgTokenIds": img_ids,
            "architecture": {"family": "opt", "numLayers": c.num_layers, "hiddenSize": c.hidden_size,
                             "numHeads": c.num_heads, "ffnSize": c.ffn_size, "activation": "relu",
                             "positionOffset": 2, "layerNorm": "pre", "tiedHead": True},
            "kvCacheDtype": onnx_dtype,
        },
        "vision": {"encoder": "image_encoder.onnx", "imageSize": image_size,
                   "resize": "shortest-side-bicubic-center-crop", "mean": OPENAI_MEAN, "std": OPENAI_STD,
                   "pooledSize": dv},
        "gill": {"visualPrefix": "visual_prefix.onnx", "numVisualTokens": gill.num_visual_tokens,
                 "imageRetrieval": "image_retrieval.onnx", "textRetrieval": "text_retrieval.onnx",
                 "retrievalDim": heads["retrieval_dim"], "logitScale": round(gill.logit_scale, 6),
                 "mapper": "gill_mapper.onnx", "decision": "decision.onnx"},
        "diffusion": {"textEncoder": "text_encoder.onnx", "textTokenizer": "text_tokenizer.json",
                      "textMaxLength": text_len, "textPadId": text_pad, "textBosId": text_bos, "textEosId": text_eos,
                      "conditioningDim": dc, "unet": "unet.onnx", "vaeDecoder": "vae_decoder.onnx",
                      "latentChannels": latent_ch, "latentSize": latent, "imageSize": latent * scale,
                      "vaeScalingFactor": vae_scaling, "scheduler": dict(SD15_SCHEDULER)},
        "defaults": {"maxNewTokens": 32, "temperature": 0, "topP": 1, "retScaleFactor": 1.3, "genScaleFactor": 1.0,
                     "dialogueTemplate": "Q: {text}\nA:", "scheduler": "pndm", "steps": 50, "guidance": 7.5},
        "graphs": records,
        "decision": {"usesRetrievalScore": False},
        "provenance": {"converter": CONVERTER,
                       "inputs": input_hashes({"gill": gill_dir, "opt": opt_dir, "clip": clip_dir, "sd": sd})},
        "licences": dict(LICENCES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out / 'manifest.json'}")
    return {"manifest": manifest, "quantization": quant}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gill", required=True, help="GILL's checkpoints/gill_opt folder")
    p.add_argument("--opt", required=True, help="facebook/opt-6.7b folder")
    p.add_argument("--clip", required=True, help="openai/clip-vit-large-patch14 folder")
    p.add_argument("--sd", required=True, help="Stable Diffusion 1.5 folder (unet/, vae/, text_encoder/, tokenizer/)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--quantize-lm", choices=["int8"], default=None)
    p.add_argument("--name", default=None, help="bundle name (default: the output folder's name)")
    a = p.parse_args(argv)
    try:
        convert(a)
    except ConversionError as e:
        print(f"convert: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
