"""Seeded, reproducible data: a 64x64 shapes world (scenes, captions, dialogues, stories) and named emoji images.

Everything the frozen backbones and the GILL stage train or evaluate on comes from here. Splits of the
shapes world are by scene *content* (a hash of the canonical description, without pixel jitter), so a
held-out scene's attribute combination is never seen in training. Emoji are split by name the same way.

Typical use:
    rng = random.Random(seed)
    scene = sample_scene(rng, "train")
    img = render(scene, rng)            # uint8 [64,64,3], white background
    text = caption(scene, rng)          # e.g. "a big red circle to the left of a small blue star"
    dlg = make_dialogue(rng, "train")   # Dialogue: .prompt() ends with "\nA:", .final_scene, .last_message
    story = make_story(rng, "train")    # Story: .sentences[i] describes .scenes[i]; the last needs the earlier
    emoji = load_emoji(Path("node_modules/emoji-datasource-google"))
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 165, 60),
    "blue": (40, 85, 225),
    "purple": (135, 55, 190),
    "pink": (245, 125, 200),
    "black": (30, 30, 30),
}
SIZES: dict[str, int] = {"small": 8, "big": 14}  # radius in pixels
SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}
POSITIONS: dict[str, tuple[int, int]] = {  # centre (x, y)
    "left": (17, 32), "right": (47, 32), "top": (32, 17), "bottom": (32, 47), "middle": (32, 32),
}
POSITION_PHRASES = {
    "left": ("on the left",), "right": ("on the right",), "top": ("at the top",),
    "bottom": ("at the bottom",), "middle": ("in the middle", "in the centre"),
}
# relation -> (position of the first object, position of the second, phrase)
MOVE_PHRASES = {"left": "to the left", "right": "to the right", "top": "to the top", "bottom": "to the bottom",
                "middle": "to the middle"}
RELATIONS: dict[str, tuple[str, str, str]] = {
    "left of": ("left", "right", "to the left of"),
    "right of": ("right", "left", "to the right of"),
    "above": ("top", "bottom", "above"),
    "below": ("bottom", "top", "below"),
}
BACKGROUND = (255, 255, 255)
SPLITS = ("train", "val", "test")
JITTER = 2


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    position: str

    def phrase(self, rng: random.Random | None = None) -> str:
        size = SIZE_WORDS[self.size][0] if rng is None else rng.choice(SIZE_WORDS[self.size])
        return f"{size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """One or two objects; with two, `relation` says where objects[0] is relative to objects[1]."""

    objects: tuple[Obj, ...]
    relation: str | None = None

    def key(self) -> str:
        objs = ";".join(f"{o.shape},{o.colour},{o.size},{o.position}" for o in self.objects)
        return f"{objs}|{self.relation or ''}"

    def to_json(self) -> dict:
        return {"objects": [o.__dict__ for o in self.objects], "relation": self.relation}


def split_of(key: str, val_frac: float = 0.1, test_frac: float = 0.1) -> str:
    """Deterministic split of a content key: 'train' | 'val' | 'test'."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x100000000
    return "test" if u < test_frac else "val" if u < test_frac + val_frac else "train"


def _random_obj(rng: random.Random, position: str) -> Obj:
    return Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)), position)


