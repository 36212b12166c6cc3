"""The one type every data source produces: a multiple-choice (or open-ended) visual question."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

LETTERS = string.ascii_uppercase


def letters(n: int) -> list[str]:
    """Option letters A, B, C, ... for n options (at most 26)."""
    if not 0 <= n <= len(LETTERS):
        raise ValueError(f"{n} options: at most {len(LETTERS)} can be lettered")
    return list(LETTERS[:n])


# An image as a source gives it: PIL image, raw bytes, or a path. Decoding is deferred to
# vlmstress.data.images.load_image so a broken image becomes one error record, not a crashed load.
ImageRef = Any


@dataclass(frozen=True)
class Sample:
    """One question about one image.

    `options` is empty for an open-ended item (then `target` is None and `answer_text` is graded by
    text match). `facts` holds the scene facts of a synthetic sample, from which correct and wrong
    reasoning or captions are written for any option. `error` marks a sample that could not be read
    properly: the runner turns it into error records and goes on.
    """

    sample_id: str
    question: str
    options: tuple[str, ...] = ()
    target: str | None = None
    answer_text: str | None = None
    image: ImageRef = None
    family: str | None = None
    facts: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def option_letters(self) -> list[str]:
        return letters(len(self.options))

    @property
    def is_open_ended(self) -> bool:
        return not self.options

    def option_text(self, letter: str) -> str:
        return self.options[LETTERS.index(letter)]
