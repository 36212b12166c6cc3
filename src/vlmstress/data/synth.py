"""`synth`: a synthetic multiple-choice benchmark drawn with PIL, deterministic from the seed.

Scenes are shapes on a 4x4 grid of 16 px cells in a 64 px image, one object per cell, so that each
2x2-merged Qwen2.5-VL image token (16 px with patch 8) sees one object. The floor is tinted by
position (red ramp left->right, blue ramp top->bottom) so every patch carries where it is: the
Qwen2.5-VL vision tower has only relative (rotary) positions, and a 1M-parameter model did not learn
absolute position from them in minutes (measured here, docs/tiny-model.md: spatial stayed at chance).

Five families mirror the paper's benchmarks:
- spatial   (WhatsUp, CV-Bench Relation): where is the X relative to the Y?
- count     (CV-Bench Count, Pixmo-Count): how many Xs are there?
- depth     (3DSRBench, CV-Bench Depth): which shape is closest to the camera? (the large one)
- attribute (V*): what colour is the small X?
- twohop    (Spatial-MM Multihop): what colour is the shape left of the X?

A difficulty axis, opt-in (`synth-hard:N`, `hard_share=`; the default `synth` has none, and the
shipped tiny model was trained without it): 40% of the colour questions (attribute, two-hop) are
*hard*: the object's colour is mixed 40-60% of the way toward a confuser (one of the other
options), an even blend that the image cannot resolve (the same picture arises from the confuser
mixed toward the true colour), so the best possible answer is a coin flip between the two. Real
models are unsure because some questions are ambiguous; a model trained on this can learn to say
so, in its reasoning and in its letter probabilities. `facts["difficulty"]` records it per sample
("easy" / "hard", with `confuser`, `blend` and the drawn colour when hard), so reports can slice
by it.

Every sample carries its scene facts, from which correct or wrong reasoning and captions are
written for any option (think_text, caption_text), in the words the tiny model is trained on. On a
hard sample the correct reasoning says what the image leaves open ("It is white or yellow.") and
lists both options, so its answer is a choice the reasoning does not settle.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from vlmstress.data.schema import Sample, letters

IMAGE_SIZE = 64
GRID = 4
CELL = IMAGE_SIZE // GRID
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (245, 225, 20),
    "white": (250, 250, 250),
}
RADIUS = {"small": 3, "medium": 5, "large": 7}
RELATIONS = ("left of", "right of", "above", "below")
# Words that name a value an option can carry (the tiny model's tokenizer keeps each one whole).
VALUE_WORDS = (*SHAPES, *COLOURS, *RELATIONS, *RADIUS, "largest")
FAMILIES = ("spatial", "count", "depth", "attribute", "twohop")
# The families with a difficulty axis, the share of their samples drawn hard, and how far a hard
# sample's decisive colour is mixed toward its confuser: symmetric around 1/2, so that no mix tells
# which of the two colours is the true one (a mix at share t toward b looks like b mixed 1 - t toward a).
HARD_FAMILIES = ("attribute", "twohop")
HARD_SHARE = 0.4  # of the colour questions, in `synth-hard`
COLOUR_BLEND = (0.4, 0.6)
# The split is part of the seed, so train and test scenes come from disjoint random streams; the
# test set is also filtered against nothing else, so a duplicate scene is possible but not shared.
SPLIT_SALT = {"train": 1, "test": 2, "val": 3}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int
    col: int

    def to_json(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "row": self.row,
            "col": self.col,
        }


def _cells(rng: random.Random, k: int) -> list[tuple[int, int]]:
    return rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], k)


def _relation(a: Obj, b: Obj) -> str | None:
    """Where a is relative to b, when they share a row or a column."""
    if a.row == b.row and a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    if a.col == b.col and a.row != b.row:
        return "above" if a.row < b.row else "below"
    return None


def _options(rng: random.Random, answer: str, pool: list[str]) -> tuple[tuple[str, ...], str]:
    others = rng.sample([p for p in pool if p != answer], 3)
    options = [answer, *others]
    rng.shuffle(options)
    return tuple(options), letters(4)[options.index(answer)]


def _scene_spatial(rng: random.Random):
    k = rng.randint(2, 4)
    shapes = rng.sample(SHAPES, k)
    while True:
        cells = _cells(rng, k)
        objs = [Obj(s, rng.choice(list(COLOURS)), "medium", r, c) for s, (r, c) in zip(shapes, cells)]
        rel = _relation(objs[0], objs[1])
        if rel:
            break
    a, b = objs[0], objs[1]
    question = f"Where is the {a.shape} relative to the {b.shape}?"
    options, target = _options(rng, rel, list(RELATIONS))
    return objs, question, options, target, {"subject": a.shape, "anchor": b.shape, "value": rel}


def _scene_count(rng: random.Random):
    shape = rng.choice(SHAPES)
    n = rng.randint(1, 4)
    extra = rng.randint(0, 3)
    cells = _cells(rng, n + extra)
    others = [s for s in SHAPES if s != shape]
    objs = [Obj(shape, rng.choice(list(COLOURS)), "medium", r, c) for r, c in cells[:n]]
    objs += [Obj(rng.choice(others), rng.choice(list(COLOURS)), "medium", r, c) for r, c in cells[n:]]
    rng.shuffle(objs)
    question = f"How many {shape}s are there?"
    options, target = _options(rng, str(n), [str(i) for i in range(0, 7)])
    return objs, question, options, target, {"subject": shape, "value": str(n)}


def _scene_depth(rng: random.Random):
    k = rng.randint(2, 4)
    shapes = rng.sample(SHAPES, k)
    cells = _cells(rng, k)
    objs = [
        Obj(s, rng.choice(list(COLOURS)), "large" if i == 0 else "small", r, c)
        for i, (s, (r, c)) in enumerate(zip(shapes, cells))
    ]
    near = objs[0].shape
    rng.shuffle(objs)
    question = "Which shape is closest to the camera?"
    options, target = _options(rng, near, list(SHAPES))
    return objs, question, options, target, {"value": near}


def _scene_attribute(rng: random.Random):
    k = rng.randint(2, 4)
    shapes = rng.sample(SHAPES, k)
    cells = _cells(rng, k)
    objs = [
        Obj(s, rng.choice(list(COLOURS)), "small" if i == 0 else "large", r, c)
        for i, (s, (r, c)) in enumerate(zip(shapes, cells))
    ]
    subject = objs[0]
    rng.shuffle(objs)
    question = f"What colour is the small {subject.shape}?"
    options, target = _options(rng, subject.colour, list(COLOURS))
    return objs, question, options, target, {"subject": subject.shape, "value": subject.colour}


def _scene_twohop(rng: random.Random):
    while True:
        k = rng.randint(2, 4)
        shapes = rng.sample(SHAPES, k)
        cells = _cells(rng, k)
        objs = [Obj(s, rng.choice(list(COLOURS)), "medium", r, c) for s, (r, c) in zip(shapes, cells)]
        anchor = objs[0]
        # the hop must name exactly one shape: the only object on that side of the anchor
        found = {}
        for o in objs[1:]:
            rel = _relation(o, anchor)
            if rel:
                found.setdefault(rel, []).append(o)
        unique = [(rel, os[0]) for rel, os in found.items() if len(os) == 1]
        if unique:
            rel, hop = rng.choice(unique)
            break
    question = f"What colour is the shape {rel} the {anchor.shape}?"
    options, target = _options(rng, hop.colour, list(COLOURS))
    facts = {"anchor": anchor.shape, "relation": rel, "hop": hop.shape, "value": hop.colour}
    return objs, question, options, target, facts


SCENES = {
    "spatial": _scene_spatial,
    "count": _scene_count,
    "depth": _scene_depth,
    "attribute": _scene_attribute,
    "twohop": _scene_twohop,
}


def floor(x: int, y: int) -> tuple[int, int, int]:
    return (30 + x, 60, 30 + y)


def blend(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    """`a` mixed the share `t` of the way toward `b`."""
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def draw(
    objs: list[Obj],
    jitter: list[tuple[int, int]] | None = None,
    fills: dict[int, tuple[int, int, int]] | None = None,
) -> Image.Image:
    """The scene; `fills` overrides the colour of objects by index (a hard sample's mixed colour)."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    px = img.load()
    for y in range(IMAGE_SIZE):
        for x in range(IMAGE_SIZE):
            px[x, y] = floor(x, y)
    d = ImageDraw.Draw(img)
    for i, o in enumerate(objs):
        dx, dy = jitter[i] if jitter else (0, 0)
        cx, cy = o.col * CELL + CELL // 2 + dx, o.row * CELL + CELL // 2 + dy
        r = RADIUS[o.size]
        fill = (fills or {}).get(i) or COLOURS[o.colour]
        if o.shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return img


def _make_hard(rng, family, objs, options, facts):
    """The hard version's confuser and mixed colour, drawn after the scene (so a sample's scene is
    the one it had before the difficulty axis existed)."""
    shape = facts["subject"] if family == "attribute" else facts["hop"]
    which = next(i for i, o in enumerate(objs) if o.shape == shape)
    confuser = rng.choice([v for v in options if v != facts["value"]])
    t = rng.uniform(*COLOUR_BLEND)
    fill = blend(COLOURS[objs[which].colour], COLOURS[confuser], t)
    return {which: fill}, {
        "difficulty": "hard",
        "confuser": confuser,
        "blend": round(t, 3),
        "confuser_first": rng.random() < 0.5,
        "drawn": {"object": which, "rgb": list(fill)},
    }


def make_sample(
    index: int, seed: int, split: str = "test", family: str | None = None, hard_share: float = 0.0
) -> Sample:
    """Sample `index` of a split; `hard_share` of the colour questions drawn hard (ids then begin
    `synth-hard-`, so a sample's id still names how to redraw it)."""
    rng = random.Random(f"synth:{seed}:{SPLIT_SALT[split]}:{index}")
    family = family or FAMILIES[index % len(FAMILIES)]
    objs, question, options, target, facts = SCENES[family](rng)
    jitter = [(rng.randint(-2, 2), rng.randint(-2, 2)) for _ in objs]
    fills, level = None, {"difficulty": "easy"}
    if family in HARD_FAMILIES and rng.random() < hard_share:
        fills, level = _make_hard(rng, family, objs, options, facts)
    facts = {"family": family, **facts, **level, "objects": [o.to_json() for o in objs], "jitter": jitter}
    return Sample(
        sample_id=f"synth-{'hard-' if hard_share else ''}{split}-{seed}-{index}",
        question=question,
        options=options,
        target=target,
        answer_text=options[letters(4).index(target)],
        image=draw(objs, jitter, fills),
        family=family,
        facts=facts,
    )


def generate(
    n: int,
    *,
    seed: int = 0,
    split: str = "test",
    families: Sequence[str] | None = None,
    hard_share: float = 0.0,
) -> list[Sample]:
    """n samples, the five families (or `families`) in turn, `hard_share` of the colour questions
    hard (the difficulty axis); the same arguments always give the same set."""
    if not 0 <= hard_share <= 1:
        raise ValueError(f"hard_share must be within [0, 1], got {hard_share}")
    if families is None:
        return [make_sample(i, seed, split, hard_share=hard_share) for i in range(n)]
    check_families(families)
    return [make_sample(i, seed, split, families[i % len(families)], hard_share) for i in range(n)]


def check_families(families: Sequence[str]) -> None:
    """A ValueError unless `families` is a non-empty list of FAMILIES."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"unknown synth families {unknown or list(families)}; known: {', '.join(FAMILIES)}")


# --- reasoning and captions, written from the facts for any option -----------------------------


def _at(o: dict) -> str:
    return f"at row {o['row'] + 1} col {o['col'] + 1}"


def _find(facts: dict, shape: str) -> dict:
    return next(o for o in facts["objects"] if o["shape"] == shape)


# Where the subject would be for each relation to the anchor (row, col steps).
_STEP = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}


def spatial_positions(facts: dict, value: str) -> tuple[dict, dict]:
    """Subject and anchor positions that make `value` the relation: the true ones for the target;
    for another value, the anchor stays put and the subject moves next to it on that side (or, at
    the border, the subject stays and the anchor moves), so a wrong reasoning is wrong in its facts
    and consistent in its logic."""
    subj, anchor = _find(facts, facts["subject"]), _find(facts, facts["anchor"])
    if _relation(Obj(**subj), Obj(**anchor)) == value:
        return subj, anchor
    dr, dc = _STEP[value]
    inside = range(GRID)
    if anchor["row"] + dr in inside and anchor["col"] + dc in inside:
        return {**subj, "row": anchor["row"] + dr, "col": anchor["col"] + dc}, anchor
    if subj["row"] - dr in inside and subj["col"] - dc in inside:
        return subj, {**anchor, "row": subj["row"] - dr, "col": subj["col"] - dc}
    return {**subj, "row": 1 + dr, "col": 1 + dc}, {**anchor, "row": 1, "col": 1}


def read_value(facts: dict, value: str, hedge: bool) -> str:
    """The value as the reasoning reads it: with `hedge` on a hard sample's target, the two values
    the image leaves open, in the sample's own order (so the order says nothing of which is right)."""
    if not hedge or facts.get("difficulty") != "hard" or value != facts["value"]:
        return value
    pair = (facts["confuser"], value) if facts["confuser_first"] else (value, facts["confuser"])
    return " or ".join(pair)


def fact_text(facts: dict, value: str, hedge: bool = False) -> str:
    """The scene facts that make `value` the answer (true only for the target). Each object the
    question names is first located ("The square is at row 2 col 3."): one retrieval by shape per
    sentence, the step the `find` warm-up of the SFT recipe trains, so a relation is read from two
    written positions instead of being computed from the image in one pass. With `hedge`, a hard
    sample's target is read as the pair the image leaves open (read_value)."""
    fam = facts["family"]
    said = read_value(facts, value, hedge)
    if fam == "spatial":
        subj, anchor = spatial_positions(facts, value)
        return (
            f"The {subj['shape']} is {_at(subj)}. The {anchor['shape']} is {_at(anchor)}. "
            f"So the {subj['shape']} is {value} the {anchor['shape']}."
        )
    if fam == "count":
        return f"I count {said} {facts['subject']}s."
    if fam == "depth":
        # "largest" comes before the shape it names: the shape is then read off the one large
        # object's image token, the same retrieval as "the small diamond" of the attribute family
        return f"The largest shape is the {value}, so it is closest."
    if fam == "attribute":
        subj = _find(facts, facts["subject"])
        return f"The small {subj['shape']} is {_at(subj)}. It is {said}."
    if fam == "twohop":
        anchor = _find(facts, facts["anchor"])
        return (
            f"The {anchor['shape']} is {_at(anchor)}. "
            f"The shape {facts['relation']} it is the {facts['hop']}. It is {said}."
        )
    raise ValueError(f"unknown synth family {fam!r}")


def think_text(sample: Sample, letter: str) -> str:
    """Reasoning for option `letter`: its evidence, then the option it reads restated as its own line
    exactly as the prompt lists it (to a model a copy of a prompt line, not a lookup from value to
    letter: see models/tiny.build_tokenizer). The target's reasoning on a hard sample reads the pair
    the image leaves open and restates both option lines ("It is one of:"), so the answer letter is
    a choice of its own that the reasoning does not settle."""
    value = sample.option_text(letter)
    facts = sample.facts
    text = fact_text(facts, value, hedge=True)
    said = read_value(facts, value, hedge=True)
    if said == value:
        return f"{text} The answer is:\n{letter}. {value}"
    lines = "\n".join(f"{letters(4)[sample.options.index(v)]}. {v}" for v in said.split(" or "))
    return f"{text} It is one of:\n{lines}"


def caption_text(sample: Sample, letter: str) -> str:
    """A caption stating option `letter`'s facts plainly (a caption writer knows the scene)."""
    return fact_text(sample.facts, sample.option_text(letter))


def write(samples: list[Sample], out: str | Path) -> Path:
    """Write samples in the local file format (`data.jsonl` + PNG images) that `--data FILE` reads."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "data.jsonl"
    with path.open("w") as f:
        for s in samples:
            name = f"images/{s.sample_id}.png"
            s.image.save(out / name)
            row = {
                "id": s.sample_id,
                "question": s.question,
                "options": list(s.options),
                "answer": s.target,
                "image": name,
                "family": s.family,
                "facts": s.facts,
            }
            f.write(json.dumps(row) + "\n")
    return path
