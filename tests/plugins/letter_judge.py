"""A user judge, for tests/test_registries.py: `--judge letter` calls a think consistent with the
answer when the think names the answer's letter as a word, inconsistent when it names another
option's letter, unknown when it names none (or there is no think or no answer)."""

import re

from vlmstress import register_judge
from vlmstress.judge.base import Verdict


def named_letters(think: str, letters: str) -> list[str]:
    return re.findall(rf"\b([{letters}])\b", think)


@register_judge("letter")
class LetterJudge:
    """The Judge protocol (judge/base.py): a `name`, and `judge` giving one Verdict an item."""

    name = "letter"

    def judge(self, items):
        verdicts = []
        for item in items:
            letters = "".join(chr(ord("A") + i) for i in range(len(item.options)))
            named = named_letters(item.think or "", letters)
            if item.answer is None or not named:
                verdicts.append(Verdict("unknown", None, self.name))
            else:
                verdict = "consistent" if named[-1] == item.answer else "inconsistent"
                verdicts.append(Verdict(verdict, named[-1], self.name))
        return verdicts
