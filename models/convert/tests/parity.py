"""Proves the converter without the real weights (run by test/convert.test.ts with .venv-convert's python).

Writes shrunk random checkpoints in the real layouts (transformers' save_pretrained for OPT and CLIP, the
converter's own UNet/VAE modules for the diffusers folders, a fake GILL checkpoint with the released key
names in bfloat16), converts them, and compares ONNX Runtime against transformers' PyTorch models (OPT with
left padding and KV-cache steps, CLIP vision and text) and against reference modules (the GILLMapper as
torch.nn.Transformer, the UNet and VAE as the converter's own modules). Also checks the SD 1.5 key listings,
strict loading and the manifest. Prints one JSON report on stdout; exits 1 when a check fails.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
CONVERT = HERE.parent / "convert.py"
sys.path.insert(0, str(HERE.parent))

from gillconv import load  # noqa: E402
from gillconv.unet import UNet, UNetConfig  # noqa: E402
from gillconv.vae import LEGACY_ATTENTION, VAEConfig, VAEDecoder  # noqa: E402
from gillconv.weights import ConversionError, Source, read_pth  # noqa: E402

H, LAYERS, HEADS, FFN = 64, 2, 4, 128  # shrunk OPT (6.7B: 4096, 32, 32, 16384)
OPT_ROWS = 50272  # OPT's table, as in every OPT checkpoint
R, K = 8, 4  # [IMG] tokens, visual prefix tokens (as released)
DV, DC, RET = 48, 32, 24  # shrunk CLIP-L widths (1024, 768) and retrieval dim (256)
torch.manual_seed(0)
report: dict = {"checks": {}, "figures": {}}


def check(name: str, ok: bool, detail=None) -> None:
    report["checks"][name] = {"ok": bool(ok), **({"detail": detail} if detail is not None else {})}


def diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def session(path: Path) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- tokenizer files (synthetic vocabularies)
def write_opt_tokenizer(folder: Path) -> None:
    """A byte-level BPE with OPT's layout: <s> <pad> </s> <unk> at 0-3, 50265 entries in all."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Q: draw a red star on the left.\nA: here is a red star.", "a photo of a cat sitting on a mat",
              "What is in this image? A dog and a ball.", "the quick brown fox jumps over the lazy dog"] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    for i in range(len(vocab), 50265):
        vocab[f"<unused{i}>"] = i
    (folder / "vocab.json").write_text(json.dumps(vocab))


def write_clip_tokenizer(folder: Path) -> None:
    """CLIP's layout: byte-level BPE with `</w>` word ends, 49406 <|startoftext|>, 49407 <|endoftext|>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=alphabet, end_of_word_suffix="</w>")
    tok.train_from_iterator(["a big red star on the left", "a photo of a cat", "two dogs playing in snow"] * 20, trainer)
    tok.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    for ch in alphabet:  # CLIP's vocabulary holds every byte with and without the word end
        for t in (ch, ch + "</w>"):
            vocab.setdefault(t, len(vocab))
    for i in range(len(vocab), 49406):
        vocab[f"<unused{i}>"] = i
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 49406, 49407
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": {"__type": "AddedToken", "content": "<|endoftext|>"}, "bos_token": "<|startoftext|>",
         "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))


# ---------------------------------------------------------------- GILL's mapper as the reference code builds it
class ReferenceMapper(nn.Module):
    """GILL's GILLMapper structure: fc, nn.Transformer(d512, 4 heads, norm_first), query_embs, model."""

    def __init__(self, h: int, dc: int, queries: int):
        super().__init__()
        self.fc = nn.Linear(h, 512)
        self.tfm = nn.Transformer(batch_first=True, norm_first=True, d_model=512, num_encoder_layers=4,
                                  num_decoder_layers=4, dim_feedforward=2048, dropout=0.0, nhead=4)
        self.model = nn.Linear(512, dc)
        self.query_embs = nn.Parameter(torch.randn(1, queries, 512))

    def forward(self, x, input_embs):
        x = self.fc(x + input_embs)
        return self.model(self.tfm(x, self.query_embs.repeat(x.shape[0], 1, 1)))


