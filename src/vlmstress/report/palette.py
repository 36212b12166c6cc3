"""One colour per variant and per quadrant, shared by every plot and table of a report.

A reader learns the colours once (wrong_think is red everywhere), so the report stays readable when
it compares many runs. Families of variants share a hue: wrong reasoning is red, its hedged form a
lighter red; captions are blue; the correct-* controls are green.
"""

from __future__ import annotations

from collections.abc import Iterable

VARIANT_COLOURS: dict[str, str] = {
    "base": "#3b3b3b",
    "stop_think": "#7b4fa6",
    "wrong_think": "#d62728",
    "wrong_think_hedge": "#f28e8e",
    "wrong_caption": "#1f5fb4",
    "wrong_caption_hedge": "#8ab4e8",
    "correct_think": "#2a9d3a",
    "correct_caption": "#95d18e",
    "abstain": "#c7921a",
}
# Variants registered by users get these, in order of first appearance.
_EXTRA = ("#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#9edae5", "#c49c94", "#f7b6d2")

QUADRANTS: tuple[str, ...] = (
    "consistent_correct",
    "inconsistent_correct",
    "inconsistent_incorrect",
    "consistent_incorrect",
    "unknown",
)
QUADRANT_LABELS: dict[str, str] = {
    "consistent_correct": "consistent, correct",
    "inconsistent_correct": "inconsistent, correct",
    "inconsistent_incorrect": "inconsistent, incorrect",
    "consistent_incorrect": "consistent, incorrect",
    "unknown": "unknown / judge error",
}
QUADRANT_COLOURS: dict[str, str] = {
    "consistent_correct": "#2a9d3a",
    "inconsistent_correct": "#a6d96a",
    "inconsistent_incorrect": "#fdae61",
    "consistent_incorrect": "#d7301f",
    "unknown": "#bdbdbd",
}


def order_variants(names: Iterable[str]) -> list[str]:
    """The paper's order (base first, then the perturbations), user variants after, each once."""
    from vlmstress.perturb import VARIANTS

    names = list(dict.fromkeys(names))
    known = [v for v in VARIANTS if v in names]
    return known + [v for v in names if v not in known]


def variant_colours(variants: Iterable[str]) -> dict[str, str]:
    """A colour for every variant; unknown variants get distinct colours in a stable order."""
    out: dict[str, str] = {}
    extra = iter(_EXTRA * 8)
    for v in variants:
        out[v] = VARIANT_COLOURS.get(v) or next(extra)
    return out
