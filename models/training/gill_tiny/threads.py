"""The held-out thread set: conversations worded as people write in chat threads, with templates no training
path uses (`wordings.EVAL`), ending in a request for a test-split scene. `npm run eval:threads` replays them
through the loopback Discord, Slack and the playground (bench/threads/).

    /usr/bin/python3 -m gill_tiny.threads --out ../gill-tiny/eval/threads.json   (from models/training)

Format `gill-threads/1`: per conversation `turns` (the user's messages), `turn_types` (request / statement / chat
/ story: only a request asks for a picture), `expected` (the final picture's attributes; null where the
conversation leaves one to the bot) and `reply_mentions` (per turn, what its reply should restate, alternatives
joined by "|").
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from .wordings import check_banks_disjoint, make_thread

FORMAT = "gill-threads/1"


def _case(text: str, rng: random.Random) -> str:
    """Casing as people type (the LM's tokenizer lowercases; the platforms and the playground do not)."""
    u = rng.random()
    return text.upper() if u < 0.1 else text[:1].upper() + text[1:] if u < 0.35 else text


def held_out_threads(count: int, seed: int) -> dict:
    check_banks_disjoint()
    rng, case_rng = random.Random(seed), random.Random(seed + 1)
    conversations = []
    for n in range(count):
        t = make_thread(rng, "test", "eval", typo_rate=0.06)
        o = t.final_scene.objects[0]
        expected = {"colour": o.colour, "shape": o.shape, "size": o.size, "position": o.position}
        for a in t.unstated:
            expected[a] = None
        conversations.append({"id": f"thread-{n:03d}", "kind": t.kind, "turns": [_case(q, case_rng) for q, _ in t.turns],
                              "turn_types": t.turn_types, "expected": expected, "reply_mentions": t.reply_mentions})
    return {"format": FORMAT, "generator": "models/training/gill_tiny/threads.py", "wordings": "eval", "seed": seed,
            "count": count, "conversations": conversations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=240)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.write_text(json.dumps(held_out_threads(a.count, a.seed), indent=1) + "\n")
    print(f"{a.out}: {a.count} conversations")


if __name__ == "__main__":
    main()