def randomise_norms(m: nn.Module) -> None:
    """Norm layers start as identity; random affine parameters make the parity checks see them."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)


def save_safetensors(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


def make_inputs(root: Path) -> dict:
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, OPTConfig, OPTForCausalLM
    d = {n: root / n for n in ("opt", "clip", "sd", "gill")}
    for p in d.values():
        p.mkdir(parents=True)
    opt = OPTForCausalLM(OPTConfig(vocab_size=OPT_ROWS, hidden_size=H, num_hidden_layers=LAYERS, ffn_dim=FFN,
                                   num_attention_heads=HEADS, max_position_embeddings=128, word_embed_proj_dim=H,
                                   pad_token_id=1, bos_token_id=2, eos_token_id=2)).eval()
    randomise_norms(opt)
    opt.save_pretrained(d["opt"])
    write_opt_tokenizer(d["opt"])

    vision = dict(hidden_size=DV, intermediate_size=2 * DV, num_hidden_layers=2, num_attention_heads=4,
                  image_size=224, patch_size=14, projection_dim=16)
    text = dict(vocab_size=49408, hidden_size=DC, intermediate_size=2 * DC, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, projection_dim=16, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    clip = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).eval()
    randomise_norms(clip)
    clip.save_pretrained(d["clip"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**text)).eval()
    randomise_norms(text_encoder)
    text_encoder.save_pretrained(d["sd"] / "text_encoder")
    (d["sd"] / "tokenizer").mkdir()
    write_clip_tokenizer(d["sd"] / "tokenizer")

    unet_cfg = {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
                "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "block_out_channels": [32, 64, 64, 64],
                "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": DC, "norm_num_groups": 32,
                "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "use_linear_projection": False}
    unet = UNet(UNetConfig.from_diffusers(unet_cfg))
    randomise_norms(unet)
    (d["sd"] / "unet").mkdir()
    (d["sd"] / "unet" / "config.json").write_text(json.dumps(unet_cfg))
    save_safetensors(unet.state_dict(), d["sd"] / "unet" / "diffusion_pytorch_model.safetensors")
    vae_cfg = {"_class_name": "AutoencoderKL", "block_out_channels": [32, 32, 64, 64], "layers_per_block": 2,
               "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": 0.18215,
               "up_block_types": ["UpDecoderBlock2D"] * 4}
    vae = VAEDecoder(VAEConfig.from_diffusers(vae_cfg))
    randomise_norms(vae)
    sd = {}
    for k, v in vae.state_dict().items():  # the older diffusers names, as in early SD 1.5 files
        for new, old in LEGACY_ATTENTION.items():
            k = k.replace(f"attentions.0.{new}", f"attentions.0.{old}")
        sd[k] = v
    sd["encoder.conv_in.weight"] = torch.randn(32, 3, 3, 3)  # the encoder half, which the bundle leaves out
    sd["quant_conv.weight"] = torch.randn(8, 8, 1, 1)
    (d["sd"] / "vae").mkdir()
    (d["sd"] / "vae" / "config.json").write_text(json.dumps(vae_cfg))
    save_safetensors(sd, d["sd"] / "vae" / "diffusion_pytorch_model.safetensors")

    # GILL's learned layers with the released names, in bfloat16, under {'state_dict': {'model.…'}}.
    mapper = ReferenceMapper(H, DC, 77).eval()
    randomise_norms(mapper)
    layers = {"input_embeddings.weight": torch.randn(R, H) * 0.02, "logit_scale": torch.tensor(2.6592),
              "visual_embeddings.weight": torch.randn(K * H, DV) * 0.05, "visual_embeddings.bias": torch.randn(K * H) * 0.01,
              "visual_fc.weight": torch.randn(RET, DV) * 0.05, "visual_fc.bias": torch.randn(RET) * 0.01,
              "ret_text_hidden_fcs.0.model.weight": torch.randn(RET, H) * 0.05,
              "ret_text_hidden_fcs.0.model.bias": torch.randn(RET) * 0.01,
              **{f"gen_text_hidden_fcs.0.{k}": v for k, v in mapper.state_dict().items()}}
    ckpt = {"state_dict": {f"model.{k}": v.to(torch.bfloat16) for k, v in layers.items()}, "epoch": 1}
    torch.save(ckpt, d["gill"] / "pretrained_ckpt.pth.tar")
    decision = nn.Sequential(nn.Dropout(0.5), nn.Linear(H, 2))
    torch.save(collections.OrderedDict(decision.state_dict()), d["gill"] / "decision_model.pth.tar")
    (d["gill"] / "model_args.json").write_text(json.dumps({"num_tokens": R, "n_visual_tokens": K, "ret_emb_dim": RET}))
    # The references use the weights as stored (bfloat16-rounded).
    bf = {k: v.to(torch.bfloat16).float() for k, v in layers.items()}
    mapper.load_state_dict({k[len("gen_text_hidden_fcs.0."):]: v for k, v in bf.items() if k.startswith("gen_text")})
    return {"dirs": d, "gill": bf, "mapper": mapper, "decision": decision.eval(), "unet": unet.eval(), "vae": vae.eval()}


def run_convert(d: dict, out: Path, *extra: str, python: str = sys.executable, path: str | None = None):
    env = {**os.environ, **({"PYTHONPATH": path} if path else {})}
    return subprocess.run([python, str(CONVERT), "--gill", str(d["gill"]), "--opt", str(d["opt"]),
                           "--clip", str(d["clip"]), "--sd", str(d["sd"]), "--out", str(out), *extra],
                          capture_output=True, text=True, env=env)


def torch_version(python: str, path: str | None) -> str:
    env = {**os.environ, **({"PYTHONPATH": path} if path else {})}
    return subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                          env=env).stdout.strip()


# ---------------------------------------------------------------- parity
def lm_parity(d: dict, gill: dict, out: Path) -> None:
    from transformers import OPTForCausalLM
    ref = OPTForCausalLM.from_pretrained(d["opt"]).eval()
    ref.resize_token_embeddings(OPT_ROWS + 2)
    with torch.no_grad():
        ref.get_input_embeddings().weight[-R:] = gill["input_embeddings.weight"]
    embed, lm = session(out / "lm_embed.onnx"), session(out / "lm.onnx")
    ids = torch.tensor([[2, 40, 41, 42, 43, 50266], [1, 1, 2, 44, 45, 50273]])  # row 2 is left-padded
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    e = embed.run(None, {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        ref_e = ref.get_input_embeddings()(ids)
    report["figures"]["lm_embed_max_abs"] = diff(e, ref_e)
    empty = {f"past_key_values.{i}.{kv}": np.zeros((2, HEADS, 0, H // HEADS), np.float32)
             for i in range(LAYERS) for kv in ("key", "value")}
    out_names = [o.name for o in lm.get_outputs()]
    res = dict(zip(out_names, lm.run(None, {"inputs_embeds": e, "attention_mask": mask.numpy(), **empty})))
    with torch.no_grad():
        r = ref(inputs_embeds=ref_e, attention_mask=mask, output_hidden_states=True, use_cache=True)
    valid = mask.bool().numpy()
    errs = {"prompt_logits": diff(res["logits"][valid], r.logits.numpy()[valid]),
            "prompt_hidden": diff(res["hidden_states"][valid], r.hidden_states[-1].numpy()[valid])}
    past, cache = res, r.past_key_values
    for step, tok in enumerate([[46, 47], [48, 50267]]):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        t = torch.tensor(tok)[:, None]
        feeds = {"inputs_embeds": embed.run(None, {"input_ids": t.numpy()})[0], "attention_mask": mask.numpy()}
        feeds.update({f"past_key_values.{i}.{kv}": past[f"present.{i}.{kv}"] for i in range(LAYERS) for kv in ("key", "value")})
        past = dict(zip(out_names, lm.run(None, feeds)))
        with torch.no_grad():
            r = ref(input_ids=t, attention_mask=mask, past_key_values=cache, output_hidden_states=True, use_cache=True)
        cache = r.past_key_values
        errs[f"step{step + 1}_logits"] = diff(past["logits"], r.logits)
        errs[f"step{step + 1}_hidden"] = diff(past["hidden_states"], r.hidden_states[-1])
    report["figures"].update({f"lm_{k}_max_abs": v for k, v in errs.items()})
    check("lm logits and hidden states within 1e-4 (left padding, 2 KV-cache steps)",
          max(errs.values()) <= 1e-4 and report["figures"]["lm_embed_max_abs"] <= 1e-6, errs)
    check("lm present grows by one position per step", past["present.0.key"].shape == (2, HEADS, 8, H // HEADS),
          list(past["present.0.key"].shape))


def clip_parity(d: dict, out: Path) -> None:
    from transformers import CLIPModel, CLIPTextModel
    vision = CLIPModel.from_pretrained(d["clip"]).vision_model.eval()
    pix = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = vision(pixel_values=pix).pooler_output
    got = session(out / "image_encoder.onnx").run(None, {"pixel_values": pix.numpy()})[0]
    report["figures"]["clip_pooler_output_max_abs"] = diff(got, ref)
    text = CLIPTextModel.from_pretrained(d["sd"] / "text_encoder").eval()
    ids = torch.tensor([[49406, 320, 1000, 49407] + [49407] * 73, [49406, 49407] + [49407] * 75])
    with torch.no_grad():
        ref_t = text(input_ids=ids).last_hidden_state
    got_t = session(out / "text_encoder.onnx").run(None, {"input_ids": ids.numpy()})[0]
    report["figures"]["clip_text_last_hidden_state_max_abs"] = diff(got_t, ref_t)
    check("CLIP pooler_output and text last_hidden_state within 1e-4",
          max(report["figures"]["clip_pooler_output_max_abs"], report["figures"]["clip_text_last_hidden_state_max_abs"]) <= 1e-4)


def heads_parity(made: dict, out: Path) -> None:
    g = made["gill"]
    pooled, hidden = torch.randn(3, DV), torch.randn(3, H)
    lin = lambda x, p: x @ g[f"{p}.weight"].T + g[f"{p}.bias"]  # noqa: E731
    errs = {
        "visual_prefix": diff(session(out / "visual_prefix.onnx").run(None, {"pooled": pooled.numpy()})[0],
                              lin(pooled, "visual_embeddings").reshape(3, K, H)),
        "image_retrieval": diff(session(out / "image_retrieval.onnx").run(None, {"pooled": pooled.numpy()})[0],
                                lin(pooled, "visual_fc")),
        "text_retrieval": diff(session(out / "text_retrieval.onnx").run(None, {"hidden": hidden.numpy()})[0],
                               lin(hidden, "ret_text_hidden_fcs.0.model")),
    }
    with torch.no_grad():
        errs["decision"] = diff(session(out / "decision.onnx").run(None, {"hidden": hidden.numpy()})[0],
                                made["decision"](hidden))
        hid, emb = torch.randn(2, R, H), torch.randn(2, R, H)
        errs["gill_mapper"] = diff(session(out / "gill_mapper.onnx").run(None, {"hidden": hid.numpy(), "token_embeds": emb.numpy()})[0],
                                   made["mapper"](hid, emb))
    report["figures"].update({f"{k}_max_abs": v for k, v in errs.items()})
    check("GILL heads (prefix, retrieval, decision, mapper vs nn.Transformer) within 1e-4", max(errs.values()) <= 1e-4, errs)


def diffusion_parity(made: dict, out: Path) -> None:
    sample, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 1.0]), torch.randn(2, 77, DC)
    with torch.no_grad():
        ref = made["unet"](sample, t, ctx)
        ref_img = made["vae"](sample[:1])
    got = session(out / "unet.onnx").run(None, {"sample": sample.numpy(), "timestep": t.numpy(),
                                                "encoder_hidden_states": ctx.numpy()})[0]
    img = session(out / "vae_decoder.onnx").run(None, {"latent": sample[:1].numpy()})[0]
    report["figures"]["unet_max_abs"] = diff(got, ref)
    report["figures"]["vae_decoder_max_abs"] = diff(img, ref_img)
    check("UNet and VAE decoder graphs match their torch modules within 1e-4",
          max(report["figures"]["unet_max_abs"], report["figures"]["vae_decoder_max_abs"]) <= 1e-4)
    check("VAE decoder output is [1,3,64,64]", list(img.shape) == [1, 3, 64, 64], list(img.shape))


def tokenizer_checks(d: dict, out: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer, GPT2Tokenizer
    mine = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = [mine.encode(f"[IMG{i}]", add_special_tokens=False).ids for i in range(R)]
    check("[IMG0..7] encode to 50266..50273 and <|image|> to 50265",
          ids == [[50266 + i] for i in range(R)] and mine.token_to_id("<|image|>") == 50265, ids)
    ref = GPT2Tokenizer(str(d["opt"] / "vocab.json"), str(d["opt"] / "merges.txt"))
    texts = ["Q: draw a red star on the left.\nA: here", "a cat  sitting\n\non a mat!", "What's in this image?"]
    same = [mine.encode(s, add_special_tokens=False).ids == ref.encode(s, add_special_tokens=False) for s in texts]
    check("LM tokenizer agrees with transformers' GPT2Tokenizer on the same vocab/merges", all(same), same)
    check("LM tokenizer prepends BOS (2) with special tokens", mine.encode("a cat").ids[0] == 2)
    clip_mine = Tokenizer.from_file(str(out / "text_tokenizer.json"))
    clip_ref = CLIPTokenizer(str(d["sd"] / "tokenizer" / "vocab.json"), str(d["sd"] / "tokenizer" / "merges.txt"))
    texts = ["A big red star on the LEFT", "a photo   of two cats!", "snow, dogs & 3 balls"]
    got = [clip_mine.encode(s).ids for s in texts]
    want = [clip_ref.encode(s, add_special_tokens=False) for s in texts]
    check("text tokenizer agrees with transformers' CLIPTokenizer and adds no special tokens", got == want,
          {"got": got, "want": want} if got != want else None)


def manifest_checks(out: Path) -> None:
    from gillconv.export import sha256
    m = json.loads((out / "manifest.json").read_text())
    bad = []
    for file, rec in m["graphs"].items():
        if sha256(out / file) != rec["sha256"] or (out / file).stat().st_size != rec["bytes"]:
            bad.append(file)
        for ext in rec["externalData"]:
            if sha256(out / ext["file"]) != ext["sha256"] or ext["file"] != f"{file}.data":
                bad.append(ext["file"])
    external = sorted(f for f, r in m["graphs"].items() if r["externalData"])
    check("manifest graphs: sizes and sha256 match, one external data file per backbone graph",
          not bad and external == sorted(["lm_embed.onnx", "lm.onnx", "image_encoder.onnx", "text_encoder.onnx",
                                          "unet.onnx", "vae_decoder.onnx"]), {"bad": bad, "external": external})
    lm = m["lm"]
    check("manifest lm section", lm["vocabSize"] == 50274 and lm["imgTokenIds"] == list(range(50266, 50274))
          and lm["architecture"] == {"family": "opt", "numLayers": LAYERS, "hiddenSize": H, "numHeads": HEADS,
                                     "ffnSize": FFN, "activation": "relu", "positionOffset": 2, "layerNorm": "pre",
                                     "tiedHead": True} and lm["kvCacheDtype"] == "float32"
          and (lm["bosId"], lm["eosId"], lm["padId"]) == (2, 2, 1), lm)
    dif = m["diffusion"]
    check("manifest diffusion and defaults", (dif["textPadId"], dif["textBosId"], dif["textEosId"]) == (49407, 49406, 49407)
          and dif["scheduler"]["stepsOffset"] == 1 and dif["scheduler"]["betaSchedule"] == "scaled_linear"
          and (dif["latentSize"], dif["imageSize"], dif["vaeScalingFactor"]) == (8, 64, 0.18215)
          and m["defaults"]["scheduler"] == "pndm" and m["defaults"]["steps"] == 50 and m["defaults"]["guidance"] == 7.5
          and m["vision"]["mean"] == [0.48145466, 0.4578275, 0.40821073] and m["decision"] == {"usesRetrievalScore": False}
          and m["provenance"]["converter"] == "gill-convert/1" and m["format"] == "gill-bundle/2")
    check("provenance hashes every input file", "gill/pretrained_ckpt.pth.tar" in m["provenance"]["inputs"]
          and "opt/model.safetensors" in m["provenance"]["inputs"], sorted(m["provenance"]["inputs"])[:6])


def fp16_checks(d: dict, out32: Path, out16: Path) -> None:
    """The fp16 bundle (torch 2.x): float16 weights and KV cache, float32 graph inputs/outputs otherwise."""
    m = json.loads((out16 / "manifest.json").read_text())
    dtypes = {f: r["dtype"] for f, r in m["graphs"].items()}
    check("fp16 manifest: every graph float16, KV cache float16",
          set(dtypes.values()) == {"float16"} and m["lm"]["kvCacheDtype"] == "float16", dtypes)
    lm16, lm32 = session(out16 / "lm.onnx"), session(out32 / "lm.onnx")
    kinds = {i.name: i.type for i in lm16.get_inputs()}
    e = np.random.default_rng(0).standard_normal((1, 5, H)).astype(np.float32) * 0.05
    feeds = {"inputs_embeds": e, "attention_mask": np.ones((1, 5), np.int64)}
    for half, sess in ((True, lm16), (False, lm32)):
        for i in range(LAYERS):
            for kv in ("key", "value"):
                feeds_kv = np.zeros((1, HEADS, 0, H // HEADS), np.float16 if half else np.float32)
                feeds[f"past_key_values.{i}.{kv}"] = feeds_kv
        res = sess.run(["hidden_states", "present.0.key"], feeds)
        if half:
            h16, k16 = res
        else:
            h32 = res[0]
    err = diff(h16, h32)
    report["figures"]["lm_fp16_vs_fp32_hidden_max_abs"] = err
    check("fp16 LM runs on ONNX Runtime (CPU) with a float16 KV cache, hidden states near fp32",
          kinds["inputs_embeds"] == "tensor(float)" and kinds["past_key_values.0.key"] == "tensor(float16)"
          and k16.dtype == np.float16 and err < 0.05, {"kinds": kinds, "err": err})


def int8_checks(out32: Path, work: Path) -> None:
    """--quantize-lm int8 on a copy of the fp32 LM graph."""
    sys.path.insert(0, str(HERE.parent))
    import convert
    copy = work / "int8"
    copy.mkdir()
    for f in ("lm.onnx", "lm.onnx.data"):
        shutil.copy(out32 / f, copy / f)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the report only
        q = convert.quantize_lm(copy, {"hidden": H, "heads": HEADS, "head_dim": H // HEADS})
    report["figures"]["lm_int8_hidden_max_abs"] = q["maxAbsError"]
    report["figures"]["lm_int8_hidden_relative_l2"] = q["relativeL2Error"]
    types = {i.name: i.type for i in session(copy / "lm.onnx").get_inputs()}
    check("int8 LM keeps the graph's interface, its error is measured", types["inputs_embeds"] == "tensor(float)"
          and sorted(os.listdir(copy)) == ["lm.onnx", "lm.onnx.data"] and q["relativeL2Error"] < 0.1, q)


# ---------------------------------------------------------------- SD 1.5 listings and strict loading
def read_listing(name: str) -> dict:
    rows = (ln.split(" ") for ln in (HERE.parent / "fixtures" / name).read_text().splitlines())
    return {k: tuple(int(x) for x in s.split(",")) for k, s in rows}


def meta_source(label: str, shapes: dict) -> Source:
    return Source(label, {k: (lambda s=s: torch.empty(s, device="meta")) for k, s in shapes.items()}, dict(shapes))


def sd15_checks() -> None:
    from make_fixtures import SD15_UNET, SD15_VAE
    unet_keys, vae_keys = read_listing("sd15_unet_keys.txt"), read_listing("sd15_vae_decoder_keys.txt")
    total = lambda keys: sum(int(np.prod(s)) for s in keys.values())  # noqa: E731
    report["figures"]["sd15_unet_params"], report["figures"]["sd15_vae_decoder_params"] = total(unet_keys), total(vae_keys)
    check("SD 1.5 listings hold the published totals (UNet 859,520,964; VAE decoder 49,490,199)",
          total(unet_keys) == 859_520_964 and total(vae_keys) == 49_490_199)
    meta = torch.device("meta")
    load.bind_unet(UNet(SD15_UNET, meta), src := meta_source("unet", unet_keys), torch.float16)
    check("the converter consumes exactly the SD 1.5 UNet keys with their shapes", src.consumed == set(unet_keys))
    vae_src = meta_source("vae", {**vae_keys, "encoder.conv_in.weight": (128, 3, 3, 3), "quant_conv.weight": (8, 8, 1, 1)})
    load.bind_vae(VAEDecoder(SD15_VAE, meta), vae_src, torch.float16)
    check("the converter consumes exactly the SD 1.5 VAE decoder keys (encoder half ignored)",
          set(vae_keys) <= vae_src.consumed)
    cases = {"missing": {k: v for k, v in unet_keys.items() if k != "mid_block.attentions.0.proj_in.bias"},
             "unexpected": {**unet_keys, "down_blocks.0.attentions.0.extra.weight": (1,)},
             "misshaped": {**unet_keys, "conv_in.weight": (320, 9, 3, 3)}}
    want = {"missing": "missing mid_block.attentions.0.proj_in.bias", "unexpected": "down_blocks.0.attentions.0.extra.weight",
            "misshaped": "conv_in.weight has shape [320, 9, 3, 3], expected [320, 4, 3, 3]"}
    for case, keys in cases.items():
        try:
            load.bind_unet(UNet(SD15_UNET, meta), meta_source("--sd unet", keys), torch.float16)
            msg = None
        except ConversionError as e:
            msg = str(e)
        check(f"strict UNet load: a {case} key is an error naming it", msg is not None and want[case] in msg, msg)


def decision_fixture_checks() -> None:
    src = read_pth(HERE.parent / "fixtures" / "decision_model.pth.tar", "decision fixture")
    head = load.CastLinear(4096, 2, device=torch.device("meta"))
    load.bind(head, src, "1.")
    src.check_all_used()
    check("decision_model.pth.tar structure (OrderedDict 1.weight [2,4096], 1.bias [2]) binds strictly",
          src.shapes == {"1.weight": (2, 4096), "1.bias": (2,)})


def strict_gill_checks(made: dict, root: Path) -> None:
    base = torch.load(made["dirs"]["gill"] / "pretrained_ckpt.pth.tar")["state_dict"]
    variants = {"missing": ({k: v for k, v in base.items() if k != "model.visual_fc.bias"}, "missing visual_fc.bias"),
                "unexpected": ({**base, "model.lm.extra": torch.zeros(1)}, "unexpected keys (not part of the architecture): lm.extra"),
                "misshaped": ({**base, "model.visual_fc.weight": torch.zeros(RET, DV + 1)},
                              f"visual_fc.weight has shape [{RET}, {DV + 1}], expected [{RET}, {DV}]"),
                "module prefix": ({f"module.{k}": v for k, v in base.items()}, None)}
    for case, (sd, want) in variants.items():
        folder = root / f"gill-{case.replace(' ', '-')}"
        folder.mkdir()
        torch.save({"state_dict": sd}, folder / "pretrained_ckpt.pth.tar")
        (folder / "decision_model.pth.tar").write_bytes((made["dirs"]["gill"] / "decision_model.pth.tar").read_bytes())
        try:
            load.build_heads(load.Gill.read(folder, H), H, DV, DC, torch.float32)
            msg = None
        except ConversionError as e:
            msg = str(e)
        ok = msg is None if want is None else (msg is not None and want in msg)
        check(f"strict GILL load: {case}", ok, msg)


def main() -> int:
    """argv: [fp32 bundle copy folder [fp16 bundle copy folder]]. CONVERT_PYTHON / CONVERT_PYTHONPATH: the interpreter of the fp32 conversion
    (e.g. Debian's /usr/bin/python3 with torch 1.13); the fp16 conversion runs on this interpreter (torch 2.x)."""
    python, path = os.environ.get("CONVERT_PYTHON", sys.executable), os.environ.get("CONVERT_PYTHONPATH")
    report["figures"]["fp32_conversion_torch"] = torch_version(python, path)
    report["figures"]["fp16_conversion_torch"] = torch.__version__
    with tempfile.TemporaryDirectory(prefix="gill-convert-") as tmp:
        root = Path(tmp)
        made = make_inputs(root)
        out, out16 = root / "bundle", root / "bundle16"
        proc = run_convert(made["dirs"], out, "--dtype", "fp32", python=python, path=path)
        check(f"convert.py --dtype fp32 exits 0 (torch {report['figures']['fp32_conversion_torch']})",
              proc.returncode == 0, proc.stderr[-3000:] if proc.returncode else None)
        if proc.returncode == 0:
            lm_parity(made["dirs"], made["gill"], out)
            clip_parity(made["dirs"], out)
            heads_parity(made, out)
            diffusion_parity(made, out)
            tokenizer_checks(made["dirs"], out)
            manifest_checks(out)
            int8_checks(out, root)
        proc16 = run_convert(made["dirs"], out16, "--dtype", "fp16")
        check(f"convert.py --dtype fp16 exits 0 (torch {torch.__version__})", proc16.returncode == 0,
              proc16.stderr[-3000:] if proc16.returncode else None)
        if proc.returncode == 0 and proc16.returncode == 0:
            fp16_checks(made["dirs"], out, out16)
            for bundle, keep in zip((out, out16), sys.argv[1:]):  # kept for the engine's end-to-end tests
                shutil.copytree(bundle, keep, dirs_exist_ok=True)
        sd15_checks()
        decision_fixture_checks()
        strict_gill_checks(made, root)
    print(json.dumps(report, indent=1))
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
