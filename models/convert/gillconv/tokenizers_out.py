"""The bundle's two tokenizer.json files, built with the `tokenizers` package.

LM: OPT's byte-level BPE (GPT-2's), BOS prepended by the post-processor, plus GILL's added tokens: `<|image|>`
(special, 50265) and `[IMG0..r-1]` (50266…), as GILL's reference code adds them. Diffusion: CLIP's BPE
(lower-cased, `</w>` word ends) with no post-processor; the engine adds CLIP's BOS/EOS and pads itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from .weights import ConversionError

IMAGE_TOKEN = "<|image|>"
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bpe_files(folder: Path, label: str) -> tuple[dict, list]:
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.exists() and merges.exists()):
        raise ConversionError(f"{label}: {folder} has neither tokenizer.json nor vocab.json + merges.txt")
    lines = [ln for ln in merges.read_text(encoding="utf-8").split("\n") if ln and not ln.startswith("#version")]
    return json.loads(vocab.read_text(encoding="utf-8")), [tuple(ln.split(" ")) for ln in lines]


def opt_tokenizer(folder: Path, bos_id: int, num_img: int):
    """OPT's tokenizer with GILL's tokens; returns the `tokenizers.Tokenizer`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        vocab, merges = _bpe_files(folder, "--opt tokenizer")
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        inv = {v: k for k, v in vocab.items()}
        specials = [inv[i] for i in range(4) if i in inv]  # <s> <pad> </s> <unk>
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        bos = inv[bos_id]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                           special_tokens=[(bos, bos_id)])
    base = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    tok.add_tokens([AddedToken(f"[IMG{i}]", normalized=False) for i in range(num_img)])
    want = list(range(base, base + 1 + num_img))
    got = [tok.token_to_id(t) for t in [IMAGE_TOKEN, *[f"[IMG{i}]" for i in range(num_img)]]]
    if got != want:
        raise ConversionError(f"--opt tokenizer: GILL's tokens got ids {got}, expected {want}")
    return tok


def clip_tokenizer(folder: Path):
    """CLIP's tokenizer without a post-processor (the engine adds BOS/EOS and pads to 77)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        vocab, merges = _bpe_files(folder, "--sd tokenizer")
        tok = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                                   fuse_unk=False, unk_token="<|endoftext|>"))
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        from tokenizers import AddedToken
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ("<|startoftext|>", "<|endoftext|>") if t in vocab])
    tok.post_processor = None
    return tok


def save(tok, path: Path) -> None:
    tok.save(str(path))
