"""Validation-split dialogues as turns for choosing decoding settings on data the bundle's own split keeps apart
from training and from the held-out thread set (models/gill-tiny/eval/threads.json, which is for reporting).

Each dialogue of `data.make_dialogue(rng, "val")` becomes its turns, each marked as a request (it asks for a
picture: "draw …", "now make it blue.") or a statement / small talk (it asks for none), with the reference
replies the LM was trained on. `bench/ret-scale.ts` reads the file.

    /usr/bin/python3 -m models.training.gill_tiny.dialogue_turns --count 400 --out /tmp/val-dialogues.json
    /usr/bin/python3 -m models.training.gill_tiny.dialogue_turns --threads --count 400 --out /tmp/val-threads-turns.json
    /usr/bin/python3 -m models.training.gill_tiny.dialogue_turns --replay --count 120 --out /tmp/val-threads.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from . import data as D
from .wordings import make_thread

SMALL_TALK = {q for q, _ in D.SMALL_TALK}


def turn_type(dialogue: D.Dialogue, i: int) -> str:
    q = dialogue.turns[i][0]
    if q in SMALL_TALK:
        return "chat"
    if dialogue.kind == "favourite" and i == 0:
        return "statement"
    return "request"


def dialogue_turns(split: str, count: int, seed: int, threads: bool = False) -> list[dict]:
    """Clean dialogues, or with `threads` the training bank's thread wordings (wordings.TRAIN) on `split`'s
    scenes: small talk, spelling, typos; a story's sentences count as statements."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        d = make_thread(rng, split) if threads else D.make_dialogue(rng, split)
        types = d.turn_types or [turn_type(d, i) for i in range(len(d.turns))]
        out.append({
            "id": f"{split}-{n:04d}",
            "kind": d.kind,
            "turns": [q for q, _ in d.turns],
            "replies": [a for _, a in d.turns],
            "turn_types": ["statement" if t == "story" else t for t in types],
        })
    return out


def replay_set(split: str, count: int, seed: int, threads: bool = False) -> dict:
    """The same dialogues (or with `threads`, threads in the training bank's wordings) as conversations for
    `npm run eval:threads -- --set` (bench/threads/conversations.ts): every turn is posted in the thread, the
    first as a mention; the last's expected attributes are the final scene's, and a statement's reply should
    name the colour."""
    rng = random.Random(seed)
    conversations = []
    for n in range(count):
        d = make_thread(rng, split) if threads else D.make_dialogue(rng, split)
        o = d.final_scene.objects[0]
        types = d.turn_types or [turn_type(d, i) for i in range(len(d.turns))]
        turns = []
        for i, (q, _) in enumerate(d.turns):
            reply = d.reply_mentions[i] if d.reply_mentions else [o.colour] if types[i] == "statement" else []
            turns.append({"text": q, "mention": i == 0 or i % 2 == 1, "image": types[i] == "request", "reply": reply,
                          "type": types[i]})
        expected = {"colour": o.colour, "shape": o.shape, "size": o.size, "position": o.position}
        conversations.append({"id": f"{split}-{n:04d}", "kind": d.kind, "turns": turns,
                              "expected": {a: v for a, v in expected.items() if a not in d.unstated}})
    return {"about": f"{split}-split {'threads' if threads else 'dialogues'} from "
                     f"models/training/gill_tiny/dialogue_turns.py (seed {seed})", "conversations": conversations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="val", choices=D.SPLITS)
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--replay", action="store_true", help="write conversations for `npm run eval:threads -- --set`")
    ap.add_argument("--threads", action="store_true", help="thread wordings (wordings.TRAIN) instead of clean dialogues")
    a = ap.parse_args()
    if a.replay:
        a.out.write_text(json.dumps(replay_set(a.split, a.count, a.seed, a.threads), indent=1) + "\n")
        print(f"{a.out}: {a.count} conversations for eval:threads")
        return
    doc = {"format": "gill-dialogue-turns/1", "split": a.split, "seed": a.seed,
           "dialogues": dialogue_turns(a.split, a.count, a.seed, a.threads)}
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    types = [t for d in doc["dialogues"] for t in d["turn_types"]]
    print(f"{a.out}: {len(doc['dialogues'])} dialogues, " + ", ".join(f"{t} {types.count(t)}" for t in sorted(set(types))))


if __name__ == "__main__":
    main()
