"""Fleiss' kappa and verdict tallies."""

from __future__ import annotations

import pytest

from vlmstress.judge.agreement import fleiss_kappa, verdict_counts

# Wikipedia's worked example ("Fleiss' kappa"): 14 raters put 10 subjects in 5 categories; each row
# is how many raters chose each category for one subject.
WIKIPEDIA_COUNTS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def _raters_from_counts(counts: list[list[int]]) -> list[list[str]]:
    """Rows = raters, columns = subjects: rater r gives subject i the r-th label of its counts."""
    labels = [[f"cat{j}" for j, c in enumerate(row) for _ in range(c)] for row in counts]
    return [[subject[r] for subject in labels] for r in range(len(labels[0]))]


def test_wikipedia_worked_example() -> None:
    # By hand: column sums 20, 28, 39, 21, 32 of 140, so P_e = (20²+28²+39²+21²+32²)/140² = 4170/19600.
    # Per subject sum(n_ij²) - 14 over 14·13: numerators 182, 46, 56, 80, 60, 84, 44, 32, 52, 52 = 688,
    # so P̄ = 688/1820. kappa = (688/1820 - 4170/19600) / (1 - 4170/19600) = 42110/200590 = 0.20993
    # (Wikipedia: P̄ = 0.378, P_e = 0.213, kappa = 0.210).
    raters = _raters_from_counts(WIKIPEDIA_COUNTS)
    assert len(raters) == 14 and len(raters[0]) == 10
    assert fleiss_kappa(raters) == pytest.approx(42110 / 200590, abs=1e-12)
    assert fleiss_kappa(raters) == pytest.approx(0.210, abs=5e-4)


def test_two_judges_by_hand() -> None:
    # Items: (c,c) (c,i) (i,i) (u,u). P_i = 1, 0, 1, 1 -> P̄ = 3/4.
    # Shares c 3/8, i 3/8, u 2/8 -> P_e = (9+9+4)/64 = 11/32. kappa = (3/4-11/32)/(1-11/32) = 13/21.
    judges = [
        ["consistent", "consistent", "inconsistent", "unknown"],
        ["consistent", "inconsistent", "inconsistent", "unknown"],
    ]
    assert fleiss_kappa(judges) == pytest.approx(13 / 21)


def test_perfect_agreement_over_several_categories_is_one() -> None:
    judges = [["consistent", "inconsistent", "error"]] * 3
    assert fleiss_kappa(judges) == pytest.approx(1.0)


def test_systematic_disagreement_is_minus_one() -> None:
    # Every item split 1-1: P̄ = 0; shares 1/2, 1/2 -> P_e = 1/2; kappa = (0 - 1/2) / (1/2) = -1.
    judges = [["consistent", "consistent"], ["inconsistent", "inconsistent"]]
    assert fleiss_kappa(judges) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "judges",
    [
        [],  # no judges
        [["consistent", "inconsistent"]],  # one judge
        [[], []],  # no items
        [["consistent", "consistent"], ["consistent", "consistent"]],  # one category: 0/0
    ],
)
def test_undefined_kappa_is_none(judges: list[list[str]]) -> None:
    assert fleiss_kappa(judges) is None


def test_judges_must_rate_the_same_items() -> None:
    with pytest.raises(ValueError, match="different numbers"):
        fleiss_kappa([["consistent"], ["consistent", "unknown"]])


def test_verdict_counts_has_every_name() -> None:
    assert verdict_counts(["consistent", "unknown", "consistent"]) == {
        "consistent": 2,
        "inconsistent": 0,
        "unknown": 1,
        "error": 0,
    }
    assert verdict_counts([]) == {"consistent": 0, "inconsistent": 0, "unknown": 0, "error": 0}


def test_verdict_counts_rejects_other_names() -> None:
    with pytest.raises(ValueError, match="not verdict names"):
        verdict_counts(["consistent", "maybe"])
