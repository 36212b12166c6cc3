"""RuleJudge: which option the think supports, and the verdict against the parsed answer."""

from __future__ import annotations

import time

import pytest

from vlmstress.judge.base import Judge, JudgeItem, Verdict
from vlmstress.judge.rule import RuleJudge, supported_letter, supported_letters

OPTIONS = ("red", "blue", "dark red", "yellow")


@pytest.mark.parametrize(
    "think, expected",
    [
        # explicit letter statements; the last one wins
        ("So the answer is B.", "B"),
        ("the answer is (C)", "C"),
        ("Answer: D", "D"),
        ("I would pick option A here.", "A"),
        ("Hmm, so B.", "B"),
        ("It must be (D), clearly.", "D"),
        ("The answer is B. Hmm, actually option C.", "C"),
        ("Option A looks right at first, but the answer is D.", "D"),
        ("the answer to this question is B", "B"),
        # the generic wrong reasoning perturb.think_text writes: the letter statement settles it
        ("Looking at the image, the answer to this question is yellow. So the answer is D.", "D"),
        ("Looking at the image, the answer to this question is yellow. So the answer is D. but I think", "D"),
        (
            "Looking at the image, the answer to this question is yellow. So the answer is D. but I think "
            "the answer is A.",
            "A",
        ),  # fmt: skip
        # letters outside the options, lookalikes and pronouns are not statements
        ("option E, which is not offered", None),
        ("So the answer is \u0412.", None),
        ("So I think it is hard to say.", None),
        # option texts: one mentioned
        ("The ball is blue.", "B"),
        ("It is BLUE, no doubt.", "B"),
        ("It is dark red.", "C"),  # longest option text wins over the "red" inside it
        ("The object is reddish.", None),  # whole words only
        # several mentioned: the concluding sentence decides
        ("Red or blue? So the answer is blue, not red.", "B"),
        ("It is not red, so the answer is blue", "B"),
        ("Blue is tempting. The answer is yellow. Red is out.", "D"),
        ("Red and blue are both there.", None),  # no conclusion
        ("So I think it is red and blue.", None),  # a conclusion naming two options
        # nothing to read
        ("I cannot see the image.", None),
        ("", None),
        ("   \n ", None),
        (None, None),
    ],
)
def test_supported_letter(think: str | None, expected: str | None) -> None:
    assert supported_letter(think, OPTIONS) == expected


@pytest.mark.parametrize(
    "think, expected",
    [
        # a disjunction closing the reasoning leaves those options open
        ("The small circle is at row 2 col 1. It is red or blue.", "AB"),
        ("It is yellow, blue or red.", "ABD"),
        ("It is dark red or yellow.", "CD"),
        ("So it is red or blue.", "AB"),
        # a later letter statement decides; a later plain mention without a cue cannot
        ("It is red or blue. No: it is yellow.", None),  # no conclusion, as before the disjunction rule
        ("It is red or blue. So the answer is B.", "B"),
        ("It is red. Then again, red or blue.", "AB"),
        # not a disjunction: no "or" between the mentions, or other words between them
        ("It is red and blue.", None),
        ("It is red, not blue at all, or so.", None),
        ("Red or blue or something else.", "AB"),
    ],
)
def test_supported_letters_reads_an_open_disjunction(think: str, expected: str | None) -> None:
    got = supported_letters(think, OPTIONS)
    assert (None if got is None else "".join(sorted(got))) == expected
    # the one-letter view names no option for a disjunction
    assert supported_letter(think, OPTIONS) == (expected if expected and len(expected) == 1 else None)


def test_an_answer_inside_the_open_options_is_consistent_one_outside_is_not() -> None:
    think = "The small circle is at row 2 col 1. It is red or blue."
    assert RuleJudge().judge([_item(think, "A"), _item(think, "B"), _item(think, "D")]) == [
        Verdict("consistent", None, "rule"),
        Verdict("consistent", None, "rule"),
        Verdict("inconsistent", None, "rule"),
    ]


def test_duplicate_option_texts_cannot_be_told_apart() -> None:
    assert supported_letter("It is red.", ("red", "blue", "Red")) is None


def test_one_letter_option_texts_are_not_matched_as_words() -> None:
    letters_only = ("A", "B", "C", "D")
    assert supported_letter("There is a ball and I see it.", letters_only) is None
    assert supported_letter("There is a ball. So the answer is C.", letters_only) == "C"


