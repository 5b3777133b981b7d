"""Unit tests of the data, tokenizer and backbone modules (run by test/training-backbones.test.ts):
    /usr/bin/python3 -m unittest discover -s models/training/tests
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gill_tiny import data  # noqa: E402
from gill_tiny.clip import ClipConfig, DualEncoder  # noqa: E402
from gill_tiny.diffusion import VAE, UNet, UNetConfig, VAEConfig, alphas_cumprod, ddim_sample, ddim_timesteps  # noqa: E402
from gill_tiny.lm import LMConfig, TinyLM  # noqa: E402
from gill_tiny.presets import PRESETS  # noqa: E402
from gill_tiny.stages import Context, _atomic_save, _load_checked  # noqa: E402
from gill_tiny.tokenizer import IMG_TOKENS, Tokenizer, train_bpe  # noqa: E402

CORPUS = ["a big red circle to the left of a small blue star.", "Q: my favourite colour is green.\nA: nice!"] * 20


class TokenizerTest(unittest.TestCase):
    def setUp(self):
        self.tok = Tokenizer(train_bpe(CORPUS, 400))

    def test_img_tokens_are_single_ids_at_the_end(self):
        for i, t in enumerate(IMG_TOKENS):
            self.assertEqual(self.tok.encode(t), [self.tok.img_ids[i]])
        self.assertEqual(self.tok.img_ids, list(range(self.tok.vocab_size - 8, self.tok.vocab_size)))
        self.assertEqual(self.tok.encode("star" + "".join(IMG_TOKENS))[-8:], self.tok.img_ids)

    def test_round_trip_and_bos(self):
        for text in ["Q: draw a red star.\nA: ok 🎉", "piñata  two  spaces\n\n", ""]:
            ids = self.tok.encode(text, add_bos=True)
            self.assertEqual(ids[0], self.tok.bos_id)
            self.assertEqual(self.tok.decode(ids[1:]), text)
        self.assertEqual(self.tok.encode("\n"), [self.tok.newline_id])

    def test_lm_text_is_lowercased_but_for_the_template_markers(self):
        self.assertEqual(self.tok.encode("Q: Draw a RED Star.\nA: OK\nQ: [IMG0]A: x", add_bos=True),
                         self.tok.encode("Q: draw a red star.\nA: ok\nQ: [IMG0]A: x", add_bos=True))
        self.assertEqual(self.tok.to_hf_json()["normalizer"]["normalizers"][0], {"type": "Lowercase"})

    def test_training_is_deterministic_and_merges_frequent_words(self):
        self.assertEqual(train_bpe(CORPUS, 400), self.tok.merges)
        self.assertLess(len(self.tok.encode(" favourite")), 3)

    def test_text_condition_ids_pad_truncate_and_ignore_img_strings(self):
        ids = self.tok.encode_text_condition("A Big RED [IMG0]", 8)
        self.assertEqual(len(ids), 8)
        self.assertTrue(all(i < self.tok.text_vocab_size for i in ids))
        self.assertEqual(ids[: len(self.tok.encode("a big red"))], self.tok.encode("a big red"))
        self.assertEqual(self.tok.encode_text_condition("", 4), [self.tok.pad_id] * 4)


class DataTest(unittest.TestCase):
    def test_reproducible(self):
        def sample(seed):
            rng = random.Random(seed)
            s = data.sample_scene(rng, "train")
            return s, data.caption(s, rng), data.render(s, rng), data.make_dialogue(rng, "val").text()

        a, b = sample(7), sample(7)
        self.assertEqual(a[0], b[0])
        self.assertEqual(a[1], b[1])
        self.assertTrue(np.array_equal(a[2], b[2]))
        self.assertEqual(a[3], b[3])

    def test_splits_follow_the_content(self):
        rng = random.Random(0)
        for split in data.SPLITS:
            for _ in range(20):
                self.assertEqual(data.split_of(data.sample_scene(rng, split).key()), split)
                self.assertEqual(data.split_of(data.make_dialogue(rng, split).final_scene.key()), split)
                self.assertEqual(data.split_of(data.make_story(rng, split).final_scene.key()), split)

    def test_render_draws_the_colour_where_the_object_is(self):
        scene = data.Scene((data.Obj("square", "blue", "big", "left"),))
        img = data.render(scene)
        x, y = data.POSITIONS["left"]
        self.assertEqual(tuple(img[y, x]), data.COLOURS["blue"])
        self.assertEqual(tuple(img[y, 60]), data.BACKGROUND)

    def test_dialogue_last_turn_needs_the_context(self):
        rng = random.Random(3)
        for _ in range(30):
            d = data.make_dialogue(rng, "train")
            final = d.final_scene.objects[0]
            self.assertTrue(d.prompt().endswith(f"Q: {d.last_message}\nA:"))
            self.assertIn(final.colour, d.turns[-1][1])  # the final reply states the resolved scene
            self.assertIn(final.shape, d.turns[-1][1])
            if d.kind == "recolour":
                self.assertNotIn(final.colour, d.turns[0][0])
            if d.kind == "favourite":
                self.assertNotIn(final.colour, d.last_message)
                self.assertIn(final.colour, d.turns[0][0])

    def test_story_changes_one_attribute_per_sentence(self):
        rng = random.Random(4)
        for _ in range(20):
            s = data.make_story(rng, "test")
            self.assertEqual(len(s.sentences), len(s.scenes))
            for a, b in zip(s.scenes, s.scenes[1:]):
                diff = [f for f in ("shape", "colour", "size", "position")
                        if getattr(a.objects[0], f) != getattr(b.objects[0], f)]
                self.assertEqual(len(diff), 1)

    def _emoji_dir(self, tmp: Path, png: bytes | None) -> Path:
        (tmp / "img" / "google" / "64").mkdir(parents=True)
        entries = [{"name": "GRINNING FACE", "image": "1f600.png", "has_img_google": True, "category": "Smileys",
                    "sort_order": 1}]
        (tmp / "emoji.json").write_text(json.dumps(entries))
        if png is not None:
            (tmp / "img" / "google" / "64" / "1f600.png").write_bytes(png)
        return tmp

    def test_emoji_loads_and_flattens_alpha(self):
        with tempfile.TemporaryDirectory() as d:
            buf = Path(d) / "x.png"
            Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(buf)
            e = data.load_emoji(self._emoji_dir(Path(d) / "e", buf.read_bytes()))
            self.assertEqual(e.names, ["grinning face"])
            self.assertEqual(tuple(e.images[0, 0, 0]), (255, 255, 255))

    def test_bad_emoji_data_names_the_file(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(ValueError, r"1f600\.png"):
                data.load_emoji(self._emoji_dir(Path(d) / "missing", None))
            with self.assertRaisesRegex(ValueError, r"1f600\.png"):
                data.load_emoji(self._emoji_dir(Path(d) / "corrupt", b"not a png"))
            with self.assertRaisesRegex(ValueError, r"emoji\.json"):
                data.load_emoji(Path(d) / "nowhere")


class ModelTest(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def test_kv_cache_matches_the_full_forward(self):
        lm = TinyLM(LMConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64)).eval()
        ids = torch.randint(0, 50, (2, 7))
        pos = torch.arange(7).expand(2, 7)
        with torch.no_grad():
            full_logits, full_hidden, _ = lm(lm.embed(ids), pos)
            empty = [(torch.zeros(2, 2, 0, 16), torch.zeros(2, 2, 0, 16))] * 2
            _, h0, past = lm(lm.embed(ids[:, :4]), pos[:, :4], empty, torch.ones(2, 4, dtype=torch.long))
            logits, h1, _ = lm(lm.embed(ids[:, 4:]), pos[:, 4:], past, torch.ones(2, 7, dtype=torch.long))
        torch.testing.assert_close(torch.cat([h0, h1], 1), full_hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, full_logits[:, 4:], atol=1e-5, rtol=1e-5)
        # Tied head: logits are the final hidden states against the input embedding matrix.
        torch.testing.assert_close(full_logits, full_hidden @ lm.embed_tokens.weight.t())

    def test_left_padding_is_masked(self):
        lm = TinyLM(LMConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64)).eval()
        ids = torch.randint(0, 50, (1, 5))
        padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1)
        with torch.no_grad():
            _, ref, _ = lm(lm.embed(ids), torch.arange(5)[None])
            _, got, _ = lm(lm.embed(padded), torch.tensor([[0, 0, 0, 1, 2, 3, 4]])[:, :7],
                           attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1]]))
        torch.testing.assert_close(got[:, 2:], ref, atol=1e-5, rtol=1e-5)

    def test_text_tower_is_causal_so_padding_does_not_change_the_text(self):
        clip = DualEncoder(ClipConfig(text_vocab_size=40, text_max_length=12)).eval()
        ids = torch.tensor([[5, 6, 7] + [0] * 9, [5, 6, 7, 9, 9] + [0] * 7])
        with torch.no_grad():
            states = clip.encode_text_states(ids)
            self.assertEqual(tuple(states.shape), (2, 12, 128))
            torch.testing.assert_close(states[0, :3], states[1, :3])
            self.assertEqual(tuple(clip.encode_image(torch.zeros(3, 3, 64, 64)).shape), (3, 128))
        torch.testing.assert_close(clip.pool_text(states, ids), torch.stack([states[0, 2], states[1, 4]]))

    def test_schedule_and_sampler(self):
        acp = alphas_cumprod()
        self.assertEqual(acp.shape, (1000,))
        self.assertTrue(bool((acp[1:] < acp[:-1]).all()))
        self.assertAlmostEqual(float(acp[0]), 0.99995, places=4)  # squaredcos_cap_v2's first value
        self.assertEqual(ddim_timesteps(25)[:2] + ddim_timesteps(25)[-1:], [960, 920, 0])
        unet = UNet(UNetConfig(channels=(16, 16, 16), cond_dim=8, time_dim=16)).eval()
        out = ddim_sample(unet, torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 4, 16, 16), steps=3)
        self.assertEqual(tuple(out.shape), (2, 4, 16, 16))
        vae = VAE(VAEConfig(channels=(8, 8, 8))).eval()
        img = vae.decode(out)
        self.assertEqual(tuple(img.shape), (2, 3, 64, 64))
        self.assertLessEqual(float(img.abs().max()), 1.0)


class CheckpointTest(unittest.TestCase):
    def test_checkpoint_of_another_preset_is_refused_by_name(self):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "lm.pt"
            _atomic_save({"preset": PRESETS["smoke"].to_dict(), "state": {}}, path)
            self.assertEqual(_load_checked(path, PRESETS["smoke"])["state"], {})
            with self.assertRaisesRegex(RuntimeError, "lm.pt.*different preset"):
                _load_checked(path, PRESETS["full"])
            path.write_bytes(b"garbage")
            with self.assertRaisesRegex(RuntimeError, "lm.pt cannot be read"):
                Context(PRESETS["smoke"], torch.device("cpu"), Path(d), Path(d), Path(d)).load("lm")


if __name__ == "__main__":
    unittest.main()
