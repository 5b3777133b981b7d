"""Writes a bundle of randomly initialised, very small ONNX graphs in the models/README.md format.

The engine tests use it to exercise loading, validation and the inference plumbing without depending on
the trained tiny bundle. Usage: /usr/bin/python3 test/support/random_bundle.py OUT_DIR [SEED]
[--decision-inputs hidden[,NAME]] (default hidden; NAME, e.g. retrieval_score, adds a [B,1] input to decision.onnx)
[--format 1|2] (default 1; 2 writes a gill-bundle/2 manifest whose LM, embedding, image encoder, mapper, text
encoder, UNet and VAE graphs are float16 (weights and inputs/outputs, so the KV cache is float16 too), with
the LM's, embedding's and UNet's weights in external data files; a seed gives the same weights either way).
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

# GPT-2's byte table, shared with the training code's tokenizer.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'models', 'training'))
from gill_tiny.tokenizer import _bytes_to_unicode as bytes_to_unicode  # noqa: E402

H, LAYERS, HEADS, HEAD_DIM = 32, 2, 2, 16
DV, S, K, R = 24, 16, 2, 16
L, DC, C, LS = 8, 12, 4, 4
SPECIALS = ["<pad>", "<s>", "</s>"]
N_IMG = 8




def tokenizer_json():
    """Byte-level BPE without merges: one token per byte, plus the specials and [IMG0..7] as added tokens."""
    b2u = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
    for i in range(N_IMG):
        tok = f"[IMG{i}]"
        vocab[tok] = len(vocab)
        added.append({"id": vocab[tok], "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": False})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": []},
    }, vocab, b2u


class Embed(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, H) * 0.5)

    def forward(self, input_ids):
        return self.weight[input_ids]


class LM(nn.Module):
    """Decoder-only transformer with learned positions, explicit KV cache and a head tied to Embed."""

    def __init__(self, embed, max_pos):
        super().__init__()
        self.embed = embed
        self.pos = nn.Parameter(torch.randn(max_pos, H) * 0.1)
        self.qkv = nn.ModuleList([nn.Linear(H, 3 * H) for _ in range(LAYERS)])
        self.out = nn.ModuleList([nn.Linear(H, H) for _ in range(LAYERS)])
        self.mlp = nn.ModuleList([nn.Sequential(nn.Linear(H, 2 * H), nn.ReLU(), nn.Linear(2 * H, H)) for _ in range(LAYERS)])
        self.ln1 = nn.ModuleList([nn.LayerNorm(H) for _ in range(LAYERS)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(H) for _ in range(LAYERS)])
        self.ln_f = nn.LayerNorm(H)

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        b, t, _ = inputs_embeds.shape
        x = inputs_embeds + self.pos[position_ids]
        presents = []
        p = past[0].shape[2]
        i = torch.arange(t).unsqueeze(1) + p
        j = torch.arange(p + t).unsqueeze(0)
        keep = (j <= i).unsqueeze(0).unsqueeze(0) & (attention_mask[:, None, None, :] > 0)
        for layer in range(LAYERS):
            q, k, v = self.qkv[layer](self.ln1[layer](x)).split(H, dim=-1)
            q, k, v = (z.view(b, t, HEADS, HEAD_DIM).transpose(1, 2) for z in (q, k, v))
            k = torch.cat([past[2 * layer], k], dim=2)
            v = torch.cat([past[2 * layer + 1], v], dim=2)
            presents += [k, v]
            att = (q @ k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
            att = att.masked_fill(~keep, -1e9).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, H)
            x = x + self.out[layer](y)
            x = x + self.mlp[layer](self.ln2[layer](x))
        hidden = self.ln_f(x)
        logits = hidden @ self.embed.weight.t()
        return (logits, hidden, *presents)


class Mapper(nn.Module):
    def __init__(self, r):
        super().__init__()
        self.fc = nn.Linear(H, 16)
        self.queries = nn.Parameter(torch.randn(L, 16))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.proj = nn.Linear(16, DC)

    def forward(self, hidden, token_embeds):
        src = self.fc(hidden + token_embeds)
        q = self.queries.unsqueeze(0).expand(src.shape[0], -1, -1)
        y, _ = self.attn(q, src, src)
        return self.proj(y)


class VisionEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, DV, 4, stride=4)
        self.ln = nn.LayerNorm(DV)

    def forward(self, pixel_values):
        return self.ln(self.conv(pixel_values).mean(dim=(2, 3)))


class Prefix(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(DV, K * H)

    def forward(self, pooled):
        return self.fc(pooled).view(-1, K, H)


class ScoredDecision(nn.Module):
    """The hidden-state Linear(H, 2) plus a second [B,1] input that moves the retrieve-minus-generate margin by
    20 per unit (0 at 0.5), far more than the random Linear does, so tests can see whether it is fed."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear
        self.register_buffer("push", torch.tensor([-10.0, 10.0]))

    def forward(self, hidden, score):
        return self.linear(hidden) + (score - 0.5) * self.push


