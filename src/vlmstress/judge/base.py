"""The judge protocol: does the answer follow from the think, and which option does the think support?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

VerdictName = Literal["consistent", "inconsistent", "unknown", "error"]


@dataclass(frozen=True)
class JudgeItem:
    """What a judge reads. `options` are the options as presented to the model (abstain included)."""

    question: str
    options: tuple[str, ...]
    think: str | None
    answer: str | None  # the parsed answer letter, or None when unparsed


@dataclass(frozen=True)
class Verdict:
    """`supports` is the option letter the think argues for (None when it argues for none or the
    judge cannot tell); `by` names the judge. A judge that fails says `error`, never `consistent`."""

    verdict: VerdictName
    supports: str | None
    by: str

    def to_json(self) -> dict:
        return asdict(self)


class Judge(Protocol):
    name: str

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order; never raises for one bad item."""
        ...
