"""The bundle's lexicon: the words the LM was trained on, with their counts (`lexicon.json`, gill-lexicon/1).

The engine repairs a user's typo to the most frequent lexicon word one edit away when the typed word is neither
in the lexicon nor English (src/engine/gill/spelling.ts): a 3M-parameter LM never saw "purlpe". The words are
those of the LM's pretraining documents and of the chat stage's thread wordings drawn without typos, so the
typos the chat stage adds on purpose do not become "known" words.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Iterable

from .wordings import make_thread

FORMAT = "gill-lexicon/1"
WORD = re.compile(r"[a-z]+")


def count_words(texts: Iterable[str], min_count: int = 2) -> dict[str, int]:
    counts = Counter(w for t in texts for w in WORD.findall(t.lower()))
    return {w: n for w, n in sorted(counts.items()) if n >= min_count}


def training_lexicon(pretraining_docs: Iterable[str], seed: int, threads: int = 20000) -> dict:
    rng = random.Random(seed)
    chat = (make_thread(rng, "train", typo_rate=0.0).text() for _ in range(threads))
    return {"format": FORMAT, "words": count_words([*pretraining_docs, *chat])}
