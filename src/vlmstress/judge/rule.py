"""The `rule` judge: which option does the think argue for, read by text matching alone.

It is the judge that needs no model, so it must be honest about its limits: whenever the think does
not name one option clearly it says `unknown` rather than guessing.

Order of evidence:
1. explicit letter statements ("the answer is B", "answer is (B)", "option B", "so B.", "(B)"): the
   last one in the think wins, since reasoning revises itself and concludes at the end;
2. otherwise option texts mentioned in the think (whole words, case-insensitive; the longest option
   text wins where one contains another, "dark red" over "red"): one option mentioned -> that one;
   several -> the option named right after the last concluding cue ("so the answer is blue", "the
   answer is blue");
3. otherwise a disjunction of options the think ends on ("It is white or yellow.", or option lines
   one under another): the think leaves those options open, and an answer among them follows from
   it (consistent), one outside them does not (inconsistent), while the judge names no single
   supported option; anything else -> unknown.
"""

from __future__ import annotations

import bisect
import re
import string
from collections.abc import Sequence

from vlmstress.judge.base import JudgeItem, Verdict

# Conclusions come last; the cap bounds the work on runaway thinks of megabytes.
_THINK_TAIL_CAP = 50_000
_WHITESPACE = re.compile(r"\s+")

# re.ASCII: only ASCII capitals are option letters (no Cyrillic or fullwidth lookalikes). Whitespace
# is squeezed to single spaces first, so the optional-space groups cannot backtrack over long runs.
_LETTER_STATEMENT = re.compile(
    r"(?<![A-Za-z])(?i:answer)(?:\s(?:[a-z]+\s){0,4}?(?i:is|would\sbe|should\sbe|must\sbe))?\s?:?\s?"
    r"(?:(?i:option|choice)\s?)?\(?(?P<answer>[A-Z])(?![A-Za-z0-9])"
    r"|(?<![A-Za-z])(?i:option|choice)\s?\(?(?P<option>[A-Z])(?![A-Za-z0-9])"
    # "so B." / "so (B)," only when the letter ends the clause: "So I think" is not option I.
    r"|(?<![A-Za-z])(?i:so)\s\(?(?P<so>[A-Z])\)?(?=[.,;:!?]|\s?$)"
    r"|\((?P<paren>[A-Z])\)",
    re.ASCII,
)
_CUE = re.compile(r"(?<!\w)(?:answer|so|therefore|thus|hence|conclude|conclusion|final|finally)(?!\w)", re.I)
# What may stand between a cue and the option it names directly: "answer is blue", "so: blue".
_DIRECT = re.compile(r"\s?(?:(?:is|would be|must be|should be)\s?)?:?\s?", re.I)
# A sentence ends at . ! ? followed by a space or the end, or at a line break.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
# What stands between two options of a disjunction: "white or yellow", "red, blue or green", or a
# line break between option lines ("C. white\nD. yellow").
_OR = re.compile(r"(?:,?\s?(?:or|,)\s?(?:(?:either|maybe|perhaps)\s)?|\n)(?:[A-Z][.):]\s?)?", re.I)


def _squeeze(text: str) -> str:
    return _WHITESPACE.sub(lambda m: "\n" if "\n" in m.group() else " ", text)


def _last_letter_statement(think: str, letters: str) -> str | None:
    last = None
    for m in _LETTER_STATEMENT.finditer(think):
        letter = next(g for g in m.groups() if g is not None)
        if letter in letters:  # "option E" with four options names no option
            last = letter
    return last


