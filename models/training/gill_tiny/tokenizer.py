"""Byte-level BPE tokenizer written as a Hugging Face `tokenizer.json`.

The Python class here is the reference encoder used in training; the same JSON file is loaded by
`@huggingface/tokenizers` in the engine, and `models/training/check_tokenizer.mjs` checks both agree.

Vocabulary layout (ids):
  0 `<pad>`, 1 `<s>` (BOS), 2 `</s>` (EOS), 3 `<|image|>`, then the 256 byte symbols, then the learned
  merges, then `[IMG0]`..`[IMG7]` as the last 8 ids (added, non-special tokens as in GILL, so each encodes
  to exactly one id and decodes to its own text).

Pre-tokenization uses an explicit ASCII regex (letters / digits / other symbols / whitespace runs), so
Python's `re` and the JS library split identically; every other character goes through the byte-level path.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<|image|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE)
NUM_IMG_TOKENS = 8
IMG_TOKENS = tuple(f"[IMG{i}]" for i in range(NUM_IMG_TOKENS))

_WS = r"\t\n\v\f\r "
SPLIT_PATTERN = rf" ?[A-Za-z]+| ?[0-9]+| ?[^A-Za-z0-9{_WS}]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
_SPLIT_RE = re.compile(SPLIT_PATTERN)

# The LM file's normalizer. Everything the LM trains on is lowercase but for the dialogue template's markers
# ("Q:" and "A:" at a line start, data.Dialogue.prompt), so text is lowercased and those markers restored: people's
# casing ("Could you", "BIG RED") then reaches the LM as the lowercase words it was trained on. Oniguruma's "^"
# (and the JS library's rewrite of it) matches at every line start, as re.M does here.
LM_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Lowercase"},
    {"type": "Replace", "pattern": {"Regex": "^q:"}, "content": "Q:"},
    {"type": "Replace", "pattern": {"Regex": "^a:"}, "content": "A:"},
]}
_MARKERS = ((re.compile(r"^q:", re.M), "Q:"), (re.compile(r"^a:", re.M), "A:"))


def normalize_lm(text: str) -> str:
    """What LM_NORMALIZER does to a piece of text between added tokens."""
    text = text.lower()
    for pattern, marker in _MARKERS:
        text = pattern.sub(marker, text)
    return text


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what the ByteLevel components use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def pre_tokenize(text: str) -> list[str]:
    """Split into pre-tokens and map each to its byte-level string."""
    return ["".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8")) for piece in _SPLIT_RE.findall(text)]


def train_bpe(texts: Iterable[str], vocab_size: int) -> list[tuple[str, str]]:
    """Learn BPE merges on `texts` until the full vocabulary (specials + bytes + merges + [IMG]) has `vocab_size` ids."""
    base = len(SPECIAL_TOKENS) + 256 + NUM_IMG_TOKENS
    if vocab_size <= base:
        raise ValueError(f"vocab_size must exceed {base}, got {vocab_size}")
    word_counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        word_counts.update(pre_tokenize(text))
    words = [(list(w), c) for w, c in word_counts.items()]
    merges: list[tuple[str, str]] = []
    while len(merges) < vocab_size - base:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        # Highest count; ties broken by the pair itself so training is deterministic.
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        if pairs[best] < 2:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    symbols[i : i + 2] = [joined]
                i += 1
    return merges


def _alternation(tokens: Iterable[str]) -> re.Pattern:
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


@dataclass
class Tokenizer:
    """Reference implementation of the tokenizer.json this module writes."""

    merges: list[tuple[str, str]]

    def __post_init__(self) -> None:
        tokens = list(SPECIAL_TOKENS) + [BYTE_TO_CHAR[b] for b in range(256)]
        for a, b in self.merges:
            tokens.append(a + b)
        tokens += list(IMG_TOKENS)
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate token in vocabulary (merges produce an existing token)")
        self.id_to_token = tokens
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}
        self._added = {t: self.token_to_id[t] for t in (*SPECIAL_TOKENS, *IMG_TOKENS)}
        # Longest first, as the added-token splitter matches the longest token at a position.
        self._added_re = _alternation(self._added)
        self._special_re = _alternation(SPECIAL_TOKENS)  # text_tokenizer.json has no [IMG] tokens

    # ids -------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    @property
    def pad_id(self) -> int:
        return self.token_to_id[PAD]

    @property
    def bos_id(self) -> int:
        return self.token_to_id[BOS]

    @property
    def eos_id(self) -> int:
        return self.token_to_id[EOS]

    @property
    def image_id(self) -> int:
        return self.token_to_id[IMAGE]

    @property
    def newline_id(self) -> int:
        return self.token_to_id[BYTE_TO_CHAR[ord("\n")]]

    @property
    def img_ids(self) -> list[int]:
        return [self.token_to_id[t] for t in IMG_TOKENS]

    @property
    def text_vocab_size(self) -> int:
        """Ids below this are plain text tokens (everything but [IMG0..7]); the text tower's vocabulary."""
        return self.vocab_size - NUM_IMG_TOKENS

    # encoding ---------------------------------------------------------------------------------------
    def _bpe(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word)
        while len(symbols) > 1:
            ranked = [(self.ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
            rank, i = min(ranked)
            if rank == 1 << 30:
                break
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        ids = [self.token_to_id[s] for s in symbols]
        self._cache[word] = ids
        return ids

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of `text` normalised as the LM file's LM_NORMALIZER does (each piece between added tokens);
        with `add_bos`, BOS first (what the JS library does with add_special_tokens)."""
        return ([self.bos_id] if add_bos else []) + self._encode(text, self._added_re, normalize_lm)

    def _encode(self, text: str, added_re: re.Pattern, normalize=lambda t: t) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in added_re.finditer(text):
            for word in pre_tokenize(normalize(text[pos : m.start()])):
                ids += self._bpe(word)
            ids.append(self._added[m.group(0)])
            pos = m.end()
        for word in pre_tokenize(normalize(text[pos:])):
            ids += self._bpe(word)
        return ids

    def encode_text_condition(self, text: str, max_length: int) -> list[int]:
        """Ids for the diffusion text tower (text_tokenizer.json): lowercased, no BOS/EOS, right-truncated and
        right-padded with `<pad>` to `max_length` (the engine pads the same way)."""
        ids = self._encode(text.lower(), self._special_re)[:max_length]
        return ids + [self.pad_id] * (max_length - len(ids))

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of `ids`; added tokens are emitted verbatim, the rest byte-decoded (replacement char on bad UTF-8)."""
        out: list[str] = []
        buf: list[int] = []
        for i in ids:
            tok = self.id_to_token[i]
            if tok in self._added:
                out.append(bytes(buf).decode("utf-8", errors="replace"))
                buf = []
                if not (skip_special and tok in SPECIAL_TOKENS):
                    out.append(tok)
            else:
                buf += [CHAR_TO_BYTE[c] for c in tok]
        out.append(bytes(buf).decode("utf-8", errors="replace"))
        return "".join(out)

    # serialisation ------------------------------------------------------------------------------------
    def to_hf_json(self, for_text_encoder: bool = False) -> dict:
        """The `tokenizer.json` document. The LM file has a TemplateProcessing post-processor that prepends BOS
        when `add_special_tokens` is true (as OPT's does); the text-encoder file lowercases and adds nothing."""
        added = [
            {"id": self.token_to_id[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": t in SPECIAL_TOKENS}
            for t in (SPECIAL_TOKENS if for_text_encoder else (*SPECIAL_TOKENS, *IMG_TOKENS))
        ]
        vocab_tokens = self.id_to_token[: self.text_vocab_size] if for_text_encoder else self.id_to_token
        doc = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "Lowercase"} if for_text_encoder else LM_NORMALIZER,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
                ],
            },
            "post_processor": None if for_text_encoder else {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 0}}],
                "special_tokens": {BOS: {"id": BOS, "ids": [self.bos_id], "tokens": [BOS]}},
            },
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": {t: i for i, t in enumerate(vocab_tokens)},
                "merges": [[a, b] for a, b in self.merges],
            },
        }
        return doc

    def save(self, path: Path, for_text_encoder: bool = False) -> None:
        Path(path).write_text(json.dumps(self.to_hf_json(for_text_encoder), ensure_ascii=False, indent=None))

    def save_merges(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"merges": [list(m) for m in self.merges]}))

    @classmethod
    def load(cls, path: Path) -> "Tokenizer":
        """Load from a tokenizer.json written by `save` or from a merges file written by `save_merges`."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            merges = doc["model"]["merges"] if "model" in doc else doc["merges"]
            return cls([tuple(m if isinstance(m, list) else m.split(" ")) for m in merges])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot load tokenizer from {path}: {e}") from e