class TextEncoder(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.emb = nn.Embedding(vocab, DC)
        self.pos = nn.Parameter(torch.randn(L, DC) * 0.1)
        self.ln = nn.LayerNorm(DC)

    def forward(self, input_ids):
        x = self.emb(input_ids) + self.pos
        return self.ln(x + x.mean(dim=1, keepdim=True))


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.t = nn.Linear(1, C)
        self.c = nn.Linear(DC, C)

    def forward(self, sample, timestep, encoder_hidden_states):
        t = self.t(timestep.float().unsqueeze(-1) / 1000.0)
        c = self.c(encoder_hidden_states.mean(dim=1))
        return self.conv(sample) + (t + c)[:, :, None, None]


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, 3, 3, padding=1)

    def forward(self, latent):
        return torch.tanh(nn.functional.interpolate(self.conv(latent), scale_factor=S // LS, mode="nearest"))


def export(module, args, path, inputs, outputs, dynamic):
    module.eval()
    torch.onnx.export(module, args, path, input_names=inputs, output_names=outputs, dynamic_axes=dynamic, opset_version=14)


FLOAT16_GRAPHS = ["lm_embed.onnx", "lm.onnx", "image_encoder.onnx", "gill_mapper.onnx", "text_encoder.onnx",
                  "unet.onnx", "vae_decoder.onnx"]
EXTERNAL_DATA_GRAPHS = ["lm_embed.onnx", "lm.onnx", "unet.onnx"]


def to_float16(model):
    """Stores a float32 graph's weights as float16 and makes its float inputs and outputs float16, with Cast nodes
    at the edges so the ops inside still compute in float32 (ONNX Runtime's CPU kernels are float32)."""
    g = model.graph
    first, last = [], []
    for init in [i for i in g.initializer if i.data_type == TensorProto.FLOAT]:
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        g.initializer.remove(init)
        g.initializer.append(half)
        first.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))

    def rename(old, new):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new

    for value in g.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            rename(value.name, value.name + "_fp32")
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
            first.append(helper.make_node("Cast", [value.name], [value.name + "_fp32"], to=TensorProto.FLOAT))
    for value in g.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            rename(value.name, value.name + "_fp32")
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
            last.append(helper.make_node("Cast", [value.name + "_fp32"], [value.name], to=TensorProto.FLOAT16))
    nodes = first + list(g.node) + last
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path):
    return {"bytes": os.path.getsize(path), "sha256": sha256_of(path)}


