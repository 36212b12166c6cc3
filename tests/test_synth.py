"""The synthetic benchmark: determinism, disjoint splits, scenes that agree with their images, answers
recomputed from the scene facts, and the reasoning and captions written from those facts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from vlmstress.data import synth
from vlmstress.data.schema import Sample
from vlmstress.perturb import perturb

LETTERS = "ABCD"
POOLS = {
    "spatial": {"left of", "right of", "above", "below"},
    "count": {str(i) for i in range(7)},
    "depth": {"circle", "square", "triangle", "diamond"},
    "attribute": {"red", "green", "blue", "yellow", "white"},
    "twohop": {"red", "green", "blue", "yellow", "white"},
}
QUESTION = {
    "spatial": re.compile(r"Where is the (\w+) relative to the (\w+)\?"),
    "count": re.compile(r"How many (\w+)s are there\?"),
    "depth": re.compile(r"Which shape is closest to the camera\?"),
    "attribute": re.compile(r"What colour is the small (\w+)\?"),
    "twohop": re.compile(r"What colour is the shape (left of|right of|above|below) the (\w+)\?"),
}
POSITION = re.compile(r"The (?:small )?(\w+) is at row (\d+) col (\d+)\.")


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return synth.generate(200, seed=0, split="test")


def _rel(a: dict, b: dict) -> str | None:
    """Where a is relative to b (0-based rows top-down, cols left-right), written out independently."""
    if a["row"] == b["row"]:
        if a["col"] < b["col"]:
            return "left of"
        if a["col"] > b["col"]:
            return "right of"
    if a["col"] == b["col"]:
        if a["row"] < b["row"]:
            return "above"
        if a["row"] > b["row"]:
            return "below"
    return None


def _one(objects: list[dict], shape: str) -> dict:
    found = [o for o in objects if o["shape"] == shape]
    assert len(found) == 1, f"expected one {shape}, found {len(found)}"
    return found[0]


def _fingerprint(s: Sample) -> tuple:
    return (s.sample_id, s.question, s.options, s.target, s.family, s.image.tobytes())


# --- generate() -----------------------------------------------------------------------------------


def test_generate_is_deterministic_and_seeded():
    a = synth.generate(15, seed=4, split="test")
    b = synth.generate(15, seed=4, split="test")
    assert [_fingerprint(s) for s in a] == [_fingerprint(s) for s in b]
    assert [s.facts for s in a] == [s.facts for s in b]
    other = synth.generate(15, seed=5, split="test")
    # another seed draws other scenes: no index holds the same question on the same image
    same = [x for x, y in zip(a, other) if (x.question, x.image.tobytes()) == (y.question, y.image.tobytes())]
    assert same == []
    assert [s.sample_id for s in a] != [s.sample_id for s in other]


def test_generate_does_not_depend_on_the_hash_seed():
    """Reruns in another process (another PYTHONHASHSEED) draw the very same benchmark."""
    code = (
        "import hashlib, sys; from vlmstress.data import synth; h = hashlib.sha256()\n"
        "for s in synth.generate(10, seed=7, split='train'):\n"
        "    h.update(repr((s.question, s.options, s.target)).encode()); h.update(s.image.tobytes())\n"
        "print(h.hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hs},
        ).stdout.strip()
        for hs in ("1", "2")
    }
    assert len(digests) == 1


def test_train_and_test_splits_share_no_item():
    train = synth.generate(300, seed=0, split="train")
    test = synth.generate(300, seed=0, split="test")
    train_items = {(s.image.tobytes(), s.question) for s in train}
    test_items = {(s.image.tobytes(), s.question) for s in test}
    assert len(train_items) > 250 and len(test_items) > 250  # the pairs themselves are varied
    assert train_items.isdisjoint(test_items)
    assert {s.sample_id for s in train}.isdisjoint(s.sample_id for s in test)


def test_families_come_in_turn(samples):
    assert [s.family for s in samples[:10]] == [*synth.FAMILIES, *synth.FAMILIES]
    for i, s in enumerate(samples):
        assert s.family == synth.FAMILIES[i % 5] == s.facts["family"]
        assert QUESTION[s.family].fullmatch(s.question), s.question


def test_options_are_four_distinct_values_and_the_target_is_the_fact(samples):
    targets = set()
    for s in samples:
        assert len(s.options) == 4 and len(set(s.options)) == 4
        assert set(s.options) <= POOLS[s.family]
        assert s.target in LETTERS
        assert s.option_text(s.target) == s.facts["value"] == s.answer_text
        targets.add(s.target)
    assert targets == set(LETTERS)  # the answer's position is shuffled


# --- the facts agree with the image -----------------------------------------------------------------


def _shape_seen(px, cx: int, cy: int, r: int, colour: tuple) -> str:
    """The shape drawn at (cx, cy) with radius r, told apart by which probe points carry its colour."""
    k = round(0.6 * r)
    probes = (
        px[cx - r, cy - r] == colour,  # top-left corner: only a square fills it
        px[cx + r, cy + r] == colour,  # bottom-right corner: square and triangle
        px[cx + r, cy] == colour,  # right tip: not a triangle (half as wide at mid-height)
        px[cx + k, cy - k] == colour,  # upper-right diagonal: circle yes, diamond no
    )
    return {
        (True, True, True, True): "square",
        (False, True, False, False): "triangle",
        (False, False, True, True): "circle",
        (False, False, True, False): "diamond",
    }.get(probes, f"unknown {probes}")


def test_facts_agree_with_the_drawn_image(samples):
    floor_checked = shapes_checked = sized = 0
    for s in samples:
        objects, jitter = s.facts["objects"], s.facts["jitter"]
        assert s.image.size == (64, 64) and s.image.mode == "RGB"
        assert len(jitter) == len(objects) and all(abs(d) <= 2 for xy in jitter for d in xy)
        cells = [(o["row"], o["col"]) for o in objects]
        assert len(set(cells)) == len(cells), "two objects share a cell"
        assert all(0 <= r < 4 and 0 <= c < 4 for r, c in cells)
        px = s.image.load()
        drawn = s.facts.get("drawn")
        fills = {drawn["object"]: tuple(drawn["rgb"])} if drawn else None
        for i, (o, (dx, dy)) in enumerate(zip(objects, jitter)):
            colour = (fills or {}).get(i) or synth.COLOURS[o["colour"]]
            cx, cy = o["col"] * 16 + 8 + dx, o["row"] * 16 + 8 + dy
            r = synth.RADIUS[o["size"]]
            assert px[cx, cy] == colour, (s.sample_id, o)
            # the size: the column through the centre is coloured exactly r pixels up and down
            # (unless a same-coloured object in the cell above or below may touch it)
            touching = any(
                p["colour"] == o["colour"] and p["col"] == o["col"] and abs(p["row"] - o["row"]) == 1
                for p in objects
            )
            up = next(k for k in range(1, 70) if cy - k < 0 or px[cx, cy - k] != colour) - 1
            down = next(k for k in range(1, 70) if cy + k > 63 or px[cx, cy + k] != colour) - 1
            assert touching or (up, down) == (min(r, cy), min(r, 63 - cy)), (s.sample_id, o)
            sized += not touching
            if r <= cx <= 63 - r and r <= cy <= 63 - r:  # not clipped by the border
                assert _shape_seen(px, cx, cy, r, colour) == o["shape"], (s.sample_id, o)
                shapes_checked += 1
        # every object is in the facts: each empty cell's centre shows the floor (no shape colour)
        for row in range(4):
            for col in range(4):
                if (row, col) not in cells:
                    assert px[col * 16 + 8, row * 16 + 8] not in synth.COLOURS.values()
                    floor_checked += 1
        # and the facts redraw exactly this image
        redrawn = synth.draw([synth.Obj(**o) for o in objects], [tuple(j) for j in jitter], fills)
        assert redrawn.tobytes() == s.image.tobytes()
    assert shapes_checked > 400 and sized > 450 and floor_checked > 1000


# --- each family's answer, recomputed from the objects ------------------------------------------------


def test_spatial_answer_is_the_relation_of_the_two_objects(samples):
    for s in (s for s in samples if s.family == "spatial"):
        subject, anchor = QUESTION["spatial"].fullmatch(s.question).groups()
        assert (s.facts["subject"], s.facts["anchor"]) == (subject, anchor)
        objs = s.facts["objects"]
        assert s.option_text(s.target) == _rel(_one(objs, subject), _one(objs, anchor))


def test_count_answer_is_the_number_of_objects_of_that_shape(samples):
    counts = set()
    for s in (s for s in samples if s.family == "count"):
        shape = QUESTION["count"].fullmatch(s.question).group(1)
        n = sum(o["shape"] == shape for o in s.facts["objects"])
        assert s.option_text(s.target) == str(n)
        counts.add(n)
    assert counts == {1, 2, 3, 4}


def test_depth_answer_is_the_one_large_shape(samples):
    for s in (s for s in samples if s.family == "depth"):
        large = [o for o in s.facts["objects"] if o["size"] == "large"]
        assert len(large) == 1 and len(s.facts["objects"]) >= 2
        assert all(o["size"] == "small" for o in s.facts["objects"] if o is not large[0])
        assert s.option_text(s.target) == large[0]["shape"]


def test_attribute_answer_is_the_small_shapes_colour(samples):
    for s in (s for s in samples if s.family == "attribute"):
        shape = QUESTION["attribute"].fullmatch(s.question).group(1)
        small = [o for o in s.facts["objects"] if o["size"] == "small"]
        assert len(small) == 1 and small[0]["shape"] == shape
        assert s.option_text(s.target) == small[0]["colour"]


def test_twohop_answer_is_the_colour_of_the_only_shape_on_that_side(samples):
    for s in (s for s in samples if s.family == "twohop"):
        relation, anchor_shape = QUESTION["twohop"].fullmatch(s.question).groups()
        objs = s.facts["objects"]
        anchor = _one(objs, anchor_shape)
        there = [o for o in objs if o is not anchor and _rel(o, anchor) == relation]
        assert len(there) == 1, (s.sample_id, relation)
        assert s.facts["hop"] == there[0]["shape"]
        assert s.option_text(s.target) == there[0]["colour"]


# --- reasoning and captions ----------------------------------------------------------------------


def test_think_text_ends_with_the_option_line_for_every_letter(samples, hard_samples):
    """Each reasoning restates the option it reads as the prompt lists it; a hard sample's correct
    reasoning restates both options the image leaves open, and no answer statement."""
    for s in [*samples[:50], *hard_samples[:50]]:
        for letter in LETTERS:
            think = synth.think_text(s, letter)
            line = f"{letter}. {s.option_text(letter)}"
            if s.facts["difficulty"] == "hard" and letter == s.target:
                other = LETTERS[s.options.index(s.facts["confuser"])]
                pair = [line, f"{other}. {s.facts['confuser']}"]
                lines = "\n".join(reversed(pair) if s.facts["confuser_first"] else pair)
                assert think.endswith(f" It is one of:\n{lines}") and "answer" not in think
            else:
                assert think.endswith(f"The answer is:\n{line}")
                assert think.count("The answer is") == 1


def test_target_reasoning_states_the_true_positions(samples):
    located = 0
    for s in samples:
        think = synth.think_text(s, s.target)
        stated = POSITION.findall(think)
        expected = {"spatial": 2, "attribute": 1, "twohop": 1, "count": 0, "depth": 0}[s.family]
        assert len(stated) == expected, think
        for shape, row, col in stated:
            o = _one(s.facts["objects"], shape)
            assert (int(row), int(col)) == (o["row"] + 1, o["col"] + 1), think
            located += 1
        value = synth.read_value(s.facts, s.option_text(s.target), hedge=True)
        if s.family == "spatial":
            assert f"So the {s.facts['subject']} is {value} the {s.facts['anchor']}." in think
        if s.family in ("attribute", "twohop"):
            assert f"It is {value}." in think
        if s.family == "twohop":
            assert f"The shape {s.facts['relation']} it is the {s.facts['hop']}." in think
        if s.family == "count":
            assert f"I count {value} {s.facts['subject']}s." in think
        if s.family == "depth":
            assert f"The largest shape is the {value}," in think
    assert located == 40 * 2 + 40 + 40


def test_spatial_positions_are_true_for_the_target_and_consistent_for_a_wrong_value(samples):
    spatial = [s for s in samples if s.family == "spatial"]
    moved_subject = moved_anchor = 0
    for s in spatial:
        subj_true = _one(s.facts["objects"], s.facts["subject"])
        anchor_true = _one(s.facts["objects"], s.facts["anchor"])
        assert synth.spatial_positions(s.facts, s.facts["value"]) == (subj_true, anchor_true)
        for letter in LETTERS:
            value = s.option_text(letter)
            if letter == s.target:
                continue
            subj, anchor = synth.spatial_positions(s.facts, value)
            assert subj["shape"] == subj_true["shape"] and anchor["shape"] == anchor_true["shape"]
            assert all(0 <= p[k] < 4 for p in (subj, anchor) for k in ("row", "col")), (subj, anchor)
            assert _rel(subj, anchor) == value, (value, subj, anchor)
            moved_subject += anchor == anchor_true
            moved_anchor += subj == subj_true and anchor != anchor_true
            # the wrong reasoning states exactly these fabricated positions, and that value
            think = synth.think_text(s, letter)
            stated = {shape: (int(r), int(c)) for shape, r, c in POSITION.findall(think)}
            assert stated == {
                subj["shape"]: (subj["row"] + 1, subj["col"] + 1),
                anchor["shape"]: (anchor["row"] + 1, anchor["col"] + 1),
            }
            assert f"So the {subj['shape']} is {value} the {anchor['shape']}." in think
    # mostly the anchor stays put and the subject moves next to it
    assert moved_subject > 2 * moved_anchor and moved_subject + moved_anchor > 0


def _obj(shape: str, cell: tuple[int, int]) -> dict:
    return {"shape": shape, "colour": "red", "size": "medium", "row": cell[0], "col": cell[1]}


@pytest.mark.parametrize("value", ["left of", "right of", "above", "below"])
def test_spatial_positions_at_the_border(value):
    """Anchor on the border of the asked side: the subject stays and the anchor moves (or both)."""
    for anchor_cell, subj_cell in [((0, 0), (3, 3)), ((3, 3), (0, 0)), ((0, 3), (3, 0)), ((3, 0), (0, 3))]:
        objects = [_obj("square", subj_cell), _obj("circle", anchor_cell)]
        facts = {"family": "spatial", "subject": "square", "anchor": "circle", "objects": objects}
        subj, anchor = synth.spatial_positions({**facts, "value": "?"}, value)
        assert (subj["shape"], anchor["shape"]) == ("square", "circle")
        assert all(0 <= p[k] < 4 for p in (subj, anchor) for k in ("row", "col"))
        assert _rel(subj, anchor) == value


def test_caption_states_the_facts_without_a_letter(samples, hard_samples):
    for s in [*samples[:50], *hard_samples[:50]]:
        for letter in LETTERS:
            caption = synth.caption_text(s, letter)
            value = s.option_text(letter)
            assert value in caption
            assert "answer" not in caption.lower()
            assert not re.search(r"\b[A-E]\b", caption), caption
            assert not caption.endswith(f"{letter}. {value}")
            think = synth.think_text(s, letter)
            if s.facts["difficulty"] == "hard" and letter == s.target:
                # the caption states the truth plainly; the model's own reasoning reads the pair
                pair = synth.read_value(s.facts, value, hedge=True)
                plain = caption.replace(f" {value} ", f" {pair} ").replace(f" {value}.", f" {pair}.")
                assert pair != value and think.startswith(plain + " It is one of:")
            else:
                assert think.startswith(caption)


@pytest.fixture(scope="module")
def hard_samples() -> list[Sample]:
    return synth.generate(200, seed=0, split="test", hard_share=synth.HARD_SHARE)


def test_the_default_benchmark_has_no_hard_samples_and_the_same_ids(samples, hard_samples):
    assert all(s.facts["difficulty"] == "easy" for s in samples)
    assert all(s.sample_id.startswith("synth-test-") for s in samples)
    assert all(s.sample_id.startswith("synth-hard-test-") for s in hard_samples)
    # the same scenes and options: only a hard sample's drawn colour differs
    for s, h in zip(samples, hard_samples):
        assert (s.question, s.options, s.target) == (h.question, h.options, h.target)
        assert s.facts["objects"] == h.facts["objects"]
        assert (s.image.tobytes() == h.image.tobytes()) == (h.facts["difficulty"] == "easy")


def test_difficulty_axis(hard_samples):
    samples = hard_samples
    """40% of the colour questions are hard, none of the others; a hard sample's object is drawn as
    an even mix of its colour and a confuser (an option, never the target), and its correct reasoning
    reads the pair in the sample's own order."""
    hard = [s for s in samples if s.facts["difficulty"] == "hard"]
    assert {s.family for s in hard} == set(synth.HARD_FAMILIES) == {"attribute", "twohop"}
    in_families = [s for s in samples if s.family in synth.HARD_FAMILIES]
    assert 0.28 < len(hard) / len(in_families) < 0.52
    assert all(s.facts["difficulty"] == "easy" for s in samples if s.family not in synth.HARD_FAMILIES)
    first = 0
    for s in hard:
        f = s.facts
        assert f["confuser"] in s.options and f["confuser"] != s.option_text(s.target)
        o = f["objects"][f["drawn"]["object"]]
        assert o["shape"] == (f["subject"] if s.family == "attribute" else f["hop"])
        assert synth.COLOUR_BLEND[0] <= f["blend"] <= synth.COLOUR_BLEND[1]
        expected = synth.blend(synth.COLOURS[o["colour"]], synth.COLOURS[f["confuser"]], f["blend"])
        assert all(abs(a - b) <= 1 for a, b in zip(f["drawn"]["rgb"], expected))
        # the same colour arises from the confuser mixed toward the true one: the image cannot tell
        mirrored = synth.blend(synth.COLOURS[f["confuser"]], synth.COLOURS[o["colour"]], 1 - f["blend"])
        assert all(abs(a - b) <= 1 for a, b in zip(f["drawn"]["rgb"], mirrored))
        pair = synth.read_value(f, s.option_text(s.target), hedge=True)
        order = (f["confuser"], f["value"]) if f["confuser_first"] else (f["value"], f["confuser"])
        assert pair == " or ".join(order)
        first += f["confuser_first"]
    assert 0 < first < len(hard)  # the order says nothing of which value is right


