"""parse(): think / answer extraction, lenient fallbacks, robustness on any string; grade_open()."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmstress.parse import Parsed, grade_open, parse

OPTIONS = ("red", "blue", "dark red", "I'm not sure")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B) blue", "B"),
        ("B. blue", "B"),
        ("B: blue", "B"),
        ("[B]", "B"),
        ("Option B", "B"),
        ("option (B)", "B"),
        ("The answer is B.", "B"),
        ("Final answer: C", "C"),
        ("**B**", "B"),
        ("`D`", "D"),
        ("$\\boxed{C}$", "C"),
        ("  B  ", "B"),
        ("B\nbecause it is blue", "B"),
        ("b", "B"),
        ("(c)", "C"),
        ("option d.", "D"),
        ("B blue", "B"),  # letter followed by that option's own text
        # option text, case- and space-insensitive
        ("Blue", "B"),
        ("  dark   RED ", "C"),
        ("Dark red.", "C"),
        ("I'm not sure", "D"),
        # letters outside the options, lookalikes and prose are not answers
        ("E", None),
        ("(E)", None),
        ("\u0412", None),  # Cyrillic VE looks like B
        ("\u0410", None),  # Cyrillic A
        ("\uff22", None),  # fullwidth B
        ("\u212a", None),  # Kelvin sign folds to K under Unicode IGNORECASE
        ("a cat", None),  # article, not option A
        ("A cat sits on the mat", None),
        ("B green", None),  # "green" is not option B's text
        ("purple", None),
        ("", None),
        ("reddish", None),
    ],
)
def test_answer_block(content: str, expected: str | None) -> None:
    p = parse(f"<think>hmm</think><answer>{content}</answer>", OPTIONS)
    assert p.answer == expected
    assert p.parsed is (expected is not None)
    assert p.lenient is False
    assert p.mode == ("strict" if expected is not None else None)
    assert p.answer_text == content.strip()
    assert p.think == "hmm"


def test_lowercase_letter_ambiguous_with_an_option_text_is_unparsed() -> None:
    # "b" is letter B, and also the text of option A: two readings, no answer.
    assert parse("<answer>b</answer>", ("b", "c", "a")).answer is None
    # Same reading both ways is fine: option B's text is "b".
    assert parse("<answer>b</answer>", ("a", "b")).answer == "B"
    # An uppercase letter is always the letter, even when an option's text is a letter.
    assert parse("<answer>B</answer>", ("A", "B", "C")).answer == "B"
    assert parse("<answer>A</answer>", ("B", "A")).answer == "A"


def test_option_text_beats_letter_shaped_reading() -> None:
    options = ("cat", "dog", "A, B and C")
    assert parse("<answer>A, B and C</answer>", options).answer == "C"


def test_duplicate_option_texts_cannot_be_told_apart() -> None:
    assert parse("<answer>red</answer>", ("red", "Red", "blue")).answer is None


def test_first_answer_block_counts() -> None:
    p = parse("<think>x</think><answer>A</answer> wait <answer>B</answer>", OPTIONS)
    assert (p.answer, p.answer_text) == ("A", "A")


def test_unclosed_answer_runs_to_the_end() -> None:
    assert parse("<think>x</think><answer>C", OPTIONS).answer == "C"
    assert parse("<think>x</think><answer>B<|im_end|>", OPTIONS).answer == "B"


def test_answer_inside_the_think_is_a_draft_not_the_answer() -> None:
    p = parse("<think>maybe <answer>A</answer>? no.</think><answer>B</answer>", OPTIONS)
    assert p.answer == "B"
    assert p.think == "maybe <answer>A</answer>? no."


def test_tags_are_case_insensitive() -> None:
    p = parse("<THINK>x</Think><Answer>b</ANSWER>", OPTIONS)
    assert (p.think, p.answer) == ("x", "B")


@pytest.mark.parametrize(
    "text, think",
    [
        ("<think> a b </think><answer>A</answer>", "a b"),
        ("<think>first</think><think>second</think><answer>A</answer>", "first"),
        ("<think><think>inner</think>outer</think>", "<think>inner"),
        ("<think>never closed", "never closed"),
        ("<think>never closed<answer>A</answer>", "never closed"),
        ("no opener</think><answer>A</answer>", "no opener"),  # R1 templates put <think> in the prompt
        ("<answer>A</answer>", None),
        ("just text", None),
        ("<think></think><answer>A</answer>", ""),
    ],
)
def test_think(text: str, think: str | None) -> None:
    assert parse(text, OPTIONS).think == think


def test_prefill_and_completion_together() -> None:
    prefill = "<think>Okay let's see. This should be the final answer.</think>"
    p = parse(prefill + "<answer>C</answer>", OPTIONS)
    assert p.think == "Okay let's see. This should be the final answer."
    assert (p.answer, p.parsed, p.lenient) == ("C", True, False)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("  (C)\n", "C"),
        ("<think>x</think>\nB.", "B"),
        ("<think>x</think>blue", "B"),
        ("<think>x</think> The answer is (B).", "B"),
        ("<think>x</think> Answer: C", "C"),
        ("<think>x</think> The correct option is **D**.", "D"),
        ("<think>x</think> I'd say the answer is A. No wait, the answer is C.", "C"),  # last one counts
        ("The answer is E.", None),  # not among the options
        ("<think>x</think> Option A is wrong.", None),  # "option A" alone is no answer statement
        ("<think>x</think> I think it looks reddish.", None),
        ("<think>the answer is B", None),  # unclosed think: nothing follows it to read
        ("<think>So the answer is B.</think>", None),  # reasoning is not an answer
        ("<think>x</think> the answer is \u0412.", None),
        ("", None),
    ],
)
def test_lenient_fallbacks_without_answer_tag(text: str, expected: str | None) -> None:
    p = parse(text, OPTIONS)
    assert p.answer == expected
    assert p.lenient is (expected is not None)
    assert p.mode == ("lenient" if expected is not None else None)
    assert p.parsed is (expected is not None)
    assert p.answer_text is None


def test_no_fallback_when_the_answer_tag_is_present_but_unreadable() -> None:
    p = parse("<think>x</think><answer>purple</answer> The answer is B.", OPTIONS)
    assert (p.answer, p.parsed, p.lenient, p.answer_text) == (None, False, False, "purple")


def test_open_ended_items() -> None:
    p = parse("<think>count</think><answer> three apples </answer>", ())
    assert (p.answer, p.answer_text, p.parsed, p.mode) == (None, "three apples", True, "strict")
    p = parse("<think>count</think> The answer is 3.", ())
    assert (p.answer, p.answer_text, p.parsed, p.lenient) == (None, "3", True, True)
    p = parse("<think>count</think>seven", ())
    assert (p.answer_text, p.parsed, p.lenient) == ("seven", True, True)
    p = parse("<think>count</think><answer></answer>", ())
    assert (p.answer_text, p.parsed) == ("", False)
    assert parse("", ()).parsed is False


def test_letters_beyond_z_are_ignored_not_fatal() -> None:
    options = tuple(f"o{i}" for i in range(30))
    assert parse("<answer>Z</answer>", options).answer == "Z"


def test_huge_strings_are_fast() -> None:
    cases = [
        "x" * 3_000_000 + "<answer>B</answer>",
        "<" * 3_000_000,
        "<think>" + "answer is " * 300_000,
        ("answer is" + " " * 1000) * 2000 + "B",  # adjacent whitespace groups: backtracking bait
        "<answer>the final answer is" + " :" * 500_000,
        "</think>Answer is" + " \t\n" * 1_000_000,
        "<think><answer></think></answer>" * 100_000,
    ]
    start = time.perf_counter()
    results = [parse(t, OPTIONS) for t in cases]
    assert time.perf_counter() - start < 3.0
    assert results[0].answer == "B"


# ---------------------------------------------------------------- fuzz

_FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<THINK>", "</Answer>", "<answer", "</think", "<", ">",
    "A", "B", "C", "D", "E", "Z", "a", "b", "(", ")", "[", "]", ".", ":", " ", "\n", "\t", "*", "$",
    "\\boxed{", "}", "the answer is ", "Answer: ", "Option ", "final answer ", "red", "Blue", "dark red",
    "I'm not sure", "\u0410", "\u0412", "\uff22", "\u212a", "\u017f", "\u00a0", "\u200b", "\U0001f600",
]  # fmt: skip
_OPTION_SETS = (
    OPTIONS,
    (),
    ("A", "B"),
    ("b", "c", "a"),
    ("", " ", "\u0412"),
    tuple(f"o{i}" for i in range(30)),
)


def _completion(seed: int) -> tuple[str, tuple[str, ...]]:
    """A random completion: tag and letter fragments, arbitrary code points, now and then a run tens
    of kilobytes long (megabytes in total over the run)."""
    rng = random.Random(seed)
    parts = []
    for _ in range(rng.randrange(30)):
        kind = rng.random()
        if kind < 0.75:
            parts.append(rng.choice(_FRAGMENTS))
        elif kind < 0.95:
            parts.append("".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 8))))
        else:
            parts.append(rng.choice(_FRAGMENTS) * rng.randrange(1, 20_000))
    return "".join(parts), rng.choice(_OPTION_SETS)


def _check_well_formed(p: Parsed, options: tuple[str, ...]) -> None:
    assert isinstance(p, Parsed)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(options)]
    assert p.answer is None or p.answer in letters
    assert p.think is None or isinstance(p.think, str)
    assert p.answer_text is None or isinstance(p.answer_text, str)
    assert isinstance(p.parsed, bool) and isinstance(p.lenient, bool)
    assert p.parsed is (p.answer is not None if options else bool(p.answer_text))
    assert not p.lenient or p.parsed
    assert p.mode in ("strict", "lenient", None) and (p.mode is None) is (not p.parsed)


# Hypothesis draws one seed per example and the completion is composed from it with random.Random:
# a composite strategy of ~25 draws per example costs hypothesis over 20 s for 10,000 examples on our
# shared cores, this about 10 s; 4,000 examples keep the suite within its ten minutes. A failing seed
# is reported and reproduces the same completion.
@settings(
    max_examples=4_000,
    deadline=None,
    derandomize=True,  # a fixed example sequence: the suite stays deterministic and its time predictable
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.integers(min_value=0, max_value=2**63))
def test_fuzz_never_raises_and_is_well_formed(seed: int) -> None:
    text, options = _completion(seed)
    _check_well_formed(parse(text, options), options)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(text=st.text(), options=st.lists(st.text(max_size=5), max_size=5).map(tuple))
def test_fuzz_arbitrary_text_and_options(text: str, options: tuple[str, ...]) -> None:
    _check_well_formed(parse(text, options), options)


def test_lookalike_letters_are_never_letters() -> None:
    for lookalike in ("\u0410", "\u0412", "\u0421", "\uff21", "\uff22", "\u212a", "\u13aa", "\U0001d401"):
        for text in (f"<answer>{lookalike}</answer>", lookalike, f"The answer is {lookalike}."):
            assert parse(text, ("w", "x", "y", "z")).answer is None, (text, lookalike)


# ---------------------------------------------------------------- open-ended grading


@pytest.mark.parametrize(
    "answer, gold, expected",
    [
        ("3", "3", True),
        ("Three.", "3", True),  # number word
        ("There are 3 apples.", "3", True),  # contained, short answer
        ("The dog", "dog", True),  # article dropped
        ("a hot dog stand", "hot dog", True),  # phrase
        ("New-York", "new york", True),  # punctuation
        ("33", "3", False),  # whole word only
        ("hotdog", "hot dog", False),
        ("cat", "dog", False),
        ("It could be a dog or a cat or something else entirely, hard to say really", "dog", False),  # long
        ("", "dog", False),
        (None, "dog", False),
        ("dog", "", False),
        ("the", "the", False),  # nothing left after dropping articles
    ],
)
def test_grade_open(answer: str | None, gold: str, expected: bool) -> None:
    assert grade_open(answer, gold) is expected
