"""The reply-image head's data and fit: requests labelled 1, everything else 0, misread replies included."""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gill_tiny.reply_image import fit_probe, share_positive, thread_replies  # noqa: E402


class ReplyImageTest(unittest.TestCase):
    def test_every_turn_is_laid_out_to_the_end_of_its_reply_and_only_requests_are_positive(self):
        texts, labels, types = thread_replies("train", 40, seed=1)
        self.assertEqual(len(texts), len(labels))
        self.assertTrue(all(t.count("Q: ") == t.count("\nA: ") and not t.endswith("\n") for t in texts))
        self.assertEqual({k for k, y in zip(types, labels) if y == 1.0}, {"request"})
        self.assertIn("statement", types)

    def test_misread_replies_present_a_picture_and_are_negative(self):
        texts, labels, types = thread_replies("train", 40, seed=2, misread=1.0)
        misread = [(t, y) for t, y, k in zip(texts, labels, types) if k.endswith(", misread")]
        self.assertTrue(misread)
        self.assertTrue(all(y == 0.0 and "here is" in t.rsplit("\nA: ", 1)[1] for t, y in misread))

    def test_the_probe_separates_what_a_line_separates(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(400, 8, generator=g)
        y = (x[:, 0] + 0.5 * x[:, 3] > 0).float()
        head = fit_probe(x, y)
        self.assertGreater(share_positive(head, x[y == 1]), 0.97)
        self.assertLess(share_positive(head, x[y == 0]), 0.03)


if __name__ == "__main__":
    unittest.main()
