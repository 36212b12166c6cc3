"""Think / answer extraction from an assistant turn (prefill + completion).

Rules (design.md "Parsing"): `think` is the text inside the first `<think>…</think>`; `answer` is the
option letter inside the first `<answer>…</answer>`, or the option whose text it matches exactly.
Without an `<answer>` tag, lenient fallbacks (a bare letter as the whole completion, "the answer is
(B)", "Answer: B") may still parse it; `mode` says which way it was read (`strict`, `lenient`, or
None when unparsed), so the runner can record it and the metrics count lenient parses.

Everything here must survive any string a model can emit, including megabytes of garbage: tags are
found with plain literal regexes (linear scans); every pattern with quantifiers only ever runs on a
slice of bounded length whose whitespace runs were first squeezed to one character, so adjacent
optional-whitespace groups cannot backtrack over long runs of spaces.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# re.ASCII everywhere: with Unicode case folding, `[A-Z]` under IGNORECASE would also match the
# Kelvin sign and the long s, and `\w` / `\s` would accept lookalikes. Only ASCII letters are letters.
_FLAGS = re.ASCII

_THINK_OPEN = re.compile(r"<think>", _FLAGS | re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", _FLAGS | re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<answer>", _FLAGS | re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", _FLAGS | re.IGNORECASE)

# Only this much of an answer is read for a letter: a letter or an option's text comes first, and a
# longer answer could not equal an option text anyway (options this long do not occur in practice).
_CONTENT_CAP = 2_000
# A completion (after the think) this short or shorter is tried as a whole, like an answer block.
_WHOLE_COMPLETION_CAP = 300
# Lenient "the answer is B" patterns are searched in this many trailing characters: conclusions
# come last, and the cap bounds the work on pathological megabyte completions.
_TAIL_CAP = 20_000

# Wrappers a model puts around an answer: whitespace, markdown emphasis/code, quotes, LaTeX dollars.
_WRAP = " \t\r\n*_`\"'$\u201c\u201d\u2018\u2019"
_WHITESPACE = re.compile(r"\s+")
_BOXED = re.compile(r"\\boxed\{(.*)\}", _FLAGS | re.DOTALL)

# "The answer is", "Final answer:", "Option", "correct choice is" ... before a letter (all optional).
_PREFIX = (
    r"(?:(?i:the\s+)?(?i:(?:final|correct|best|right)\s+)?(?i:answer|option|choice)"
    r"(?:\s+(?i:is|would\s+be|should\s+be))?\s*[:\-]?\s*)?"
)
# "(B)", "[B] text", "answer is (B)".
_UPPER_PAREN = re.compile(_PREFIX + r"[(\[]\s*([A-Z])\s*[)\]](?:[^A-Za-z0-9].*)?", _FLAGS | re.DOTALL)
# "B", "B.", "B) text", "B: text", "Option B", "The answer is B." (a delimiter must separate any text,
# a line break or a following tag, so "A cat sits" is not read as A).
_UPPER_BARE = re.compile(_PREFIX + r"([A-Z])(?:\s*[.:,;!)\]<\-\n].*)?", _FLAGS | re.DOTALL)
# "B red" where "red" is option B's own text.
_UPPER_WITH_TEXT = re.compile(r"([A-Z])\s+(.+)", _FLAGS | re.DOTALL)
# Lowercase letters are only read in forms where they cannot be an English article or pronoun: in
# brackets, or alone (with at most trailing punctuation), e.g. "b", "(b) red", "option b.".
_LOWER_PAREN = re.compile(_PREFIX + r"[(\[]\s*([a-z])\s*[)\]](?:[^A-Za-z0-9].*)?", _FLAGS | re.DOTALL)
_LOWER_BARE = re.compile(_PREFIX + r"([a-z])\s*[.:)\]]?", _FLAGS | re.DOTALL)

# Lenient patterns in the completion after the think: "the answer is (B)", "Answer: B",
# "the correct option is **C**". The keyword must be followed by "is" or ":" so "Option A is wrong"
# is not read as answering A.
_LENIENT_LETTER = re.compile(
    r"(?<![A-Za-z])(?i:answer|option|choice)(?:\s+(?i:is|would\s+be|should\s+be)\s*:?|\s*:)"
    r"\s*[*_`]*\s*[(\[]?\s*([A-Z])(?![A-Za-z0-9])",
    _FLAGS,
)
_LENIENT_TEXT = re.compile(r"(?<![A-Za-z])(?i:answer)(?:\s+(?i:is)\s*:?|\s*:)[ \t]*([^\n]{1,200})", _FLAGS)


# How an answer was read: from its `<answer>` tag, or by a lenient fallback without one.
ParseMode = Literal["strict", "lenient"]


@dataclass(frozen=True)
class Parsed:
    """What one assistant turn says.

    `answer` is an option letter among the given options or None; `answer_text` the raw stripped text
    of the answer block (for open-ended grading); `parsed` whether an answer was found (a letter for a
    multiple-choice item, non-empty text for an open-ended one); `mode` how it was found, None exactly
    when nothing was.
    """

    think: str | None
    answer: str | None
    answer_text: str | None
    parsed: bool
    mode: ParseMode | None

    @property
    def lenient(self) -> bool:
        """Whether a fallback, not the answer tag, found the answer."""
        return self.mode == "lenient"


def parse(text: str, options: Sequence[str]) -> Parsed:
    """Split `text` (prefill + completion) into think and answer; never raises on any string."""
    if not isinstance(text, str):
        text = ""
    options = tuple(str(o) for o in options)[: len(string.ascii_uppercase)]
    letters = string.ascii_uppercase[: len(options)]

    think, span_start, span_end = _think_span(text)
    answer_text = _answer_block(text, span_start, span_end)
    lenient = False
    answer: str | None = None

    if answer_text is not None:
        answer = _letter_from(answer_text, letters, options) if options else None
    else:
        # No <answer> tag: read what follows the think. An unclosed think runs to the end, so then
        # nothing follows and nothing is guessed from the reasoning itself.
        after = text[span_end:] if think is not None else text
        if options:
            answer = _lenient_letter(after, letters, options)
            lenient = answer is not None
        else:
            answer_text = _lenient_text(after)
            lenient = answer_text is not None

    parsed = answer is not None if options else bool(answer_text)
    mode: ParseMode | None = None if not parsed else "lenient" if lenient else "strict"
    return Parsed(think=think, answer=answer, answer_text=answer_text, parsed=parsed, mode=mode)


def after_think(text: str) -> str:
    """What a turn says after its think (all of it when it has none): where its answer is stated.
    An unclosed think runs to the end and leaves nothing, so nothing is read from reasoning alone."""
    think, _, end = _think_span(text if isinstance(text, str) else "")
    return text[end:] if think is not None else text


def _think_span(text: str) -> tuple[str | None, int, int]:
    """The think text and the [start, end) span it occupies, tags included (0, 0 when absent).

    A `</think>` with no opener (and no answer before it) counts everything before it as think: R1-style
    chat templates put the
    opening tag in the prompt, so the completion only carries the closing one.
    """
    opened = _THINK_OPEN.search(text)
    if opened is not None:
        closed = _THINK_CLOSE.search(text, opened.end())
        if closed is not None:
            return text[opened.end() : closed.start()].strip(), opened.start(), closed.end()
        answer = _ANSWER_OPEN.search(text, opened.end())
        end = answer.start() if answer is not None else len(text)
        return text[opened.end() : end].strip(), opened.start(), end
    closed = _THINK_CLOSE.search(text)
    if closed is not None and _ANSWER_OPEN.search(text, 0, closed.start()) is None:
        return text[: closed.start()].strip(), 0, closed.end()
    return None, 0, 0


def _answer_block(text: str, span_start: int, span_end: int) -> str | None:
    """Stripped content of the first `<answer>` outside the think (a draft inside the think is not
    the answer); an unclosed block runs to the end of the text."""
    opened = _ANSWER_OPEN.search(text, 0, span_start) or _ANSWER_OPEN.search(text, span_end)
    if opened is None:
        return None
    closed = _ANSWER_CLOSE.search(text, opened.end())
    return text[opened.end() : closed.start() if closed is not None else len(text)].strip()


def _norm_option(s: str) -> str:
    """Case- and space-insensitive form for exact option-text matching (a final period is dropped)."""
    return " ".join(s.strip(_WRAP).casefold().split()).rstrip(".").strip()


def _squeeze(s: str) -> str:
    """Each whitespace run as one character (a newline if it held one): the letter patterns below
    put several optional-whitespace groups side by side, which is only cheap on short runs."""
    return _WHITESPACE.sub(lambda m: "\n" if "\n" in m.group() else " ", s)


def _clean(raw: str) -> str:
    s = _squeeze(raw[:_CONTENT_CAP]).strip(_WRAP)
    boxed = _BOXED.fullmatch(s)
    return boxed.group(1).strip(_WRAP) if boxed else s


def _letter_from(raw: str, letters: str, options: Sequence[str]) -> str | None:
    """The option letter an answer names, or None. Order matters:

    1. a single uppercase letter is that letter (even if some option's text happens to be "A");
    2. an exact option text wins over letter-shaped readings ("A, B and C" as an option text);
    3. uppercase letter forms ("(B)", "B. text", "Option B"); a letter outside the options is unparsed;
    4. "B red" when "red" is option B's text;
    5. lowercase forms, only where no option text reads the answer differently.
    """
    s = _clean(raw)
    if not s:
        return None
    if len(s) == 1 and s in string.ascii_uppercase:
        return s if s in letters else None

    key = _norm_option(s)
    by_text = [ltr for ltr, opt in zip(letters, options, strict=True) if key and _norm_option(opt) == key]
    lower = _LOWER_PAREN.fullmatch(s) or _LOWER_BARE.fullmatch(s)
    if by_text:
        if len(by_text) > 1:  # duplicate option texts: cannot tell which
            return None
        if lower is not None and lower.group(1).upper() != by_text[0]:
            return None  # "b" is letter B by one reading and another option's text by the other
        return by_text[0]

    upper = _UPPER_PAREN.fullmatch(s) or _UPPER_BARE.fullmatch(s)
    if upper is not None:
        return upper.group(1) if upper.group(1) in letters else None

    with_text = _UPPER_WITH_TEXT.fullmatch(s)
    if with_text is not None:
        ltr = with_text.group(1)
        if ltr in letters and _norm_option(with_text.group(2)) == _norm_option(options[letters.index(ltr)]):
            return ltr

    if lower is not None:
        ltr = lower.group(1).upper()
        return ltr if ltr in letters else None
    return None


def _last_match(pattern: re.Pattern[str], after: str) -> re.Match[str] | None:
    """The last match in the (capped, squeezed) tail: a conclusion revises what came before it."""
    matches = deque(pattern.finditer(_squeeze(after[-_TAIL_CAP:])), maxlen=1)
    return matches[0] if matches else None


def _lenient_letter(after: str, letters: str, options: Sequence[str]) -> str | None:
    """A letter from a completion without an answer tag: the whole completion read as an answer when
    short, else the last "the answer is (B)" / "Answer: B" statement."""
    stripped = after.strip()
    if not stripped:
        return None
    if len(stripped) <= _WHOLE_COMPLETION_CAP:
        whole = _letter_from(stripped, letters, options)
        if whole is not None:
            return whole
    last = _last_match(_LENIENT_LETTER, after)
    if last is None:
        return None
    return last.group(1) if last.group(1) in letters else None


def _lenient_text(after: str) -> str | None:
    """Answer text of an open-ended item without an answer tag: the last "the answer is X" clause,
    else the whole completion when short."""
    last = _last_match(_LENIENT_TEXT, after)
    if last is not None:
        found = last.group(1).strip().rstrip(".").strip()
        if found:
            return found
    stripped = after.strip()
    return stripped if 0 < len(stripped) <= _WHOLE_COMPLETION_CAP else None


# ---------------------------------------------------------------- open-ended grading

_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven")
        + (
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        )
    )
}
# An answer this long (in words) is an explanation, not an answer: containing the gold phrase
# somewhere in it no longer means it was given as the answer.
_SHORT_ANSWER_WORDS = 10


def _open_tokens(s: str) -> list[str]:
    """Lowercase words with punctuation and articles removed, number words as digits."""
    chars = (" " if unicodedata.category(c).startswith("P") else c for c in s.casefold())
    words = "".join(chars).split()
    return [_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES]


def grade_open(answer_text: str | None, gold: str) -> bool:
    """Whether an open-ended answer matches `gold`: equal after normalisation (lowercase, no
    punctuation or articles, number words as digits), or a short answer containing the gold answer
    as a whole word or phrase ("There are 3 apples." for gold "3")."""
    if not answer_text or not gold:
        return False
    answer, expected = _open_tokens(answer_text[:_CONTENT_CAP]), _open_tokens(gold)
    if not expected:
        return False
    if answer == expected:
        return True
    if len(answer) > _SHORT_ANSWER_WORDS:
        return False
    k = len(expected)
    return any(answer[i : i + k] == expected for i in range(len(answer) - k + 1))


def think_source(completion: str, prefill: str, reasoning_field: str | None = None) -> str | None:
    """Where a record's think was read from: a server's reasoning field (`reasoning_content`,
    `reasoning`), the completion's own tags (`content`), the prefill (a think placed in the model's
    mouth), or nowhere (None)."""
    if reasoning_field:
        return reasoning_field
    if "<think>" in completion:
        return "content"
    return "prefill" if "<think>" in prefill else None
