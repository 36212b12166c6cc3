"""metrics: every metric on small hand-worked examples, the null cases, and the error denominators."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from vlmstress.metrics import (
    compute_metrics,
    letter_entropy,
    p_correct,
    variant_metrics,
)
from vlmstress.report.summary import summary_markdown

FIELDS = [
    "n", "accuracy", "accuracy_ci", "unparsed_rate", "lenient_rate", "extract_rate", "errors", "quadrants",
    "consistency_adjusted_accuracy",
    "mean_entropy", "mean_p_correct", "followed_misleading", "flip_rate", "auroc_p_base",
    "auroc_neg_entropy", "ece", "brier", "prefill_mode",
]  # fmt: skip
QUADRANT_NAMES = {
    "consistent_correct", "consistent_incorrect", "inconsistent_correct", "inconsistent_incorrect", "unknown",
}  # fmt: skip

# Entropies in nats, by hand: H(p, 1-p) = -p ln p - (1-p) ln(1-p).
H_91 = 0.9 * -math.log(0.9) + 0.1 * -math.log(0.1)  # 0.0948245 + 0.2302585 = 0.3250830
H_64 = 0.6 * -math.log(0.6) + 0.4 * -math.log(0.4)  # 0.3064954 + 0.3665163 = 0.6730117
H_37 = 0.3 * -math.log(0.3) + 0.7 * -math.log(0.7)  # 0.3611918 + 0.2496725 = 0.6108643


def rec(
    sample_id: str,
    variant: str = "base",
    *,
    correct: bool,
    answer: str | None,
    target: str | None = "A",
    misleading: str | None = None,
    probs: dict[str, float] | None = None,
    verdict: str = "consistent",
    error: str | None = None,
    judges: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A record with exactly design.md's fields (plus `judges` when given); its answer, if any, is
    read from the answer tag (parse_mode strict)."""
    r: dict[str, Any] = {
        "sample_id": sample_id,
        "variant": variant,
        "target": target,
        "misleading": misleading,
        "response": f"<answer>{answer}</answer>" if answer else "???",
        "prefill": "",
        "think": "So the answer is A.",
        "answer": answer,
        "parsed": answer is not None,
        "correct": correct,
        "letter_probs": probs,
        "entropy": letter_entropy(probs) if probs else None,
        "p_correct": p_correct(probs, target),
        "score_source": "generation" if probs else None,
        "judge": {"verdict": verdict, "supports": "A", "by": "rule"},
        "error": error,
        "parse_mode": "strict" if answer else None,
    }
    if judges is not None:
        r["judges"] = judges
    return r


# ---------------------------------------------------------------- letter helpers