# Scenes of test samples 3 (easy) and 8 (hard), as the generator drew them before the difficulty
# axis existed.
PINNED_SCENES = {
    3: [
        ("diamond", "green", 2, 2),
        ("circle", "yellow", 0, 3),
        ("triangle", "blue", 1, 2),
        ("square", "white", 3, 2),
    ],
    8: [
        ("square", "white", 1, 3),
        ("diamond", "blue", 0, 0),
        ("triangle", "blue", 2, 1),
        ("circle", "yellow", 3, 3),
    ],
}


def test_the_difficulty_draw_keeps_every_scene():
    """The hard draw comes after the scene's: a sample's objects are those it had before the axis
    existed, hard or easy; only a hard sample's drawn colour (and a count's confuser option) differ."""
    for i, scene in PINNED_SCENES.items():
        s = synth.make_sample(i, 0, "test", hard_share=synth.HARD_SHARE)
        assert [(o["shape"], o["colour"], o["row"], o["col"]) for o in s.facts["objects"]] == scene
    assert tuple(
        synth.make_sample(i, 0, "test", hard_share=synth.HARD_SHARE).facts["difficulty"] for i in (3, 8)
    ) == (
        "easy",
        "hard",
    )


# --- write() and reading the files back -------------------------------------------------------------


def test_write_produces_files_the_loader_reads_back(tmp_path):
    from vlmstress.data.images import load_image
    from vlmstress.data.loading import load_data

    samples = synth.generate(10, seed=3, split="test")
    path = synth.write(samples, tmp_path / "d")
    assert path == tmp_path / "d" / "data.jsonl"
    assert sorted(p.name for p in (tmp_path / "d" / "images").iterdir()) == sorted(
        f"{s.sample_id}.png" for s in samples
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["facts"] for r in rows] == [json.loads(json.dumps(s.facts)) for s in samples]
    loaded, name = load_data(str(path))
    assert name == str(path.resolve())
    assert len(loaded) == len(samples)
    for got, want in zip(loaded, samples):
        assert got.error is None
        assert (got.sample_id, got.question, got.options, got.target, got.family) == (
            want.sample_id,
            want.question,
            want.options,
            want.target,
            want.family,
        )
        assert load_image(got.image).tobytes() == want.image.tobytes()  # PNG is lossless