def sample_scene(rng: random.Random, split: str, n_objects: int | None = None) -> Scene:
    """A random scene whose content belongs to `split` (rejection sampling on the content hash)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    while True:
        n = n_objects or rng.choice((1, 2))
        if n == 1:
            scene = Scene((_random_obj(rng, rng.choice(list(POSITIONS))),))
        else:
            rel = rng.choice(list(RELATIONS))
            a, b, _ = RELATIONS[rel]
            scene = Scene((_random_obj(rng, a), _random_obj(rng, b)), rel)
        if split_of(scene.key()) == split:
            return scene


# rendering -------------------------------------------------------------------------------------------

def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        pts = []
        for i in range(10):
            a = -np.pi / 2 + i * np.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.35
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    return None


@lru_cache(maxsize=None)
def _sprite(shape: str, size: str) -> np.ndarray:
    """Anti-aliased coverage mask [2R+1, 2R+1] in 0..1 of a shape centred in its box (drawn at 8x, downsampled)."""
    r = SIZES[size]
    box = 2 * r + 1
    ss = 8
    im = Image.new("L", (box * ss, box * ss), 0)
    draw = ImageDraw.Draw(im)
    c = (r + 0.5) * ss
    if shape == "circle":
        draw.ellipse([c - r * ss, c - r * ss, c + r * ss, c + r * ss], fill=255)
    else:
        poly = _polygon(shape, c, c, r * ss)
        if poly is None:
            raise ValueError(f"unknown shape {shape!r}")
        draw.polygon(poly, fill=255)
    return np.asarray(im.resize((box, box), Image.BOX), dtype=np.float32) / 255.0


def render(scene: Scene, rng: random.Random | None = None) -> np.ndarray:
    """uint8 [64,64,3] image of `scene` on a plain white background; `rng` adds up to ±2 px of jitter."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    img[:] = BACKGROUND
    for obj in scene.objects:
        mask = _sprite(obj.shape, obj.size)
        r = SIZES[obj.size]
        cx, cy = POSITIONS[obj.position]
        if rng is not None:
            cx += rng.randint(-JITTER, JITTER)
            cy += rng.randint(-JITTER, JITTER)
        x0, y0 = cx - r, cy - r
        region = img[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        m = mask[: region.shape[0], : region.shape[1], None]
        region[:] = region * (1 - m) + np.asarray(COLOURS[obj.colour], np.float32) * m
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# language ----------------------------------------------------------------------------------------------

def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """A caption of `scene`. Without `rng`, the canonical one (the ground-truth text used for evaluation)."""
    if len(scene.objects) == 1:
        o = scene.objects[0]
        pos = POSITION_PHRASES[o.position][0] if rng is None else rng.choice(POSITION_PHRASES[o.position])
        return f"a {o.phrase(rng)} {pos}"
    a, b = scene.objects
    rel = scene.relation
    if rng is not None and rng.random() < 0.5:  # the same scene described from the other object
        a, b = b, a
        rel = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
    return f"a {a.phrase(rng)} {RELATIONS[rel][2]} a {b.phrase(rng)}"


SMALL_TALK = (
    ("hello there.", "hello! what shall we draw?"),
    ("how are you today?", "i am fine, thanks for asking."),
    ("i like drawing.", "me too, it is fun."),
    ("that looks nice.", "thank you!"),
    ("what can you do?", "i can draw shapes in many colours."),
)


@dataclass
class Dialogue:
    """Turns of (user message, reply). The last reply states the resolved scene; `prompt()` stops before it."""

    turns: list[tuple[str, str]]
    final_scene: Scene
    kind: str
    # per turn "request" | "statement" | "chat" | "story" (wordings.make_thread fills it)
    turn_types: list[str] = field(default_factory=list)
    # attributes of final_scene the last turn leaves to the bot (e.g. "position")
    unstated: tuple[str, ...] = ()
    # per turn, what its reply should restate (alternatives joined by "|"), for the reply rubric
    reply_mentions: list[list[str]] = field(default_factory=list)
    # per turn, the scene the bot drew in reply (None for a turn answered in words only)
    turn_scenes: list[Scene | None] = field(default_factory=list)

    @property
    def last_message(self) -> str:
        return self.turns[-1][0]

    def prompt(self) -> str:
        """GILL's dialogue template: 'Q: {text}\\nA:' per turn, earlier replies appended with a newline."""
        parts = [f"Q: {q}\nA: {a}\n" for q, a in self.turns[:-1]]
        return "".join(parts) + f"Q: {self.turns[-1][0]}\nA:"

    def text(self) -> str:
        return self.prompt() + f" {self.turns[-1][1]}"


def here_is(scene: Scene, rng: random.Random) -> str:
    """The bot's reply to a request for `scene`."""
    return rng.choice(("here is ", "ok, here is ", "sure, here is ")) + caption(scene, rng) + "."


def _single(rng: random.Random, split: str) -> Obj:
    return sample_scene(rng, split, 1).objects[0]


def make_dialogue(rng: random.Random, split: str) -> Dialogue:
    """A multi-turn dialogue whose last message only makes sense with the earlier ones.

    The final scene is single-object and belongs to `split`; earlier scenes are unconstrained."""
    kind = rng.choice(("favourite", "recolour", "resize", "reshape", "move"))
    final = _single(rng, split)
    turns: list[tuple[str, str]] = []
    if kind == "favourite":
        turns.append((rng.choice((f"my favourite colour is {final.colour}.", f"i really love the colour {final.colour}.")),
                      rng.choice((f"{final.colour} is a lovely colour.", "nice choice!", "noted."))))
        if rng.random() < 0.5:
            turns.append(rng.choice(SMALL_TALK))
        pos = POSITION_PHRASES[final.position][0]
        last = rng.choice((f"draw a {SIZE_WORDS[final.size][0]} {final.shape} {pos} in my favourite colour.",
                           f"can you make a {SIZE_WORDS[final.size][0]} {final.shape} {pos} in my favourite colour?"))
    else:
        first = {
            "recolour": lambda: replace(final, colour=rng.choice([c for c in COLOURS if c != final.colour])),
            "resize": lambda: replace(final, size="small" if final.size == "big" else "big"),
            "reshape": lambda: replace(final, shape=rng.choice([s for s in SHAPES if s != final.shape])),
            "move": lambda: replace(final, position=rng.choice([p for p in POSITIONS if p != final.position])),
        }[kind]()
        s0 = Scene((first,))
        turns.append((rng.choice(("draw ", "show me ", "please draw ")) + caption(s0, rng) + ".", here_is(s0, rng)))
        if rng.random() < 0.3:
            turns.append(rng.choice(SMALL_TALK))
        last = {
            "recolour": lambda: rng.choice((f"now make it {final.colour}.", f"change the colour to {final.colour}.")),
            "resize": lambda: (rng.choice(("the same shape but bigger.", "make it bigger.")) if final.size == "big"
                               else rng.choice(("the same shape but smaller.", "make it smaller."))),
            "reshape": lambda: rng.choice((f"now make it a {final.shape}.", f"the same colour but a {final.shape}.")),
            "move": lambda: f"move it {MOVE_PHRASES[final.position]}.",
        }[kind]()
    final_scene = Scene((final,))
    turns.append((last, here_is(final_scene, rng)))
    return Dialogue(turns, final_scene, kind)


@dataclass
class Story:
    """Sentences, each describing the scene in `scenes` at that point; each step changes one attribute, so the
    last sentence ("then it turned blue.") needs the earlier ones. `summary` restates the final scene."""

    sentences: list[str]
    scenes: list[Scene]
    summary: str = field(default="")

    @property
    def final_scene(self) -> Scene:
        return self.scenes[-1]

    def text(self, with_summary: bool = False) -> str:
        return " ".join(self.sentences + ([self.summary] if with_summary else []))


def make_story(rng: random.Random, split: str, steps: int | None = None) -> Story:
    """A short story of 2-4 sentences about one object whose final state belongs to `split`."""
    n = steps or rng.randint(2, 4)
    while True:
        obj = _single(rng, "train" if split == "train" else rng.choice(SPLITS))
        s0 = Scene((obj,))
        sentences = [rng.choice(("once there was ", "there was ", "first i saw ")) + caption(s0, rng) + "."]
        scenes = [s0]
        for _ in range(n - 1):
            what = rng.choice(("colour", "size", "shape", "position"))
            if what == "colour":
                obj = replace(obj, colour=rng.choice([c for c in COLOURS if c != obj.colour]))
                sentences.append(rng.choice((f"then it turned {obj.colour}.", f"then it became {obj.colour}.")))
            elif what == "size":
                obj = replace(obj, size="small" if obj.size == "big" else "big")
                sentences.append("then it grew bigger." if obj.size == "big" else "then it shrank.")
            elif what == "shape":
                obj = replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
                sentences.append(f"then it changed into a {obj.shape}.")
            else:
                obj = replace(obj, position=rng.choice([p for p in POSITIONS if p != obj.position]))
                sentences.append(f"then it moved {MOVE_PHRASES[obj.position]}.")
            scenes.append(Scene((obj,)))
        if split_of(scenes[-1].key()) == split:
            return Story(sentences, scenes, f"now there is {caption(scenes[-1], rng)}.")


# emoji -------------------------------------------------------------------------------------------------

EMOJI_SKIP_CATEGORIES = ("Flags", "Component")  # flags are country codes, components are skin-tone swatches


@dataclass
class EmojiSet:
    names: list[str]
    images: np.ndarray  # uint8 [N,64,64,3], alpha flattened onto white
    splits: list[str]
    files: list[str]


def load_emoji(emoji_dir: Path, limit: int | None = None) -> EmojiSet:
    """Named emoji from an `emoji-datasource-google` folder (emoji.json + img/google/64/*.png).

    Takes every emoji with a Google image outside EMOJI_SKIP_CATEGORIES, names from `name` (lowercased),
    sorted by `sort_order`. A missing or unreadable image raises an error naming the file."""
    emoji_dir = Path(emoji_dir)
    meta_path = emoji_dir / "emoji.json"
    try:
        entries = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read emoji metadata {meta_path}: {e}") from e
    chosen = sorted(
        (e for e in entries if e.get("has_img_google") and e.get("category") not in EMOJI_SKIP_CATEGORIES),
        key=lambda e: e["sort_order"],
    )
    if limit is not None:
        chosen = chosen[:limit]
    names, images, splits, files = [], [], [], []
    seen: set[str] = set()
    for e in chosen:
        name = (e.get("name") or e.get("short_name") or "").strip().lower()
        if not name:
            raise ValueError(f"emoji {e.get('image')} in {meta_path} has no name")
        if name in seen:
            continue  # the same name twice would make retrieval ground truth ambiguous
        seen.add(name)
        path = emoji_dir / "img" / "google" / "64" / e["image"]
        try:
            with Image.open(path) as im:
                rgba = im.convert("RGBA")
        except OSError as err:
            raise ValueError(f"cannot read emoji image {path}: {err}") from err
        if rgba.size != (IMAGE_SIZE, IMAGE_SIZE):
            rgba = rgba.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        white = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        images.append(np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8))
        names.append(name)
        splits.append(split_of("emoji:" + name))
        files.append(str(path))
    if not names:
        raise ValueError(f"no usable emoji found in {meta_path}")
    return EmojiSet(names, np.stack(images), splits, files)