def test_abstain_option_text_is_an_option_like_any_other() -> None:
    assert supported_letter("I'm not sure about this one.", ("red", "blue", "I'm not sure")) == "C"


def _item(think: str | None, answer: str | None) -> JudgeItem:
    return JudgeItem(question="What colour is the ball?", options=OPTIONS, think=think, answer=answer)


def test_verdicts() -> None:
    judge = RuleJudge()
    items = [
        _item("So the answer is D.", "D"),
        _item("So the answer is D.", "A"),
        _item("So the answer is D.", None),  # unparsed answer
        _item(None, "A"),  # no think
        _item("", "A"),
        _item("I cannot tell.", "A"),  # supports unknown
        _item("The ball is blue.", "B"),
    ]
    assert judge.judge(items) == [
        Verdict("consistent", "D", "rule"),
        Verdict("inconsistent", "D", "rule"),
        Verdict("unknown", "D", "rule"),
        Verdict("unknown", None, "rule"),
        Verdict("unknown", None, "rule"),
        Verdict("unknown", None, "rule"),
        Verdict("consistent", "B", "rule"),
    ]
    assert judge.judge([]) == []


def test_satisfies_the_judge_protocol() -> None:
    judge: Judge = RuleJudge()
    assert judge.name == "rule"


def test_a_failing_item_is_an_error_not_a_crash() -> None:
    class Exploding(str):
        def __getitem__(self, key):  # the judge slices the think; make that fail
            raise RuntimeError("boom")

    verdicts = RuleJudge().judge([_item(Exploding("So the answer is D."), "D"), _item("So B.", "B")])
    assert verdicts == [Verdict("error", None, "rule"), Verdict("consistent", "B", "rule")]


def test_huge_thinks_are_fast() -> None:
    thinks = [
        "so " + "red blue " * 500_000,
        "answer is " * 500_000,
        "( " * 1_000_000,
        ("so red. blue and " + " " * 100) * 20_000,
        "answer" + " " * 2_000_000 + "is B",
        "red. so blue" * 100_000,
    ]
    start = time.perf_counter()
    for think in thinks:
        supported_letter(think, OPTIONS)
    assert time.perf_counter() - start < 3.0


def test_long_options_against_a_long_think_take_bounded_time() -> None:
    """Issue #19: 26 options of ~2,000 characters sharing their start with a 50k-character think took
    688 s (the alternation re-read each option at every position). Now linear-ish in both."""
    options = [("red " * 500) + f"end{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    start = time.perf_counter()
    assert supported_letter("red " * 12_500, options) is None
    assert supported_letter("red " * 12_000 + "so the answer is " + options[3], options) == "D"
    assert time.perf_counter() - start < 3.0


def _reference_mentions(think, options):
    """The regex alternation _mentions was written as (exact but quadratic), to hold the fast one to."""
    import re
    import string

    letters_by_text: dict[str, set[str]] = {}
    for letter, text in zip(string.ascii_uppercase, options):
        key = " ".join(text.lower().split())
        if key and not (len(key) == 1 and key.isascii() and key.isalpha()):
            letters_by_text.setdefault(key, set()).add(letter)
    if not letters_by_text:
        return []
    keys = sorted(letters_by_text, key=len, reverse=True)
    alternatives = "|".join("(" + r"\s+".join(re.escape(w) for w in k.split()) + ")" for k in keys)
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
    return [(m.start(), frozenset(letters_by_text[keys[m.lastindex - 1]])) for m in pattern.finditer(think)]


def test_fast_mentions_equal_the_regex_alternation() -> None:
    import random

    from vlmstress.judge.rule import _mentions, _squeeze

    rng = random.Random(19)
    words = [
        "red",
        "Red",
        "dark",
        "blue",
        "dark red",
        "red-ish",
        "a",
        "I",
        "é",
        "3.5",
        "(red)",
        "red_x",
        "so",
    ]
    for _ in range(3000):
        options = [" ".join(rng.choices(words, k=rng.randint(1, 3))) for _ in range(rng.randint(1, 6))]
        gaps = [" ", "  ", "\n", ", ", ".", "", "_", "\t"]
        think = _squeeze("".join(rng.choice(words) + rng.choice(gaps) for _ in range(rng.randint(0, 12))))
        assert _mentions(think, options) == _reference_mentions(think, options), (think, options)
