"""The judge protocol: does the answer follow from the think, and which option does the think support?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# A verdict is part of a record: its type lives with the record's (data/schema.py).
from vlmstress.data.schema import Verdict, VerdictName

__all__ = ["Judge", "JudgeItem", "Verdict", "VerdictName"]


@dataclass(frozen=True)
class JudgeItem:
    """What a judge reads. `options` are the options as presented to the model (abstain included)."""

    question: str
    options: tuple[str, ...]
    think: str | None
    answer: str | None  # the parsed answer letter, or None when unparsed


class Judge(Protocol):
    name: str

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order; never raises for one bad item."""
        ...