# other art styles and richer text per emoji (the retrieval refinement, gill_train.stage_retrieval) --------------

# Twitter's art (twemoji, emoji-datasource-twitter) is the held-out style of EVAL.md's cross-style retrieval row:
# it must never reach a training path.
HELD_OUT_STYLES = ("twitter", "twemoji")


def assert_not_held_out_style(path: Path | str) -> None:
    """Raises AssertionError when `path` points into a held-out (evaluation-only) emoji art style."""
    low = str(path).lower()
    bad = [s for s in HELD_OUT_STYLES if s in low]
    assert not bad, f"{path} is {bad[0]} emoji art, held out for evaluation: it must never be used for training"


def _code(unified_or_file: str) -> str:
    """Code points of an emoji without variation selectors, upper case: '2764-FE0F' and '2764.png' -> '2764'."""
    stem = Path(unified_or_file).name.split(".")[0].upper()
    return "-".join(c for c in stem.split("-") if c != "FE0F")


def load_style_images(files: Sequence[str], style_dir: Path, *, training: bool) -> tuple[np.ndarray, np.ndarray]:
    """The same emoji as `files` (EmojiSet.files, Google image paths) in another art style, 64 px on white.

    `style_dir` is a folder of `<CODE>.png` (OpenMoji as fetch_emoji_art.mjs writes it) or an emoji-datasource
    package (`emoji.json` + `img/<vendor>/64/`). -> (images uint8 [N,64,64,3], found bool [N]); a missing
    image is a black-free white square with found False. `training=True` refuses the held-out styles."""
    style_dir = Path(style_dir)
    if training:
        assert_not_held_out_style(style_dir.resolve())
    by_code: dict[str, Path] = {}
    meta = style_dir / "emoji.json"
    if meta.exists():
        vendors = [d.name for d in (style_dir / "img").iterdir() if d.is_dir()]
        if len(vendors) != 1:
            raise ValueError(f"{style_dir}/img should hold one vendor's art, found {vendors}")
        if training:
            assert_not_held_out_style(vendors[0])
        for e in json.loads(meta.read_text()):
            if e.get(f"has_img_{vendors[0]}"):
                by_code[_code(e["image"])] = style_dir / "img" / vendors[0] / "64" / e["image"]
    else:
        by_code = {_code(p.name): p for p in style_dir.glob("*.png")}
    images = np.full((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    found = np.zeros(len(files), dtype=bool)
    for i, f in enumerate(files):
        path = by_code.get(_code(f))
        if path is None:
            continue
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
        if rgba.size != (IMAGE_SIZE, IMAGE_SIZE):
            rgba = rgba.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        white = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        images[i] = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
        found[i] = True
    return images, found


def load_emoji_keywords(files: Sequence[str], path: Path) -> list[list[str]]:
    """CLDR short name and keywords of each emoji of `files` from emojibase-data's `en/data.json` (lower case,
    without the emoji's own name words repeated as a lone keyword list): [] where the emoji is not listed."""
    entries = json.loads(Path(path).read_text())
    by_code = {_code(e["hexcode"]): e for e in entries}
    out = []
    for f in files:
        e = by_code.get(_code(f))
        if e is None:
            out.append([])
            continue
        words = [e.get("label", "")] + list(e.get("tags", []))
        seen, kept = set(), []
        for w in words:
            w = w.strip().lower()
            if w and w not in seen:
                seen.add(w)
                kept.append(w)
        out.append(kept)
    return out


def emoji_wordings(name: str) -> tuple[str, str, str]:
    """Every way a name is put in a prompt: the bare name first (what people type into /find)."""
    return (name, f"a picture of {name}", f"an emoji of {name}")


def emoji_caption(name: str, rng: random.Random | None = None) -> str:
    if rng is None:
        return name
    return rng.choice(emoji_wordings(name))


# corpora -----------------------------------------------------------------------------------------------

def lm_documents(rng: random.Random, n: int, split: str, emoji_names: Sequence[str]) -> list[str]:
    """Training documents for the LM: captions, dialogues, stories (half with a summary), emoji names."""
    docs = []
    for _ in range(n):
        u = rng.random()
        if u < 0.25:
            docs.append(caption(sample_scene(rng, split), rng) + ".")
        elif u < 0.55:
            docs.append(make_dialogue(rng, split).text())
        elif u < 0.8:
            docs.append(make_story(rng, split).text(with_summary=rng.random() < 0.5))
        elif emoji_names:
            docs.append(emoji_caption(rng.choice(list(emoji_names)), rng) + ".")
        else:
            docs.append(caption(sample_scene(rng, split), rng) + ".")
    return docs
