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


def all_images(image: ImageRef, extra_images: tuple[ImageRef, ...]) -> tuple[ImageRef, ...]:
    """(first, *rest), or () without a first image: what Sample.images and Prompt.images return."""
    if image is None:
        return ()
    return (image, *extra_images) if extra_images else (image,)


def image_fields(images: tuple[ImageRef, ...] | list[ImageRef]) -> dict[str, Any]:
    """The `image` / `extra_images` keywords of a Sample holding `images` in order."""
    return {"image": images[0] if images else None, "extra_images": tuple(images[1:])}


@dataclass(frozen=True)
class Sample:
    """One question about one image, or about several (BLINK, MuirBench, MMIU).

    `image` is the first image and `extra_images` the ones after it, in the order the question
    names them ("the first image", "the second image"); `images` is all of them. Keeping the first
    apart leaves every one-image caller, and the one-image path, exactly as it was.

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
    extra_images: tuple[ImageRef, ...] = ()

    def __post_init__(self) -> None:
        if self.extra_images and self.image is None:
            raise ValueError("extra_images without a first image: pass it as `image`")

    @property
    def images(self) -> tuple[ImageRef, ...]:
        """Every image of the sample in order; empty for a text-only sample."""
        return all_images(self.image, self.extra_images)

    @property
    def option_letters(self) -> list[str]:
        return letters(len(self.options))

    @property
    def is_open_ended(self) -> bool:
        return not self.options

    def option_text(self, letter: str) -> str:
        return self.options[LETTERS.index(letter)]