def _lower(text: str) -> str:
    """Lower case, one character for one, so positions in the result are positions in `text`."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


def _is_word_char(text: str, at: int) -> bool:
    return 0 <= at < len(text) and (text[at].isalnum() or text[at] == "_")


def _mentions(think: str, options: Sequence[str]) -> list[tuple[int, frozenset[str]]]:
    """(start, letters) of every option text mentioned in the think, left to right. Options with the
    same text share one entry with several letters (then a mention cannot tell them apart).

    A mention is an option text as whole words, case-insensitive, its words a whitespace apart;
    scanning left to right, the longest option text mentioned at a position wins and the scan goes
    on after it, so "red" inside a mentioned "dark red" is not a mention of "red". Found with one
    substring search per option text (linear in think and option), not a regex alternation: that
    re-read every option at every position of the think, so 26 long options sharing a start with
    a long think took minutes.
    """
    letters_by_text: dict[str, set[str]] = {}
    for letter, text in zip(string.ascii_uppercase[: len(options)], options, strict=True):
        key = " ".join(_lower(text).split())
        # A one-letter option text ("A", as when the options are only letters) would match every
        # article "a" and pronoun "I"; letter statements already cover such options.
        if key and not (len(key) == 1 and key.isascii() and key.isalpha()):
            letters_by_text.setdefault(key, set()).add(letter)
    if not letters_by_text:
        return []
    # The think is squeezed (_squeeze): every gap between words is one whitespace character, which
    # an option's single spaces then match once line breaks read as spaces.
    haystack = _lower(think).replace("\n", " ")
    longest_at: dict[int, str] = {}
    for key in letters_by_text:
        at = haystack.find(key)
        while at >= 0:
            end = at + len(key)
            whole_words = not _is_word_char(haystack, at - 1) and not _is_word_char(haystack, end)
            if whole_words and len(key) > len(longest_at.get(at, "")):
                longest_at[at] = key
            at = haystack.find(key, at + 1)
    found, resume = [], 0
    for at in sorted(longest_at):
        if at >= resume:
            key = longest_at[at]
            found.append((at, frozenset(letters_by_text[key])))
            resume = at + len(key)
    return found


def _concluded_mention(think: str, mentions: list[tuple[int, frozenset[str]]]) -> frozenset[str] | None:
    """Letters of the option a concluding sentence names: take the last cue that has option mentions
    after it in its own sentence; one option there wins, and of several the first wins only when it
    follows the cue directly ("the answer is blue, not red"), else it cannot be told ("so it is red
    or blue")."""
    cue_ends = [m.end() for m in _CUE.finditer(think)]
    # Sorted positions and bisection, not a search per mention: a think of thousands of mentions
    # would otherwise rescan the same text once for each.
    sentence_ends = [m.start() for m in _SENTENCE_END.finditer(think)]
    by_cue: dict[int, list[tuple[int, frozenset[str]]]] = {}
    for start, letters in mentions:
        i = bisect.bisect_right(cue_ends, start) - 1
        if i < 0:
            continue
        j = bisect.bisect_left(sentence_ends, cue_ends[i])
        if j == len(sentence_ends) or sentence_ends[j] >= start:  # the cue is in the mention's sentence
            by_cue.setdefault(cue_ends[i], []).append((start, letters))
    if not by_cue:
        return None
    cue_end = max(by_cue)
    concluded = by_cue[cue_end]
    first_start, first = concluded[0]
    if len({letters for _, letters in concluded}) == 1 or _DIRECT.fullmatch(think, cue_end, first_start):
        return first
    return None


def _open_disjunction(
    think: str, mentions: list[tuple[int, frozenset[str]]], options
) -> frozenset[str] | None:
    """Letters of the disjunction of options the think ends on ("white or yellow", "red, blue or
    green", or option lines one under another: "one of:\nC. white\nD. yellow"): the last mention and
    those before it joined to it by such separators, when they are at least two and not every option
    (a think listing every option argues for none)."""
    chain = [mentions[-1]]
    for earlier in reversed(mentions[:-1]):
        at, ls = earlier
        end = at + len(" ".join(_lower(options[string.ascii_uppercase.index(min(ls))]).split()))
        if not _OR.fullmatch(think, end, chain[-1][0]):
            break
        chain.append(earlier)
    letters = frozenset().union(*(ls for _, ls in chain))
    if len({ls for _, ls in chain}) < 2 or len(letters) >= len(options):
        return None
    return letters


def supported_letters(think: str | None, options: Sequence[str]) -> frozenset[str] | None:
    """The option letters the think leaves open: one when it argues for one option, several when it
    ends on a disjunction of options, None when it argues for none or it cannot be told."""
    if not think or not think.strip():
        return None
    options = tuple(options)[: len(string.ascii_uppercase)]
    letters = string.ascii_uppercase[: len(options)]
    text = _squeeze(think[-_THINK_TAIL_CAP:])
    stated = _last_letter_statement(text, letters)
    if stated is not None:
        return frozenset(stated)
    mentions = _mentions(text, options)
    if not mentions:
        return None
    distinct = {letters_ for _, letters_ in mentions}
    chosen = next(iter(distinct)) if len(distinct) == 1 else _concluded_mention(text, mentions)
    if chosen is not None:
        return chosen if len(chosen) == 1 else None
    return _open_disjunction(text, mentions, options)


def supported_letter(think: str | None, options: Sequence[str]) -> str | None:
    """The option letter the think argues for, or None when it argues for none, leaves several open,
    or it cannot be told."""
    open_letters = supported_letters(think, options)
    return next(iter(open_letters)) if open_letters and len(open_letters) == 1 else None


class RuleJudge:
    """Judge by text matching; `unknown` whenever it cannot tell, `error` only if something breaks."""

    name = "rule"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [self._one(item) for item in items]

    def _one(self, item: JudgeItem) -> Verdict:
        try:
            open_letters = supported_letters(item.think, item.options)
        except Exception:  # noqa: BLE001 - one bad item must not sink the batch; never say consistent
            return Verdict("error", None, self.name)
        supports = next(iter(open_letters)) if open_letters and len(open_letters) == 1 else None
        if open_letters is None or item.answer is None:
            return Verdict("unknown", supports, self.name)
        return Verdict("consistent" if item.answer in open_letters else "inconsistent", supports, self.name)
