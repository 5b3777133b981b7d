"""Conversations of the shapes world worded as people write in a chat thread, in two disjoint banks.

`make_thread(rng, split, "train")` gives the threads the LM's chat stage and the GILL stage's context rows train
on; `make_thread(rng, split, "eval")` gives the held-out thread set (`threads.py`), worded with templates that no
training path uses (`check_banks_disjoint` asserts it). Both add what real threads hold and the clean dialogues
of `data.make_dialogue` lack: small talk between the turns, US and UK spelling, typos, punctuation and
emoticons, and the bot's replies as it writes them (acknowledgements that restate what was said, "here is …"
for pictures).

A thread is a `data.Dialogue` whose turns carry a type ("request", "statement", "chat", "story"); only a request
asks for a picture. The final turn is always a request for `final_scene`. In a quarter of the training threads
that edit a picture, the last request changes two attributes at once ("make it red and smaller", kind
"compound"); the held-out set keeps to one change per request, so its random stream is unchanged.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from . import data as D


@dataclass(frozen=True)
class Bank:
    """Templates per intent. Placeholders: {cap} a scene caption ("a big red circle on the left"), {c} colour,
    {sz} size word, {sh} shape, {pos} position phrase ("on the left"), {mv} move phrase ("to the left")."""

    ask: tuple[str, ...]  # a first picture
    favourite: tuple[str, ...]  # stating a favourite colour
    ask_favourite: tuple[str, ...]  # a picture in the favourite colour ({pos} may be left out)
    recolour: tuple[str, ...]
    bigger: tuple[str, ...]
    smaller: tuple[str, ...]
    reshape: tuple[str, ...]
    move: tuple[str, ...]
    chat: tuple[tuple[str, str], ...]  # (user message, bot reply)
    story_open: tuple[str, ...]
    story_colour: tuple[str, ...]
    story_bigger: tuple[str, ...]
    story_smaller: tuple[str, ...]
    story_shape: tuple[str, ...]
    story_move: tuple[str, ...]
    story_ask: tuple[str, ...]

    def templates(self) -> list[str]:
        out = []
        for value in self.__dict__.values():
            out += [t[0] if isinstance(t, tuple) else t for t in value]
        return out


TRAIN = Bank(
    ask=("draw {cap}", "show me {cap}", "please draw {cap}", "can you draw {cap}?", "could you draw {cap}?",
         "make {cap}", "make me {cap}", "create {cap}", "i want {cap}", "i need {cap}", "give me {cap}",
         "draw me {cap} please", "can i get {cap}?", "can i have {cap}?", "generate {cap}", "please make {cap}",
         "would you draw {cap}?", "how about drawing {cap}?", "i would love to see {cap}", "draw {cap} for me",
         "hey, draw {cap}", "ok draw {cap}", "quick one: {cap}", "request: {cap}", "could you make {cap}?",
         "i'd love {cap}", "show {cap}", "can we get {cap}?", "i want to see {cap}", "maybe {cap}?", "{cap} please",
         "can you do {cap}?", "pls draw {cap}", "plz make {cap}", "draw {cap} pls", "make a picture of {cap}",
         "a picture of {cap} please", "an image of {cap}", "render {cap}", "illustrate {cap}", "whip up {cap}",
         "could i see {cap}?", "gimme {cap}", "one {cap} please", "do me {cap}", "new picture: {cap}"),
    favourite=("my favourite colour is {c}", "i really love the colour {c}", "{c} is my favourite colour",
               "i like {c} the most", "my fave colour is {c}", "i'm a big fan of {c}",
               "the colour i love most is {c}", "i adore {c}", "you should know i love {c}",
               "by the way, i like {c} a lot", "{c} is the best colour", "remember that my favourite colour is {c}",
               "btw my favourite colour is {c}", "i prefer {c} to any other colour", "{c} is my colour",
               "if you ask me, {c} is the nicest colour", "i love {c}", "{c} is the colour i like", "i'm into {c}",
               "my colour is {c}", "{c} all the way", "i've always liked {c}", "i really like {c}",
               "{c}, that's my favourite", "my favourite is {c}", "the best colour is {c} imo", "i'm all about {c}",
               "note: i love {c}", "i like {c} best", "favourite colour: {c}", "for me it's {c}, always"),
    ask_favourite=("draw a {sz} {sh} {pos} in my favourite colour",
                   "can you make a {sz} {sh} {pos} in my favourite colour?",
                   "make me a {sz} {sh} {pos} in the colour i like",
                   "please draw a {sz} {sh} {pos} in my favourite colour",
                   "i want a {sz} {sh} {pos} in my favourite colour",
                   "show me a {sz} {sh} {pos} in my favourite colour",
                   "draw a {sz} {sh} {pos} with my favourite colour", "create a {sz} {sh} {pos} in that colour",
                   "give me a {sz} {sh} {pos} in my colour", "now draw a {sz} {sh} {pos} in my favourite colour",
                   "draw a {sz} {sh} {pos} in the colour i love",
                   "can i get a {sz} {sh} {pos} in my favourite colour?", "draw a {sz} {sh} {pos} in my fave colour",
                   "make a {sz} {sh} {pos} using the colour i like", "do a {sz} {sh} {pos} in my favourite colour",
                   "can you draw a {sz} {sh} {pos} in the colour i told you?",
                   "a {sz} {sh} {pos}, in my favourite colour", "use my favourite colour for a {sz} {sh} {pos}",
                   "draw a {sz} {sh} {pos} in the colour i mentioned", "a {sz} {sh} {pos} in my colour please"),
    recolour=("now make it {c}", "change the colour to {c}", "make it {c} instead", "{c} this time",
              "same thing but {c}", "can it be {c}?", "colour it {c}", "do it in {c}", "i want it {c}",
              "make that {c}", "redo it in {c}", "change it to {c}", "again but in {c}", "now in {c}",
              "can you make it {c}?", "give it a {c} colour", "make it {c} please", "{c} please", "let's do {c}",
              "let's go with {c}", "go with {c}", "use {c} instead", "what if it was {c}?", "could it be {c}?",
              "{c} instead", "make it {c} now", "colour it in {c}", "fill it with {c}", "set the colour to {c}",
              "change its colour to {c}", "make the colour {c}", "let's make it {c}", "actually, {c}",
              "nah, make it {c}", "a {c} one please", "now a {c} one"),
    bigger=("make it bigger", "the same shape but bigger", "bigger please", "can you make it larger?", "make it big",
            "make it a bit bigger", "grow it", "i want it bigger", "draw it bigger", "larger", "the same but big",
            "make it large", "make it larger", "bigger", "a bigger one please", "enlarge it", "can you enlarge it?",
            "expand it", "blow it up", "make it grow", "i want a big one", "make it a big one", "go bigger",
            "even bigger", "a larger one", "make it huge", "make it giant", "it's too small",
            "too small, make it bigger", "bump up the size", "make the size big", "change the size to big",
            "could you make it bigger?"),
    smaller=("make it smaller", "the same shape but smaller", "smaller please", "can you make it small?",
             "make it a bit smaller", "shrink it", "i want it smaller", "draw it smaller", "make it little",
             "the same but small", "reduce it", "make it smaller please", "smaller", "a smaller one please",
             "can you shrink it?", "make it tiny", "go smaller", "even smaller", "make it a small one",
             "it's too big", "too big, make it smaller", "make the size small", "change the size to small",
             "reduce the size", "cut it down in size", "could you make it smaller?", "make it little please",
             "a little one"),
    reshape=("now make it a {sh}", "the same colour but a {sh}", "make it a {sh} instead", "change it to a {sh}",
             "i want a {sh} instead", "draw a {sh} instead", "same but as a {sh}", "can it be a {sh}?",
             "use a {sh} shape", "make the shape a {sh}", "make it a {sh} please", "a {sh} please", "{sh} instead",
             "now a {sh}", "i want it as a {sh}", "change it into a {sh}", "could you make it a {sh}?",
             "let's do a {sh}", "go with a {sh}", "a {sh} would be better", "replace it with a {sh}",
             "use a {sh} instead", "redo it as a {sh}", "make that a {sh}", "what if it was a {sh}?",
             "reshape it into a {sh}", "i prefer a {sh}"),
    move=("move it {mv}", "now move it {mv}", "can you move it {mv}?", "shift it {mv}", "push it {mv}",
          "put it {pos}", "draw it {pos} now", "same but {pos}", "move the shape {mv}", "put it {pos} please",
          "can you put it {pos}?", "i want it {pos}", "it should be {pos}", "have it {pos}", "let's put it {pos}",
          "move it {mv} please", "nudge it {mv}", "bring it {mv}", "position it {pos}", "now {pos}", "{pos} please",
          "same thing {pos}", "shift it over {mv}", "can it go {pos}?"),
    chat=(*D.SMALL_TALK, ("hi", "hi! what shall we draw?"), ("hey", "hey! what shall we draw?"),
          ("thank you so much", "you are welcome!"), ("nice work", "thank you!"), ("wow", "glad you like it!"),
          ("awesome", "glad you like it!"), ("love it", "glad you like it!"), ("haha", "glad you like it!"),
          ("great job", "thank you!"), ("perfect", "great!"), ("not bad", "thank you!"), ("beautiful", "thank you!"),
          ("who are you?", "i am a bot that draws shapes."), ("what is your name?", "i am gill, i draw shapes."),
          ("good night", "good night!"), ("you are fun", "thank you!"), ("yes", "great!"), ("amazing", "thank you!"),
          ("interesting", "thank you!"), ("ok", "ok!"), ("sounds good", "great!"), ("got it", "great!"),
          ("sure", "great!"), ("nice one", "thank you!"), ("thx", "you are welcome!"), ("ty", "you are welcome!"),
          ("cheers", "you are welcome!"), ("lol", "glad you like it!"), ("hmm", "take your time!"),
          ("one sec", "take your time!"), ("brb", "take your time!"), ("good evening", "good evening!"),
          ("hello", "hello! what shall we draw?"), ("how are you?", "i am fine, thanks!"),
          ("that's great", "glad you like it!"), ("looks good", "thank you!"), ("so cool", "glad you like it!"),
          ("neat", "thank you!"), ("nice", "thank you!"), ("ok thanks", "you are welcome!"), ("i see", "great!"),
          ("hmm ok", "great!"), ("what can you do?", "i draw shapes and find pictures."), ("cute", "thank you!"),
          ("omg", "glad you like it!"), ("well done", "thank you!"), ("ok great", "great!"), ("that works", "great!"),
          ("yay", "glad you like it!")),
    story_open=("once there was {cap}", "there was {cap}", "first i saw {cap}", "imagine {cap}", "there is {cap}",
                "it starts with {cap}", "here is a story: there was {cap}", "once upon a time there was {cap}",
                "let me tell you a story: {cap}", "story time: there was {cap}", "there once was {cap}"),
    story_colour=("then it turned {c}", "then it became {c}", "next it changed to {c}", "and then it turned {c}",
                  "soon it was {c}", "suddenly it turned {c}", "then it got {c}", "then its colour became {c}"),
    story_bigger=("then it grew bigger", "next it got bigger", "and then it grew", "soon it was big",
                  "then it got big", "suddenly it grew", "then it became large"),
    story_smaller=("then it shrank", "then it got smaller", "next it became small", "soon it was small",
                   "then it became little", "then it shrank a lot", "suddenly it got small"),
    story_shape=("then it changed into a {sh}", "next it became a {sh}", "and then it was a {sh}",
                 "suddenly it became a {sh}", "then it changed shape into a {sh}"),
    story_move=("then it moved {mv}", "next it went {mv}", "and then it went {mv}", "then it rolled {mv}",
                "then it flew {mv}", "it then moved {mv}"),
    story_ask=("draw how it looks now", "show me how it ended", "draw the last scene", "can you draw it now?",
               "draw it as it is now", "now draw it", "show me the final shape", "draw what it looks like now",
               "show me the end", "show me what it became", "draw the final one", "can you show me how it looks now?",
               "and what about now? draw it"),
)

# The held-out wordings of models/gill-tiny/eval/threads.json: no training path uses these templates.
EVAL = Bank(
    ask=("can u draw {cap}", "i'd like {cap}", "let's see {cap}", "paint {cap} please",
         "could you sketch {cap} for me"),
    favourite=("just so you know, my favourite colour is {c}", "{c} has always been my favourite colour",
               "fyi {c} is the colour i like best", "my favourite colour? {c}"),
    ask_favourite=("could you paint a {sz} {sh} {pos} using my favourite colour", "go ahead and draw a {sz} {sh} {pos} in my favourite colour",
                   "{sz} {sh} {pos} in my favourite colour please"),
    recolour=("try {c} now", "switch it to {c}", "what about in {c}", "recolour it {c}", "turn it {c}"),
    bigger=("increase the size", "could it be bigger?", "scale it up", "now a bigger one"),
    smaller=("decrease the size", "could it be smaller?", "scale it down", "now a smaller one"),
    reshape=("swap it for a {sh}", "change the shape to a {sh}", "i'd rather have a {sh}", "how about a {sh}"),
    move=("slide it {mv}", "drag it {mv}", "place it {pos} instead"),
    chat=(("cool", ""), ("thanks", ""), ("hmm let me think", ""), ("lol nice", ""), ("good morning", ""),
          ("ok one more", "")),
    story_open=("picture this: {cap}", "a long time ago there was {cap}", "in my dream i saw {cap}"),
    story_colour=("later its colour changed to {c}", "after that it went {c}"),
    story_bigger=("after that it became huge",),
    story_smaller=("after that it became tiny",),
    story_shape=("after that it turned into a {sh}",),
    story_move=("after that it travelled {mv}",),
    story_ask=("what does it look like at the end? draw it", "picture the ending for me"),
)

BANKS = {"train": TRAIN, "eval": EVAL}


def _skeleton(template: str) -> str:
    """A template without placeholders and punctuation, for comparing banks."""
    return " ".join(re.sub(r"\{\w+\}|[^\w' ]", " ", template.lower()).split())


def check_banks_disjoint() -> None:
    """Raises ValueError when a training template is also a held-out one (the held-out set must stay unseen)."""
    train = {_skeleton(t) for t in TRAIN.templates()}
    shared = sorted({_skeleton(t) for t in EVAL.templates()} & train)
    if shared:
        raise ValueError(f"training wordings overlap the held-out ones: {shared}")


# noise: spelling, typos, endings ---------------------------------------------------------------------------

US_SPELLING = {"colour": "color", "colours": "colors", "favourite": "favorite", "centre": "center",
               "recolour": "recolor", "coloured": "colored"}
ENDINGS = ("", "", ".", ".", "!", "?", " :)", "!!")
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:  # swapped neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:  # dropped letter
        return word[:i] + word[i + 1:]
    if kind == 2:  # doubled letter
        return word[:i] + word[i] + word[i:]
    row = next((r for r in KEYBOARD_ROWS if word[i] in r), None)  # a key next to the right one
    if row is None:
        return word
    j = row.index(word[i])
    near = row[max(0, j - 1)] if j and rng.random() < 0.5 or j + 1 == len(row) else row[j + 1]
    return word[:i] + near + word[i + 1:]


def roughen(text: str, rng: random.Random, us: bool, typo_rate: float) -> str:
    """`text` as a person types it: US spelling when `us`, a typo in some words of four letters or more."""
    words = text.split(" ")
    for k, w in enumerate(words):
        core = w.strip(".,!?:;")
        if us and core in US_SPELLING:
            w = w.replace(core, US_SPELLING[core])
            core = US_SPELLING[core]
        if len(core) >= 4 and core.isalpha() and rng.random() < typo_rate:
            w = w.replace(core, _typo(core, rng))
        words[k] = w
    return " ".join(words)


# threads ------------------------------------------------------------------------------------------------

ACKNOWLEDGE = ("{c} is a lovely colour.", "{c}, noted!", "got it, you love {c}.", "nice choice, {c} it is.",
               "i will remember {c}.", "{c} is a great choice.")
STORY_REPLIES = ("i see.", "and then?", "ok.", "what happened next?")


def _place(obj: D.Obj, rng: random.Random) -> dict[str, str]:
    return {"c": obj.colour, "sz": rng.choice(D.SIZE_WORDS[obj.size]), "sh": obj.shape,
            "pos": rng.choice(D.POSITION_PHRASES[obj.position]), "mv": D.MOVE_PHRASES[obj.position]}


EDITS = ("recolour", "resize", "reshape", "move")
COMPOUND_RATE = 0.25  # training threads whose last request changes two attributes ("make it red and smaller")
COMPOUND_JOINS = (" and ", ", and ", " and also ", ", then ", ". also ", " + ")
# the changed attributes in one phrase: {desc} is a caption of only what changed ("small red one", "blue star")
COMPOUND_DESCRIBED = ("now a {desc}", "make it a {desc} instead", "i want a {desc} now", "can it be a {desc}?",
                      "same but a {desc}", "let's have a {desc}", "a {desc} please", "redo it as a {desc}")


def _changed(obj: D.Obj, edit: str, rng: random.Random) -> D.Obj:
    """`obj` with the attribute `edit` names set to another value."""
    if edit == "recolour":
        return replace(obj, colour=rng.choice([c for c in D.COLOURS if c != obj.colour]))
    if edit == "resize":
        return replace(obj, size="small" if obj.size == "big" else "big")
    if edit == "reshape":
        return replace(obj, shape=rng.choice([s for s in D.SHAPES if s != obj.shape]))
    return replace(obj, position=rng.choice([p for p in D.POSITIONS if p != obj.position]))


def _story(rng: random.Random, split: str, b: Bank) -> tuple[list[str], D.Obj]:
    """Sentences of a story about one object whose final state belongs to `split`, and that state."""
    while True:
        obj = D.sample_scene(rng, "train" if split == "train" else rng.choice(D.SPLITS), 1).objects[0]
        sentences = [rng.choice(b.story_open).format(cap=D.caption(D.Scene((obj,)), rng))]
        for edit in [rng.choice(EDITS) for _ in range(rng.randint(1, 3))]:
            obj = _changed(obj, edit, rng)
            sentences.append({
                "recolour": lambda: rng.choice(b.story_colour).format(c=obj.colour),
                "resize": lambda: rng.choice(b.story_bigger if obj.size == "big" else b.story_smaller),
                "reshape": lambda: rng.choice(b.story_shape).format(sh=obj.shape),
                "move": lambda: rng.choice(b.story_move).format(mv=D.MOVE_PHRASES[obj.position]),
            }[edit]())
        if D.split_of(D.Scene((obj,)).key()) == split:
            return sentences, obj


def _edit_templates(b: Bank, edit: str, final: D.Obj) -> tuple[str, ...]:
    return {"recolour": b.recolour, "reshape": b.reshape, "move": b.move,
            "resize": b.bigger if final.size == "big" else b.smaller}[edit]


def _edit_request(b: Bank, edits: list[str], final: D.Obj, v: dict[str, str], rng: random.Random) -> str:
    """The message asking for `final` by naming what changes: one edit's template, or for two edits either both
    templates joined or one phrase describing only the changed attributes."""
    if len(edits) == 1:
        return rng.choice(_edit_templates(b, edits[0], final)).format(**v)
    if "move" not in edits and rng.random() < 0.5:
        words = [v["sz"] if "resize" in edits else "", final.colour if "recolour" in edits else "",
                 final.shape if "reshape" in edits else "one"]
        return rng.choice(COMPOUND_DESCRIBED).format(desc=" ".join(w for w in words if w))
    parts = [rng.choice(_edit_templates(b, e, final)).format(**v) for e in edits]
    return parts[0].rstrip("?") + rng.choice(COMPOUND_JOINS) + parts[1]


def _said(edit: str, final: D.Obj) -> str:
    """What a reply to the edit `edit` must name ("|" separates words that all count)."""
    return {"recolour": final.colour, "reshape": final.shape, "resize": "|".join(D.SIZE_WORDS[final.size]),
            "move": "|".join(w.split()[-1] for w in D.POSITION_PHRASES[final.position])}[edit]


def make_thread(rng: random.Random, split: str, bank: str = "train", typo_rate: float = 0.04) -> D.Dialogue:
    """A thread whose last turn asks for `final_scene`, a single object of `split`, and only makes sense with
    the earlier turns. `Dialogue.turn_types` says what each turn is."""
    b = BANKS[bank]
    kind = rng.choice(("favourite", "recolour", "resize", "reshape", "move", "story"))
    final = D.sample_scene(rng, split, 1).objects[0]
    turns: list[tuple[str, str]] = []
    types: list[str] = []
    unstated: tuple[str, ...] = ()
    mentions: list[list[str]] = []

    def chat(p: float) -> None:
        if rng.random() < p:
            q, a = rng.choice(b.chat)
            turns.append((q, a or "thank you!"))
            types.append("chat")
            mentions.append([])

    chat(0.15)
    v = _place(final, rng)
    if kind == "favourite":
        turns.append((rng.choice(b.favourite).format(**v), rng.choice(ACKNOWLEDGE).format(c=final.colour)))
        types.append("statement")
        mentions.append([final.colour])
        chat(0.4)
        ask = rng.choice(b.ask_favourite)
        if rng.random() < 0.3:  # where is left to the bot
            ask, unstated = ask.replace(" {pos}", ""), ("position",)
        last = ask.format(**v)
        said = [final.colour, final.shape]
    elif kind == "story":
        sentences, final = _story(rng, split, b)
        if rng.random() < 0.5:  # the whole story in one message
            turns.append((". ".join(sentences), rng.choice(STORY_REPLIES)))
            types.append("story")
            mentions.append([])
        else:
            for s in sentences:
                turns.append((s, rng.choice(STORY_REPLIES)))
                types.append("story")
                mentions.append([])
        last = rng.choice(b.story_ask)
        said = [final.colour, final.shape]
    else:
        first = _changed(final, kind, rng)
        edits = [kind]
        if bank == "train" and rng.random() < COMPOUND_RATE:  # two changes in one message
            edits.append(rng.choice([e for e in EDITS if e != kind]))
            first = _changed(first, edits[1], rng)
            kind = "compound"
        s0 = D.Scene((first,))
        turns.append((rng.choice(b.ask).format(cap=D.caption(s0, rng)), D.here_is(s0, rng)))
        types.append("request")
        mentions.append([first.colour, first.shape])
        chat(0.4)
        last = _edit_request(b, edits, final, v, rng)
        said = [_said(e, final) for e in edits]
    final_scene = D.Scene((final,))
    turns.append((last, D.here_is(final_scene, rng)))
    types.append("request")
    mentions.append(said)
    us = rng.random() < 0.5
    turns = [(_end(roughen(q, rng, us, typo_rate), rng), a) for q, a in turns]
    drawn = [None] * (len(turns) - 1) + [final_scene]
    if kind not in ("favourite", "story"):  # the first picture of an edit (or of two)
        drawn[types.index("request")] = s0
    return D.Dialogue(turns, final_scene, kind, types, unstated, mentions, drawn)


def _end(text: str, rng: random.Random) -> str:
    return text if text.endswith(("?", "!", ".")) else text + rng.choice(ENDINGS)


# questions about a posted picture ---------------------------------------------------------------------------

DESCRIBE_QUESTIONS = ("what is this?", "what do you see?", "describe this picture", "what is in this picture?",
                      "can you describe it?", "look at this", "check this out", "what did i draw?", "")
COLOUR_QUESTIONS = ("what colour is it?", "which colour is this?", "what colour is the shape?")
SHAPE_QUESTIONS = ("what shape is this?", "which shape is it?", "what kind of shape is this?")


def image_question(scene: D.Scene | None, name: str | None, rng: random.Random) -> tuple[str, str]:
    """A question a person asks about a picture they post, and the answer about that picture: a scene (its
    colour and shape questions only for one object) or an emoji `name`."""
    us = rng.random() < 0.5
    if scene is None:
        q, a = rng.choice(DESCRIBE_QUESTIONS), f"it is {name}."
    else:
        u = rng.random()
        one = len(scene.objects) == 1
        if one and u < 0.3:
            q, a = rng.choice(COLOUR_QUESTIONS), f"it is {scene.objects[0].colour}."
        elif one and u < 0.55:
            q, a = rng.choice(SHAPE_QUESTIONS), f"it is a {scene.objects[0].shape}."
        else:
            q, a = rng.choice(DESCRIBE_QUESTIONS), rng.choice(("i see ", "it is ", "this is ")) + D.caption(scene, rng) + "."
    return roughen(q, rng, us, 0.04), a