def make_v2(out, manifest, seed, uses_score):
    """Rewrites the exported graphs as a gill-bundle/2 and returns its manifest."""
    graphs = {}
    for name in sorted({v for section in ("lm", "vision", "gill", "diffusion") for k, v in manifest[section].items()
                        if isinstance(v, str) and v.endswith(".onnx")}):
        path = os.path.join(out, name)
        model = onnx.load(path)
        dtype = "float32"
        if name in FLOAT16_GRAPHS:
            model = to_float16(model)
            dtype = "float16"
        external = []
        if name in EXTERNAL_DATA_GRAPHS:
            onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=name + ".data", size_threshold=0)
            external = [{"file": name + ".data", **file_entry(path + ".data")}]
        else:
            onnx.save_model(model, path)
        graphs[name] = {"dtype": dtype, **file_entry(path), "externalData": external}
    lm = manifest["lm"]
    return {
        **manifest,
        "format": "gill-bundle/2",
        "lm": {**lm, "architecture": {"family": "gill-tiny", "numLayers": LAYERS, "hiddenSize": H, "numHeads": HEADS,
                                      "ffnSize": 2 * H, "activation": "relu", "positionOffset": 0, "layerNorm": "pre",
                                      "tiedHead": True},
               "kvCacheDtype": "float16"},
        "defaults": {**manifest["defaults"], "scheduler": "dpmsolver++"},
        "graphs": graphs,
        "decision": {"usesRetrievalScore": uses_score},
        "provenance": {"converter": "test/support/random_bundle.py",
                       "inputs": {"seed": hashlib.sha256(str(seed).encode()).hexdigest()}},
        "licences": {"random weights": "CC0-1.0"},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("seed", nargs="?", type=int, default=0)
    parser.add_argument("--decision-inputs", default="hidden")
    parser.add_argument("--format", choices=["1", "2"], default="1")
    args = parser.parse_args()
    decision_inputs = args.decision_inputs.split(",")
    if decision_inputs[0] != "hidden" or len(decision_inputs) > 2:
        parser.error("--decision-inputs is hidden or hidden,NAME")
    out = args.out
    torch.manual_seed(args.seed)
    os.makedirs(out, exist_ok=True)
    tok, vocab, b2u = tokenizer_json()
    v = len(vocab)
    max_pos = 128
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(out, "text_tokenizer.json"), "w") as f:
        json.dump(tok, f)
    img_ids = [vocab[f"[IMG{i}]"] for i in range(N_IMG)]
    embed = Embed(v)
    with torch.no_grad():
        export(embed, (torch.zeros(1, 3, dtype=torch.long),), f"{out}/lm_embed.onnx", ["input_ids"], ["inputs_embeds"],
               {"input_ids": {0: "B", 1: "T"}, "inputs_embeds": {0: "B", 1: "T"}})
        lm = LM(embed, max_pos)
        past_names = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
        present_names = [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
        past = tuple(torch.randn(1, HEADS, 2, HEAD_DIM) for _ in past_names)
        dyn = {"inputs_embeds": {0: "B", 1: "T"}, "attention_mask": {0: "B", 1: "PT"}, "position_ids": {0: "B", 1: "T"},
               "logits": {0: "B", 1: "T"}, "hidden_states": {0: "B", 1: "T"}}
        dyn.update({n: {0: "B", 2: "P"} for n in past_names})
        dyn.update({n: {0: "B", 2: "PT"} for n in present_names})
        export(lm, (torch.randn(1, 3, H), torch.ones(1, 5, dtype=torch.long), torch.arange(2, 5).unsqueeze(0), *past),
               f"{out}/lm.onnx", ["inputs_embeds", "attention_mask", "position_ids", *past_names],
               ["logits", "hidden_states", *present_names], dyn)
        export(VisionEncoder(), (torch.randn(1, 3, S, S),), f"{out}/image_encoder.onnx", ["pixel_values"], ["pooler_output"],
               {"pixel_values": {0: "B"}, "pooler_output": {0: "B"}})
        export(Prefix(), (torch.randn(1, DV),), f"{out}/visual_prefix.onnx", ["pooled"], ["prefix"],
               {"pooled": {0: "B"}, "prefix": {0: "B"}})
        export(nn.Linear(DV, R), (torch.randn(1, DV),), f"{out}/image_retrieval.onnx", ["pooled"], ["embedding"],
               {"pooled": {0: "B"}, "embedding": {0: "B"}})
        export(nn.Linear(H, R), (torch.randn(1, H),), f"{out}/text_retrieval.onnx", ["hidden"], ["embedding"],
               {"hidden": {0: "B"}, "embedding": {0: "B"}})
        export(Mapper(N_IMG), (torch.randn(1, N_IMG, H), torch.randn(1, N_IMG, H)), f"{out}/gill_mapper.onnx",
               ["hidden", "token_embeds"], ["cond"], {"hidden": {0: "B"}, "token_embeds": {0: "B"}, "cond": {0: "B"}})
        # The same random Linear either way, so a seed gives the same graphs with or without the score.
        decision = nn.Linear(H, 2)
        if len(decision_inputs) == 1:
            export(decision, (torch.randn(1, H),), f"{out}/decision.onnx", ["hidden"], ["logits"],
                   {"hidden": {0: "B"}, "logits": {0: "B"}})
        else:
            export(ScoredDecision(decision), (torch.randn(1, H), torch.full((1, 1), 0.5)), f"{out}/decision.onnx",
                   decision_inputs, ["logits"], {name: {0: "B"} for name in [*decision_inputs, "logits"]})
        export(TextEncoder(v), (torch.zeros(1, L, dtype=torch.long),), f"{out}/text_encoder.onnx", ["input_ids"],
               ["last_hidden_state"], {"input_ids": {0: "B"}, "last_hidden_state": {0: "B"}})
        export(UNet(), (torch.randn(2, C, LS, LS), torch.tensor([10, 10]), torch.randn(2, L, DC)), f"{out}/unet.onnx",
               ["sample", "timestep", "encoder_hidden_states"], ["noise_pred"],
               {"sample": {0: "B"}, "timestep": {0: "B"}, "encoder_hidden_states": {0: "B"}, "noise_pred": {0: "B"}})
        export(VAE(), (torch.randn(1, C, LS, LS),), f"{out}/vae_decoder.onnx", ["latent"], ["image"],
               {"latent": {0: "B"}, "image": {0: "B"}})

    manifest = {
        "format": "gill-bundle/1",
        "name": "random-test",
        "lm": {"embed": "lm_embed.onnx", "decoder": "lm.onnx", "tokenizer": "tokenizer.json", "hiddenSize": H,
               "numLayers": LAYERS, "numHeads": HEADS, "headDim": HEAD_DIM, "vocabSize": v, "maxPositions": max_pos,
               "bosId": 1, "eosId": 2, "padId": 0, "newlineId": vocab[b2u[10]], "addBos": True, "imgTokenIds": img_ids},
        "vision": {"encoder": "image_encoder.onnx", "imageSize": S, "resize": "shortest-side-bicubic-center-crop",
                   "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "pooledSize": DV},
        "gill": {"visualPrefix": "visual_prefix.onnx", "numVisualTokens": K, "imageRetrieval": "image_retrieval.onnx",
                 "textRetrieval": "text_retrieval.onnx", "retrievalDim": R, "logitScale": 2.659,
                 "mapper": "gill_mapper.onnx", "decision": "decision.onnx"},
        "diffusion": {"textEncoder": "text_encoder.onnx", "textTokenizer": "text_tokenizer.json", "textMaxLength": L,
                      "textPadId": 0, "textBosId": None, "textEosId": None, "conditioningDim": DC, "unet": "unet.onnx",
                      "vaeDecoder": "vae_decoder.onnx", "latentChannels": C, "latentSize": LS, "imageSize": S,
                      "vaeScalingFactor": 1.0,
                      "scheduler": {"numTrainTimesteps": 1000, "betaSchedule": "squaredcos_cap_v2",
                                    "betaStart": 0.00085, "betaEnd": 0.012, "predictionType": "epsilon"}},
        "defaults": {"maxNewTokens": 16, "temperature": 0, "topP": 1, "retScaleFactor": 1.3, "genScaleFactor": 1.0,
                     "dialogueTemplate": "Q: {text}\nA:", "scheduler": "ddim", "steps": 4, "guidance": 5.0},
    }
    if args.format == "2":
        manifest = make_v2(out, manifest, args.seed, decision_inputs[1:] == ["retrieval_score"])
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
