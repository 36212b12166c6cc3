"""Agreement between several judges on the same items: Fleiss' kappa and verdict tallies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import get_args

import numpy as np

from vlmstress.judge.base import VerdictName

VERDICT_NAMES: tuple[str, ...] = get_args(VerdictName)


def fleiss_kappa(verdicts_by_judge: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa of several judges' verdicts; rows are judges, columns the same items in order.

    Categories are whatever verdict names occur (a category nobody used changes nothing). None when
    kappa is undefined: fewer than two judges, no items, or every verdict of every judge is the same
    one category, where chance agreement is 1 and kappa is 0/0 (perfect agreement, but nothing
    to tell it apart from chance). Raises ValueError when the judges rated different numbers of items.

    Hand-written (a few lines of numpy, checked against Wikipedia's worked example in the tests)
    rather than pulling statsmodels in for one function.
    """
    rows = [list(r) for r in verdicts_by_judge]
    if len({len(r) for r in rows}) > 1:
        raise ValueError(f"judges rated different numbers of items: {[len(r) for r in rows]}")
    n_raters = len(rows)
    if n_raters < 2 or not rows[0]:
        return None
    categories = sorted({v for r in rows for v in r})
    if len(categories) < 2:
        return None
    index = {c: j for j, c in enumerate(categories)}
    # counts[i, j]: how many judges put item i in category j.
    counts = np.zeros((len(rows[0]), len(categories)))
    for row in rows:
        for i, v in enumerate(row):
            counts[i, index[v]] += 1
    p_category = counts.sum(axis=0) / counts.sum()
    p_item = ((counts**2).sum(axis=1) - n_raters) / (n_raters * (n_raters - 1))
    p_bar, p_chance = p_item.mean(), (p_category**2).sum()
    return float((p_bar - p_chance) / (1.0 - p_chance))


def verdict_counts(verdicts: Sequence[str]) -> dict[str, int]:
    """How often each verdict name occurs, every name present (zero when absent)."""
    counts = Counter(verdicts)
    unknown = set(counts) - set(VERDICT_NAMES)
    if unknown:
        raise ValueError(f"not verdict names: {sorted(unknown)}; expected one of {VERDICT_NAMES}")
    return {name: counts.get(name, 0) for name in VERDICT_NAMES}
