"""The thread wordings: held-out templates stay out of training, and threads carry what their users expect."""

from __future__ import annotations

import random
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gill_tiny import data as D  # noqa: E402
from gill_tiny import wordings as W  # noqa: E402
from gill_tiny.dialogue_turns import replay_set  # noqa: E402
from gill_tiny.threads import held_out_threads  # noqa: E402


class WordingsTest(unittest.TestCase):
    def test_held_out_templates_are_not_training_templates(self):
        W.check_banks_disjoint()
        train = {W._skeleton(t) for t in W.TRAIN.templates()}
        self.assertNotIn(W._skeleton("turn it {c}"), train)

    def test_overlap_is_refused(self):
        original = W.TRAIN
        try:
            W.TRAIN = W.Bank(**{**original.__dict__, "recolour": original.recolour + ("Turn it {c}!",)})
            with self.assertRaisesRegex(ValueError, "turn it"):
                W.check_banks_disjoint()
        finally:
            W.TRAIN = original

    def test_threads_end_in_a_request_for_their_final_scene(self):
        rng = random.Random(3)
        for _ in range(300):
            t = W.make_thread(rng, "train")
            self.assertEqual(len(t.turn_types), len(t.turns))
            self.assertEqual(len(t.reply_mentions), len(t.turns))
            self.assertEqual(t.turn_types[-1], "request")
            self.assertEqual(D.split_of(t.final_scene.key()), "train")
            if t.kind == "favourite":
                self.assertIn(t.final_scene.objects[0].colour, t.turns[0][1] + " ".join(q for q, _ in t.turns[1:]))

    def test_compound_edits_change_two_attributes_and_the_request_names_both(self):
        rng = random.Random(11)
        compound = [t for t in (W.make_thread(rng, "train", typo_rate=0.0) for _ in range(400)) if t.kind == "compound"]
        self.assertGreater(len(compound), 40)
        attributes = ("colour", "size", "shape", "position")
        for t in compound:
            first = t.turn_scenes[t.turn_types.index("request")].objects[0]
            final = t.final_scene.objects[0]
            self.assertEqual(sum(getattr(first, a) != getattr(final, a) for a in attributes), 2, t.turns)
            self.assertEqual(len(t.reply_mentions[-1]), 2)
            for said in t.reply_mentions[-1]:  # each change is named in the reply ("big|large": either word)
                self.assertTrue(any(w in t.turns[-1][1] for w in said.split("|")), (said, t.turns[-1]))

    def test_held_out_threads_draw_no_compound_edits(self):
        # the held-out set is fixed by its seed: training-only options must not consume its random stream
        kinds = {c["kind"] for c in held_out_threads(120, 20261207)["conversations"]}
        self.assertEqual(kinds, {"favourite", "recolour", "resize", "reshape", "move", "story"})

    def test_typos_keep_word_count_and_us_spelling_applies(self):
        rng = random.Random(0)
        text = "please draw my favourite colour in the centre"
        self.assertEqual(W.roughen(text, rng, us=True, typo_rate=0.0), "please draw my favorite color in the center")
        rough = W.roughen(text, rng, us=False, typo_rate=1.0)
        self.assertEqual(len(rough.split()), len(text.split()))
        self.assertNotEqual(rough, text)

    def test_held_out_set_uses_test_scenes_and_leaves_unstated_attributes_open(self):
        doc = held_out_threads(60, 7)
        self.assertEqual(doc["format"], "gill-threads/1")
        for c in doc["conversations"]:
            self.assertEqual(c["turn_types"][-1], "request")
            self.assertEqual(len(c["turns"]), len(c["reply_mentions"]))
        open_position = [c for c in doc["conversations"] if c["expected"]["position"] is None]
        self.assertTrue(all(c["kind"] == "favourite" for c in open_position))

    def test_validation_replay_sets_say_what_each_turn_is(self):
        # eval:threads splits its scores by turn type only where the set names it (story sentences apart
        # from statements); a request is the only type that asks for an image, and every set ends with one.
        for threads in (False, True):
            for c in replay_set("val", 40, 7, threads)["conversations"]:
                types = [t["type"] for t in c["turns"]]
                self.assertTrue(set(types) <= {"request", "statement", "chat", "story"}, types)
                self.assertEqual([t["image"] for t in c["turns"]], [t == "request" for t in types])
                self.assertEqual(types[-1], "request")


if __name__ == "__main__":
    unittest.main()