def test_letter_entropy_by_hand() -> None:
    assert letter_entropy({"A": 0.5, "B": 0.5}) == pytest.approx(math.log(2))
    assert letter_entropy({"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}) == pytest.approx(math.log(4))
    assert letter_entropy({"A": 1.0, "B": 0.0}) == 0.0
    assert letter_entropy({"A": 0.9, "B": 0.1}) == pytest.approx(0.3250830, abs=1e-7)
    assert letter_entropy({"A": 2.0, "B": 2.0}) == pytest.approx(math.log(2))  # renormalised


def test_letter_entropy_is_scipys_to_the_bit() -> None:
    """letter_entropy does scipy.stats.entropy's arithmetic without its wrapper: the same floats, so
    records and metrics keep their bytes. Random distributions of 1-8 letters, zeros and tiny masses."""
    from scipy.stats import entropy

    from vlmstress.metrics import _normalised

    rng = np.random.default_rng(0)
    for i in range(3000):
        values = rng.random(int(rng.integers(1, 9))) ** (1 + 8 * (i % 2))
        values[rng.integers(0, len(values))] *= i % 3 != 0  # a zero in a third of them
        if values.sum() == 0:
            continue
        probs = dict(zip("ABCDEFGH", values.tolist()))
        assert letter_entropy(probs) == float(entropy(list(_normalised(probs).values())))  # the old code


@pytest.mark.parametrize("bad", [{}, {"A": 0.0}, {"A": -0.5, "B": 1.5}, {"A": float("nan")}])
def test_letter_entropy_rejects_non_distributions(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        letter_entropy(bad)


def test_p_correct() -> None:
    assert p_correct({"A": 0.2, "B": 0.8}, "B") == pytest.approx(0.8)
    assert p_correct({"A": 0.2, "B": 0.8}, "C") == 0.0
    assert p_correct({"A": 0.2, "B": 0.8}, None) is None
    assert p_correct(None, "A") is None


# ---------------------------------------------------------------- one variant


def base_records() -> list[dict[str, Any]]:
    return [
        rec("s1", correct=True, answer="A", probs={"A": 0.9, "B": 0.1}, verdict="consistent"),
        rec("s2", correct=True, answer="A", probs={"A": 0.6, "B": 0.4}, verdict="inconsistent"),
        rec("s3", correct=False, answer="B", probs={"A": 0.3, "B": 0.7}, verdict="consistent"),
        rec("s4", correct=False, answer=None, verdict="unknown"),  # unparsed, no letter_probs
        # An error record: it must not move any metric but `errors`.
        rec("s5", correct=True, answer="A", probs={"A": 1.0, "B": 0.0}, error="CUDA out of memory"),
    ]


def test_base_variant_by_hand() -> None:
    m = variant_metrics(base_records())
    assert list(m) == FIELDS
    assert m["n"] == 4 and m["errors"] == 1
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["unparsed_rate"] == pytest.approx(1 / 4)
    assert m["quadrants"] == pytest.approx(
        {
            "consistent_correct": 1 / 4,  # s1
            "consistent_incorrect": 1 / 4,  # s3
            "inconsistent_correct": 1 / 4,  # s2
            "inconsistent_incorrect": 0.0,
            "unknown": 1 / 4,  # s4
        }
    )
    assert m["consistency_adjusted_accuracy"] == pytest.approx(1 / 4)
    # Over s1..s3 (s4 has no letter_probs): (0.3250830 + 0.6730117 + 0.6108643) / 3 = 0.5363197.
    assert m["mean_entropy"] == pytest.approx(0.5363197, abs=1e-6)
    assert m["mean_p_correct"] == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    # ECE: s1 conf .9 hit (bin .9), s2 conf .6 hit (bin .6), s3 conf .7 miss (argmax B != A, bin .7):
    # (|1-.9| + |1-.6| + |0-.7|) / 3 = 1.2 / 3 = 0.4.
    assert m["ece"] == pytest.approx(0.4)
    # Brier: s1 .1²+.1² = .02, s2 .4²+.4² = .32, s3 .7²+.7² = .98 -> 1.32 / 3 = 0.44.
    assert m["brier"] == pytest.approx(0.44)
    # Base has no misleading letter and nothing to flip against.
    assert m["followed_misleading"] is None
    assert m["flip_rate"] is None and m["auroc_p_base"] is None and m["auroc_neg_entropy"] is None
    # 2000 draws of Binomial(4, 1/2) / 4: P(0) = P(4) = 1/16 > 2.5%, so the 2.5th and 97.5th
    # percentiles are the extremes 0 and 1.
    assert m["accuracy_ci"] == [0.0, 1.0]


def test_base_is_base_even_when_given_base_records() -> None:
    records = base_records()
    m = variant_metrics(records, {r["sample_id"]: r for r in records})
    assert m["flip_rate"] is None and m["auroc_p_base"] is None


def paired_records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    base = [
        rec("s1", correct=True, answer="A", probs={"A": 0.9, "B": 0.1}),
        rec("s2", correct=True, answer="A", probs={"A": 0.6, "B": 0.4}),
        rec("s3", correct=False, answer="B", probs={"A": 0.3, "B": 0.7}),
        rec("s4", correct=True, answer="A", probs={"A": 0.6, "B": 0.4}),
        rec("s7", correct=True, answer="A", probs={"A": 0.8, "B": 0.2}, error="timeout"),
    ]
    wt = "wrong_think"
    variant = [
        rec("s1", wt, correct=True, answer="A", misleading="B"),
        rec("s2", wt, correct=False, answer="B", misleading="B"),  # followed, flipped
        rec("s3", wt, correct=False, answer="B", misleading="B"),  # followed, was already wrong
        rec("s4", wt, correct=True, answer="A", misleading="B"),
        rec("s5", wt, correct=True, answer="A", misleading="B", error="boom"),  # excluded everywhere
        rec("s6", wt, correct=False, answer="C", misleading="B"),  # no base record: no pair
        rec("s7", wt, correct=False, answer="B", misleading="B"),  # base record is an error: no pair
    ]
    return base, variant


def test_perturbed_variant_by_hand() -> None:
    base, variant = paired_records()
    m = variant_metrics(variant, {r["sample_id"]: r for r in base})
    assert m["n"] == 6 and m["errors"] == 1
    assert m["accuracy"] == pytest.approx(2 / 6)  # s1, s4
    assert m["followed_misleading"] == pytest.approx(3 / 6)  # s2, s3, s7
    # Pairs s1..s4; base correct and now wrong: s2 only.
    assert m["flip_rate"] == pytest.approx(1 / 4)
    # Survived (label 1): s1 (P_base .9), s4 (.6); not: s2 (.6), s3 (.3).
    # Pos/neg pairs: .9>.6 1, .9>.3 1, .6=.6 1/2, .6>.3 1 -> 3.5 / 4.
    assert m["auroc_p_base"] == pytest.approx(0.875)
    # -H on base: s1 -.3251, s4 -.6730 (pos); s2 -.6730, s3 -.6109 (neg).
    # (s1,s2) 1, (s1,s3) 1, (s4,s2) tie 1/2, (s4,s3) 0 -> 2.5 / 4.
    assert m["auroc_neg_entropy"] == pytest.approx(0.625)
    # No record of this variant has letter_probs: every letter metric is null, never 0.
    for key in ("mean_entropy", "mean_p_correct", "ece", "brier"):
        assert m[key] is None
    assert sum(m["quadrants"].values()) == pytest.approx(1.0)


def test_auroc_is_null_with_one_class() -> None:
    base, _ = paired_records()
    survived_all = [
        rec(s, "wrong_caption", correct=True, answer="A", misleading="B") for s in ("s1", "s2", "s3")
    ]
    m = variant_metrics(survived_all, {r["sample_id"]: r for r in base})
    assert m["auroc_p_base"] is None and m["auroc_neg_entropy"] is None
    assert m["flip_rate"] == 0.0  # computable, and truly zero


def test_auroc_is_null_without_base_letter_probs() -> None:
    base = [rec("s1", correct=True, answer="A"), rec("s2", correct=True, answer="A")]
    variant = [
        rec("s1", "stop_think", correct=True, answer="A"),
        rec("s2", "stop_think", correct=False, answer="B"),
    ]
    m = variant_metrics(variant, {r["sample_id"]: r for r in base})
    assert m["flip_rate"] == pytest.approx(1 / 2)
    assert m["auroc_p_base"] is None and m["auroc_neg_entropy"] is None
    assert m["followed_misleading"] is None  # stop_think argues for no letter


def test_no_base_records_given() -> None:
    _, variant = paired_records()
    m = variant_metrics(variant)
    assert m["flip_rate"] is None and m["auroc_p_base"] is None and m["auroc_neg_entropy"] is None


def test_ece_bins_are_half_open_and_argmax_ties_go_to_the_first_letter() -> None:
    records = [
        # conf .3 with A and B tied: argmax A (first letter) == target A -> hit; bin [.3, .4)
        rec("s1", correct=True, answer="A", probs={"A": 0.3, "B": 0.3, "C": 0.2, "D": 0.2}),
        # conf .35, argmax A != target B -> miss; bin [.3, .4)
        rec("s2", correct=False, answer="A", target="B", probs={"A": 0.35, "B": 0.25, "C": 0.2, "D": 0.2}),
    ]
    # One bin: |mean hit .5 - mean conf .325| = .175. (Were .3 put in the bin below: .5·.7 + .5·.35.)
    assert variant_metrics(records)["ece"] == pytest.approx(0.175)


def test_brier_counts_a_target_missing_from_the_distribution() -> None:
    records = [rec("s1", correct=False, answer="A", target="B", probs={"A": 1.0})]
    # (1 - 0)² for A + (0 - 1)² for B = 2.
    assert variant_metrics(records)["brier"] == pytest.approx(2.0)


def test_open_ended_records() -> None:
    records = [
        rec("o1", correct=True, answer=None, target=None, verdict="unknown"),
        rec("o2", correct=False, answer=None, target=None, verdict="unknown"),
        rec("o3", correct=True, answer=None, target=None, verdict="consistent"),
    ]
    m = variant_metrics(records)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["consistency_adjusted_accuracy"] == pytest.approx(1 / 3)
    for key in ("mean_entropy", "mean_p_correct", "ece", "brier", "followed_misleading"):
        assert m[key] is None


def test_all_errors_gives_nulls_not_zeros() -> None:
    records = [rec(f"s{i}", correct=True, answer="A", error="boom") for i in range(3)]
    m = variant_metrics(records)
    assert m["n"] == 0 and m["errors"] == 3
    for key in FIELDS:
        if key not in ("n", "errors", "quadrants"):
            assert m[key] is None, key
    assert set(m["quadrants"]) == QUADRANT_NAMES
    assert all(v is None for v in m["quadrants"].values())


def test_judge_error_counts_as_unknown_and_quadrants_sum_to_one() -> None:
    records = [
        rec("s1", correct=True, answer="A", verdict="error"),
        rec("s2", correct=False, answer="B", verdict="inconsistent"),
        rec("s3", correct=True, answer="A", verdict="consistent"),
    ]
    records.append({**rec("s4", correct=True, answer="A"), "judge": None})  # no judge ran
    q = variant_metrics(records)["quadrants"]
    assert q["unknown"] == pytest.approx(2 / 4)
    assert q["inconsistent_incorrect"] == pytest.approx(1 / 4)
    assert q["consistent_correct"] == pytest.approx(1 / 4)
    assert sum(q.values()) == pytest.approx(1.0)


def test_accuracy_ci() -> None:
    hits = [rec(f"s{i}", correct=i % 2 == 0, answer="A") for i in range(100)]
    ci = variant_metrics(hits, seed=7)["accuracy_ci"]
    # Normal approximation by hand: .5 ± 1.96·sqrt(.25/100) = .5 ± .098.
    assert ci[0] == pytest.approx(0.402, abs=0.025) and ci[1] == pytest.approx(0.598, abs=0.025)
    assert variant_metrics(hits, seed=7)["accuracy_ci"] == ci  # deterministic given the seed
    all_right = [rec(f"s{i}", correct=True, answer="A") for i in range(5)]
    assert variant_metrics(all_right)["accuracy_ci"] == [1.0, 1.0]
    assert variant_metrics(all_right[:1])["accuracy_ci"] is None  # one record: no interval
    assert variant_metrics([])["accuracy_ci"] is None


def test_lenient_and_extract_rates_from_hand_made_completions() -> None:
    # Completions through make_record, as a run writes them: how each answer was read, and its share.
    from vlmstress.data.schema import Sample
    from vlmstress.extract import Extraction
    from vlmstress.models.base import Generation
    from vlmstress.perturb import perturb
    from vlmstress.runner import make_record

    sample = Sample("s", "Which colour?", ("red", "blue", "green"), "B")
    prompt = perturb(sample, "base", 0)
    completions = [
        ("<think>x</think><answer>B</answer>", "strict"),
        ("<answer>blue</answer>", "strict"),  # the option's text, in the tag
        ("<think>x</think> The answer is (B).", "lenient"),
        ("C", "lenient"),  # a bare letter without a tag
        ("<think>x</think> I am not sure.", None),
        ("<answer>purple</answer> The answer is B.", None),  # a tag that names no option: no fallback
    ]
    records = []
    for i, (text, mode) in enumerate(completions):
        record = make_record(sample, prompt, Generation(text), [])
        assert record["parse_mode"] == mode and record["parsed"] is (mode is not None), text
        records.append({**record, "sample_id": f"s{i}"})
    records.append(make_record(sample, prompt, Generation("", error="timeout"), []))  # not in n
    m = variant_metrics(records)
    assert m["n"] == 6 and m["errors"] == 1
    assert m["lenient_rate"] == pytest.approx(2 / 6)
    assert m["unparsed_rate"] == pytest.approx(2 / 6)
    assert m["extract_rate"] == 0.0  # computable, and truly zero: nothing was extracted
    assert m["accuracy"] == pytest.approx(3 / 6)

    # An extractor's letter reads an unparsed completion (never a parsed one); "none" leaves it so.
    unparsed = Generation("<think>x</think> I am not sure.")
    read = make_record(sample, prompt, unparsed, [], Extraction("B", "ext"))
    none = make_record(sample, prompt, unparsed, [], Extraction(None, "ext"))
    assert (read["answer"], read["parse_mode"], read["parsed"], read["correct"]) == (
        "B",
        "extract",
        True,
        True,
    )
    assert (none["answer"], none["parse_mode"], none["parsed"]) == (None, None, False)
    assert read["extraction"] == {"answer": "B", "by": "ext", "error": None}
    m = variant_metrics([records[0], read, none])
    assert m["extract_rate"] == pytest.approx(1 / 3) and m["unparsed_rate"] == pytest.approx(1 / 3)
    assert m["lenient_rate"] == 0.0


def test_lenient_and_extract_rates_are_null_without_records_or_with_old_ones() -> None:
    errors = [rec(f"s{i}", correct=True, answer="A", error="boom") for i in range(2)]
    for records in ([], errors):  # n = 0
        m = variant_metrics(records)
        assert m["lenient_rate"] is None and m["extract_rate"] is None
    # A record written before parse_mode: how it was read is unknown, so the shares are too.
    old = {k: v for k, v in rec("s9", correct=True, answer="A").items() if k != "parse_mode"}
    m = variant_metrics([rec("s1", correct=True, answer="A"), old])
    assert m["lenient_rate"] is None and m["extract_rate"] is None
    assert m["unparsed_rate"] == 0.0  # the other metrics are unaffected


# ---------------------------------------------------------------- whole run


def test_compute_metrics_shape_and_order() -> None:
    base, variant = paired_records()
    records = [variant[0], *base, *variant[1:]]  # wrong_think seen first
    m = compute_metrics(records, model="tiny", data="synth:4", n_samples=4, seed=0)
    assert list(m) == ["model", "data", "n_samples", "variants", "warnings"]  # no agreement keys
    assert (m["model"], m["data"], m["n_samples"]) == ("tiny", "synth:4", 4)
    assert list(m["variants"]) == ["wrong_think", "base"]
    assert m["variants"]["wrong_think"]["flip_rate"] == pytest.approx(1 / 4)
    assert m["variants"]["wrong_think"]["auroc_p_base"] == pytest.approx(0.875)
    assert m["variants"]["base"]["flip_rate"] is None
    assert m["variants"]["base"]["n"] == 4 and m["variants"]["base"]["errors"] == 1
    for v in m["variants"].values():
        assert list(v) == FIELDS
        assert sum(v["quadrants"].values()) == pytest.approx(1.0)


def test_compute_metrics_with_several_judges() -> None:
    # Same verdicts as the two-judge Fleiss example in test_agreement: kappa = 13/21.
    pairs = [
        ("consistent", "consistent"),
        ("consistent", "inconsistent"),
        ("inconsistent", "inconsistent"),
        ("unknown", "unknown"),
    ]
    records = []
    for i, (a, b) in enumerate(pairs):
        judges = [
            {"verdict": a, "supports": None, "by": "rule"},
            {"verdict": b, "supports": None, "by": "llm"},
        ]
        records.append({**rec(f"s{i}", correct=True, answer="A", judges=judges), "judge": judges[0]})
    error_judges = [
        {"verdict": "error", "supports": None, "by": "rule"},
        {"verdict": "error", "supports": None, "by": "llm"},
    ]
    records.append(rec("s9", correct=True, answer="A", error="boom", judges=error_judges))  # not counted
    m = compute_metrics(records, model="tiny", data="synth", n_samples=5)
    assert m["judges"] == {
        "rule": {"consistent": 2, "inconsistent": 1, "unknown": 1, "error": 0},
        "llm": {"consistent": 1, "inconsistent": 2, "unknown": 1, "error": 0},
    }
    assert m["judge_agreement"]["fleiss_kappa"] == pytest.approx(13 / 21)


# ---------------------------------------------------------------- summary.md


def test_summary_markdown() -> None:
    def variant(**kw: Any) -> dict[str, Any]:
        v: dict[str, Any] = dict.fromkeys(FIELDS)
        v.update(n=8, errors=0)
        v.update(kw)
        return v

    metrics = {
        "model": "tiny",
        "data": "synth",
        "n_samples": 8,
        "variants": {
            "base": variant(
                accuracy=0.5, accuracy_ci=[0.25, 0.75], consistency_adjusted_accuracy=0.375,
                unparsed_rate=0.0, mean_entropy=0.6931, mean_p_correct=0.55,
            ),
            "wrong_think": variant(
                accuracy=0.375, accuracy_ci=[0.125, 0.625], consistency_adjusted_accuracy=0.25,
                unparsed_rate=0.125, followed_misleading=0.5, flip_rate=0.25, auroc_p_base=0.9375, errors=2,
            ),
        },
    }  # fmt: skip
    metrics["variants"]["wrong_think"]["lenient_rate"] = 0.25
    text = summary_markdown(metrics)
    lines = text.splitlines()
    assert lines[0] == "# tiny on synth"
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 4  # header, rule, two variants
    assert len({ln.count("|") for ln in table}) == 1  # every row has the same number of cells
    dash = "\u2013"
    assert table[2] == (
        f"| base | 8 | 50.0 [25.0, 75.0] | {dash} | 37.5 | 0.0 | {dash} | 0.693 | 55.0 | {dash} | {dash} "
        f"| {dash} |"
    )
    assert table[3] == (
        f"| wrong_think | 8 (2 errors) | 37.5 [12.5, 62.5] | -12.5 | 25.0 | 12.5 | 25.0 | {dash} | {dash} "
        "| 50.0 | 25.0 | 93.8 |"
    )
    assert "kappa" not in text and "extracted" not in text  # no answer was extracted: no column
    # With extracted answers the column is there, after lenient.
    metrics["variants"]["base"]["extract_rate"] = 0.125
    table = [ln for ln in summary_markdown(metrics).splitlines() if ln.startswith("|")]
    assert "| unparsed % | lenient % | extracted % |" in table[0]
    assert len({ln.count("|") for ln in table}) == 1
    assert table[2].startswith(
        f"| base | 8 | 50.0 [25.0, 75.0] | {dash} | 37.5 | 0.0 | {dash} | 12.5 | 0.693 |"
    )


def test_summary_markdown_of_real_metrics_with_judges() -> None:
    base, variant = paired_records()
    metrics = compute_metrics([*base, *variant], model="m", data="d", n_samples=4)
    metrics["judges"] = {"rule": {}, "llm": {}}
    metrics["judge_agreement"] = {"fleiss_kappa": 13 / 21}
    text = summary_markdown(metrics)
    assert "| wrong_think | 6 (1 error) |" in text
    assert "Fleiss' kappa, 2 judges): 0.619" in text


def test_brier_does_not_depend_on_the_hash_seed():
    # Float sums depend on their order; a set of letters iterates in PYTHONHASHSEED order, so two
    # processes once wrote different last digits into metrics.json from identical records.
    import os
    import subprocess
    import sys

    code = (
        "from vlmstress.metrics import _brier;"
        "print(repr(_brier([({'A': 0.1, 'B': 0.2, 'C': 0.3000001, 'D': 0.3999999}, 'C')] * 3)))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # three processes: a set of four letters iterates in one order under all three hash seeds
        # rarely enough that an order-dependent sum would show (the 24 orders come about equally
        # often over hash seeds, so all three agree about once in 600)
        for seed in range(3)
    }
    assert len(outs) == 1, outs


def test_summaries_give_the_metrics_of_the_records_they_summarize() -> None:
    # finish_run computes metrics.json from RecordSummary objects, not from the records: the same
    # bytes for every kind of record (several judges, no judge, prefill modes old and new, probs
    # missing, errors, open-ended, a family).
    import json

    from vlmstress.metrics import summarize

    base, variant = paired_records()
    records = [*base, *variant]
    judges = [{"verdict": "consistent", "supports": "A", "by": "rule"}, {"verdict": "unknown", "by": "llm"}]
    records.append({**rec("s7", correct=True, answer="A", judges=judges), "judge": judges[0]})
    records.append({**rec("s8", "wrong_think", correct=False, answer="B"), "judge": None})
    moved = {**rec("s9", "wrong_think", correct=True, answer="A", probs={"A": 0.5, "B": 0.5})}
    records.append({**moved, "prefill": "<think>x", "prefill_mode": None, "meta": {"prefill_mode": "user"}})
    records.append(
        {**rec("s10", "wrong_think", correct=False, answer=None), "prefill": "<think>", "family": "f"}
    )
    records.append({**rec("s11", correct=True, answer=None, target=None), "family": "f"})
    records.append({**rec("s12", "stop_think", correct=True, answer="A"), "parse_mode": "lenient"})
    old = rec("s13", "stop_think", correct=True, answer="A")
    records.append({k: v for k, v in old.items() if k != "parse_mode"})  # written before the field
    records.append({**rec("s14", correct=True, answer="A", probs={"A": 0.7, "B": 0.3}), "difficulty": "hard"})
    strings: dict = {}
    summaries = [summarize(r, strings) for r in records]
    assert summaries[0]["sample_id"] is summaries[len(base)]["sample_id"]  # shared, not copied
    assert summaries[-8]["judges"] == [
        {"by": "rule", "verdict": "consistent"},
        {"by": "llm", "verdict": "unknown"},
    ]
    for kwargs in ({"model": "m", "data": "d", "n_samples": 12, "seed": 3},):
        assert json.dumps(compute_metrics(summaries, **kwargs)) == json.dumps(
            compute_metrics(records, **kwargs)
        )
    from vlmstress.runner import difficulty_slices, family_accuracy

    assert family_accuracy(summaries) == family_accuracy(records)
    assert difficulty_slices(summaries) == difficulty_slices(records) != {}


def test_difficulty_slices() -> None:
    from vlmstress.runner import difficulty_slices

    records = [
        {**rec("a", correct=True, answer="A", probs={"A": 0.5, "B": 0.5}), "difficulty": "hard"},
        {**rec("b", correct=False, answer="B", probs={"A": 0.2, "B": 0.8}), "difficulty": "hard"},
        {**rec("c", correct=True, answer="A"), "difficulty": "easy"},  # no letter probabilities
        {**rec("d", correct=True, answer="A"), "difficulty": None},  # a benchmark without levels
        {**rec("e", correct=False, answer=None), "difficulty": "easy", "error": "boom"},
    ]
    got = difficulty_slices(records)["base"]
    assert set(got) == {"hard", "easy"}
    assert got["hard"]["n"] == 2 and got["hard"]["accuracy"] == 0.5
    assert got["hard"]["mean_entropy"] == pytest.approx(
        (math.log(2) + (-0.2 * math.log(0.2) - 0.8 * math.log(0.8))) / 2
    )
    assert got["hard"]["mean_p_correct"] == pytest.approx((0.5 + 0.2) / 2)
    assert got["easy"] == {"n": 1, "accuracy": 1.0, "mean_entropy": None, "mean_p_correct": None}
    assert difficulty_slices([records[3]]) == {}