def test_written_synth_set_perturbs_like_the_generated_one(tmp_path):
    from vlmstress.data.loading import load_data

    samples = synth.generate(5, seed=3, split="test")
    loaded, _ = load_data(str(synth.write(samples, tmp_path / "d")))
    for got, want in zip(loaded, samples):
        for variant in ("wrong_think", "wrong_caption", "correct_think"):
            a, b = perturb(got, variant, 0), perturb(want, variant, 0)
            assert (a.user, a.prefill, a.misleading) == (b.user, b.prefill, b.misleading)


def test_the_rule_judge_reads_every_reasoning_as_the_options_it_leaves_open(samples, hard_samples):
    """A plain reasoning supports its one option; a hard sample's correct reasoning leaves its two
    options open, so either answer follows from it and any other does not."""
    from vlmstress.judge.rule import supported_letters

    for s in [*samples, *hard_samples]:
        for letter in LETTERS:
            expected = {letter}
            if s.facts["difficulty"] == "hard" and letter == s.target:
                expected.add(LETTERS[s.options.index(s.facts["confuser"])])
            assert supported_letters(synth.think_text(s, letter), s.options) == expected, (
                s.sample_id,
                letter,
            )


def test_synth_hard_spec_and_its_ids_redraw_the_same_samples():
    from vlmstress.data.loading import load_data
    from vlmstress.report.browser import synth_sample

    samples, name = load_data("synth-hard:10")
    assert name == "synth-hard:10" and any(s.facts["difficulty"] == "hard" for s in samples)
    for s in samples:
        again = synth_sample(s.sample_id)
        assert again.sample_id == s.sample_id and again.image.tobytes() == s.image.tobytes()
    assert load_data("synth:10")[0][8].facts["difficulty"] == "easy"
