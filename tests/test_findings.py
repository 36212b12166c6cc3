"""The Findings section's tests and verdicts, on hand-made records and dynamics rows whose answer is
known: each finding reproduced where the data says so, not reproduced where it says the opposite,
inconclusive (with a null p and its reason) where the test cannot be computed or the data cannot tell."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest, kendalltau, mannwhitneyu
from sklearn.metrics import roc_auc_score

from vlmstress import findings as F
from vlmstress.findings import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, EvalRun

N = 40


def rec(sid, variant, correct, verdict="consistent", p=None, entropy=None):
    r = {
        "sample_id": str(sid),
        "variant": variant,
        "correct": correct,
        "error": None,
        "judge": {"verdict": verdict, "supports": None, "by": "rule"},
        "letter_probs": None,
        "p_correct": p,
        "entropy": entropy,
    }
    if p is not None:
        r["letter_probs"] = {"A": p, "B": 1 - p}
    return r


def run(label, seed, correct_by_variant, verdicts=None, n=N):
    """A run whose outcome on sample i of variant v is correct_by_variant[v](i)."""
    verdicts = verdicts or {}
    records = []
    for v, fn in correct_by_variant.items():
        for i in range(n):
            verdict = verdicts.get(v, lambda i: "consistent")(i)
            records.append(rec(i, v, fn(i), verdict))
    return EvalRun(label, seed, records)


def right(i):
    return True


def wrong(i):
    return False


def first(k):
    return lambda i: i < k  # right on the first k samples


def by_key(found):
    return {f.key: f for f in found}


# ------------------------------------------------------------------------------------ the rule


def test_decide_is_the_stated_rule():
    assert F.decide(0.1, 0.01, +1)[0] == REPRODUCED
    assert F.decide(-0.1, 0.01, -1)[0] == REPRODUCED
    assert F.decide(-0.1, 0.01, +1)[0] == NOT_REPRODUCED
    assert F.decide(0.1, 0.2, +1)[0] == INCONCLUSIVE
    assert F.decide(-0.1, 0.2, +1)[0] == INCONCLUSIVE
    assert F.decide(0.0, 1.0, +1)[0] == INCONCLUSIVE
    assert F.decide(None, None, +1, "no pairs") == (INCONCLUSIVE, "no pairs")
    assert F.decide(0.1, 0.05, +1)[0] == INCONCLUSIVE  # p < 0.05, strictly


# ---------------------------------------------------------------------- 1: GRPO raises accuracy


def test_grpo_gain_is_reproduced_pooled_over_seeds():
    sft = run("sft", None, {"base": first(20)})
    plains = [run("plain", s, {"base": first(30)}) for s in (0, 1)]
    f = F.grpo_accuracy_finding([sft, *plains])
    assert f.verdict == REPRODUCED and f.n == 2 * N
    # Pooled: 20 discordant pairs, all for GRPO; each seed alone has 10.
    assert f.p_value == pytest.approx(binomtest(20, 20, 0.5).pvalue)
    assert f.effect == pytest.approx(0.25)
    assert f"seed 0: {F.fmt_p(binomtest(10, 10, 0.5).pvalue)}" in f.measured
    assert "75.0%" in f.measured and "50.0%" in f.measured


def test_grpo_loss_is_not_reproduced():
    sft = run("sft", None, {"base": first(30)})
    f = F.grpo_accuracy_finding([sft, run("plain", 0, {"base": first(15)})])
    assert f.verdict == NOT_REPRODUCED and f.effect < 0 and f.p_value < 0.05


def test_grpo_without_a_plain_arm_is_inconclusive_with_null_p():
    f = F.grpo_accuracy_finding([run("sft", None, {"base": right})])
    assert f.verdict == INCONCLUSIVE and f.p_value is None and "no plain GRPO arm" in f.reason


# ----------------------------------------------------------------- 2: faithfulness falls under RL


def test_consistency_falling_is_reproduced():
    sft = run("sft", None, {"base": first(20)})
    plain = run(
        "plain", 0, {"base": first(24)}, {"base": lambda i: "inconsistent" if i % 2 else "consistent"}
    )
    f = F.faithfulness_finding([sft, plain])
    assert f.verdict == REPRODUCED and f.effect == pytest.approx(-0.5)
    assert "accuracy 50.0% -> 60.0%" in f.reason


def test_consistency_everywhere_leaves_no_room_to_fall():
    f = F.faithfulness_finding([run("sft", None, {"base": first(20)}), run("plain", 0, {"base": first(30)})])
    assert f.verdict == INCONCLUSIVE and f.p_value == 1.0 and "little room to fall" in f.reason
    assert "(0 consistent only in plain GRPO, 0 only in SFT)" in f.measured


def test_consistency_unjudged_is_null():
    unknown = {"base": lambda i: "unknown"}
    found = F.faithfulness_finding(
        [run("sft", None, {"base": right}, unknown), run("plain", 0, {"base": right}, unknown)]
    )
    assert found.p_value is None and found.verdict == INCONCLUSIVE and "judged" in found.reason


def test_unknown_verdicts_are_left_out_of_consistency_pairs():
    records = [
        rec(0, "base", True, "consistent"),
        rec(1, "base", True, "unknown"),
        rec(2, "base", False, "inconsistent"),
    ]
    assert F.consistent(records, "base") == {"0": True, "2": False}


# ------------------------------------------------------------------------------- 3: entropy trend


def rows(field, by_step, seeds=(0, 1), variant="base"):
    return [
        {"step": step, "seed": seed, "variant": variant, field: value + 0.01 * seed}
        for seed in seeds
        for step, value in by_step.items()
    ]


def test_entropy_falling_is_reproduced_with_kendall_over_seeds():
    dyn = {"plain": rows("mean_entropy", {0: 0.9, 10: 0.7, 20: 0.5, 30: 0.3, 40: 0.1})}
    f = F.entropy_finding(dyn)
    steps, values = F.trend(dyn["plain"], "mean_entropy")
    assert (
        f.verdict == REPRODUCED and f.n == 10 and f.p_value == pytest.approx(kendalltau(steps, values).pvalue)
    )
    assert f.effect < -0.8
    # the data the test read, for the report's plot beside the finding: each row with its seed
    assert f.series["arm"] == "plain" and f.series["field"] == "mean_entropy"
    assert [(p["step"], p["value"]) for p in f.series["points"]] == list(zip(steps, values, strict=True))
    assert [p["seed"] for p in f.series["points"]] == [0] * 5 + [1] * 5


def test_entropy_rising_is_not_reproduced():
    dyn = {"plain": rows("mean_entropy", {0: 0.1, 10: 0.3, 20: 0.5, 30: 0.7, 40: 0.9})}
    assert F.entropy_finding(dyn).verdict == NOT_REPRODUCED


def test_flat_entropy_is_inconclusive_with_null_p_and_the_reason():
    dyn = {"plain": [{"step": s, "seed": 0, "variant": "base", "mean_entropy": 0.003} for s in (0, 1, 2, 3)]}
    f = F.entropy_finding(dyn)
    assert f.verdict == INCONCLUSIVE and f.p_value is None
    assert "0.0030 nats at every step" in f.reason and "no room to fall" in f.reason


def test_trend_skips_other_variants_and_nulls():
    data = rows("mean_entropy", {0: 0.5, 1: 0.4}, seeds=(0,)) + [
        {"step": 2, "seed": 0, "variant": "base", "mean_entropy": None},
        {"step": 2, "seed": 0, "variant": "wrong_think", "mean_entropy": 0.9},
    ]
    assert F.trend(data, "mean_entropy") == ([0, 1], [0.5, 0.4])


# --------------------------------------------------------------------------- 4: augmentation


def arms(caption_aug, caption_plain, think_aug, think_plain, seeds=(0, 1)):
    out = []
    for s in seeds:
        for label, cap, think in (
            ("augment", caption_aug, think_aug),
            ("augment+faithful", caption_aug, think_aug),
            ("plain", caption_plain, think_plain),
            ("faithful", caption_plain, think_plain),
        ):
            out.append(run(label, s, {"wrong_caption": cap, "wrong_think": think}))
    return out


def test_augmentation_repairs_caption_not_think_is_reproduced():
    found = by_key(F.augmentation_findings(arms(first(30), first(20), first(2), first(2))))
    assert found["4a"].verdict == REPRODUCED and found["4a"].n == 4 * N  # 2 arm pairs x 2 seeds
    assert found["4b"].verdict == REPRODUCED and found["4b"].p_value == 1.0


def test_augmentation_repairing_think_too_is_not_reproduced():
    found = by_key(F.augmentation_findings(arms(first(30), first(20), first(30), first(2))))
    assert found["4b"].verdict == NOT_REPRODUCED and "does raise wrong_think" in found["4b"].reason


def test_no_think_gain_without_a_caption_repair_is_inconclusive():
    found = by_key(F.augmentation_findings(arms(first(20), first(20), first(2), first(2))))
    assert found["4a"].verdict == INCONCLUSIVE and found["4b"].verdict == INCONCLUSIVE


def test_augmentation_pairs_seed_by_seed_only():
    evaluations = arms(first(30), first(20), first(2), first(2), seeds=(0,))
    evaluations += [run("augment", 5, {"wrong_caption": right, "wrong_think": right})]  # no plain seed 5
    assert by_key(F.augmentation_findings(evaluations))["4a"].n == 2 * N


# ------------------------------------------------------------------------------------ 5: AUROC


def auroc_run(pos_scores, neg_scores, field="p"):
    """SFT records: base letter probabilities from the scores; survivors under wrong_caption are
    the `pos_scores` samples."""
    records = []
    for i, (score, survives) in enumerate([(s, True) for s in pos_scores] + [(s, False) for s in neg_scores]):
        if field == "p":
            records.append(rec(i, "base", True, p=score, entropy=0.1))
        else:  # -H is the score
            records.append(rec(i, "base", True, p=0.9, entropy=-score))
        records.append(rec(i, "wrong_caption", survives))
    return EvalRun("sft", None, records)


def test_auroc_matches_sklearn_and_mann_whitney():
    pos, neg = [0.9, 0.8, 0.8, 0.6], [0.8, 0.5, 0.3]
    labels = [1] * len(pos) + [0] * len(neg)
    auc = F._auroc(__import__("numpy").asarray(pos), __import__("numpy").asarray(neg))
    assert auc == pytest.approx(roc_auc_score(labels, pos + neg))
    assert auc == pytest.approx(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def test_separating_p_correct_is_reproduced():
    pos = [0.95 + 0.001 * i for i in range(30)]
    neg = [0.40 + 0.01 * i for i in range(30)]
    f = F.auroc_finding([auroc_run(pos, neg)], "p_base", "5a", 0.94, at_least=True)
    assert f.verdict == REPRODUCED and f.effect == 1.0 and f.n == 60
    assert f.p_value == pytest.approx(mannwhitneyu(pos, neg).pvalue)


def test_weak_p_correct_is_not_reproduced_against_094():
    # Overlapping ranges shifted by 0.265 of their width: AUROC 1 - (1 - 0.265)^2 / 2 = 0.73.
    pos = [0.265 + i / 100 for i in range(100)]
    neg = [i / 100 for i in range(100)]
    f = F.auroc_finding([auroc_run(pos, neg)], "p_base", "5a", 0.94, at_least=True)
    assert f.verdict == NOT_REPRODUCED and "lies above the 95% interval" in f.reason
    assert f.p_value < 0.05 and f.effect == pytest.approx(0.73, abs=0.01)
    # The same data reproduces -H's "about 0.73".
    g = F.auroc_finding([auroc_run(pos, neg, field="h")], "neg_entropy", "5b", 0.73, at_least=False)
    assert g.verdict == REPRODUCED and g.effect == pytest.approx(0.73, abs=0.01)


def test_auroc_with_one_class_is_inconclusive_with_null_p():
    f = F.auroc_finding([auroc_run([0.9, 0.8, 0.7], [])], "p_base", "5a", 0.94, at_least=True)
    assert f.verdict == INCONCLUSIVE and f.p_value is None and "one class" in f.reason


def test_auroc_of_constant_scores_is_null():
    f = F.auroc_finding([auroc_run([1.0] * 5, [1.0] * 5)], "p_base", "5a", 0.94, at_least=True)
    assert f.p_value is None and f.verdict == INCONCLUSIVE and "nothing to rank" in f.reason


def test_auroc_ci_is_seeded_and_brackets_the_estimate():
    pos, neg = [0.3, 0.6, 0.9, 0.8, 0.7], [0.2, 0.5, 0.4, 0.6]
    lo, hi = F.auroc_ci(pos, neg)
    assert (lo, hi) == F.auroc_ci(pos, neg) and lo <= 0.85 <= hi


# ------------------------------------------------------------------------ 6: faithful reward


def test_faithful_reward_raising_consistency_and_shortcut_trends():
    half = {"base": lambda i: "inconsistent" if i % 2 else "consistent"}
    evaluations = [run("plain", s, {"base": right}, half) for s in (0, 1)]
    evaluations += [run("faithful", s, {"base": right}) for s in (0, 1)]
    dyn = {
        "augment+faithful": rows("mean_completion_tokens", {0: 60, 1: 50, 2: 30, 3: 20})
        + rows("distinct_think_share", {0: 0.9, 1: 0.6, 2: 0.3, 3: 0.1})
    }
    found = by_key(F.faithful_reward_findings(evaluations, dyn))
    assert found["6a"].verdict == REPRODUCED and found["6a"].effect == pytest.approx(0.5)
    assert "base accuracy 100.0% vs 100.0%" in found["6a"].reason
    assert found["6b"].verdict == REPRODUCED and "tokens" in found["6b"].measured
    assert found["6c"].verdict == REPRODUCED


def test_faithful_reward_lowering_consistency_is_not_reproduced():
    half = {"base": lambda i: "inconsistent" if i % 2 else "consistent"}
    evaluations = [run("plain", 0, {"base": right}), run("faithful", 0, {"base": right}, half)]
    assert F.faithful_reward_findings(evaluations, {})[0].verdict == NOT_REPRODUCED


def test_faithful_gate_with_nothing_judged_inconsistent_says_so():
    evaluations = [run("plain", 0, {"base": right}), run("faithful", 0, {"base": right})]
    f = F.faithful_reward_findings(evaluations, {})[0]
    assert f.verdict == INCONCLUSIVE and f.p_value == 1.0 and "almost nothing to take away" in f.reason


def think_run(label, seed, p_of, answer_of=lambda i: "B"):
    """A run with wrong_think records whose P(correct) on sample i is p_of(i)."""
    records = [rec(i, "wrong_think", False, p=p_of(i)) for i in range(N)]
    for i, r in enumerate(records):
        r["answer"] = answer_of(i)
    return EvalRun(label, seed, records)


def test_gate_holding_answers_to_a_wrong_think_is_wilcoxon_over_seed_pairs():
    from scipy.stats import wilcoxon

    # augment+faithful keeps 0.01 * (i % 3) less on the right letter than augment, seed by seed
    evaluations = [think_run("augment", s, lambda i: 0.2) for s in (0, 1)]
    evaluations += [think_run("augment+faithful", s, lambda i: 0.2 - 0.01 * (i % 3)) for s in (0, 1)]
    evaluations.append(think_run("augment+faithful", 2, lambda i: 0.0))  # no augment seed 2: unpaired
    f = F.gate_finding(evaluations)
    diffs = [-0.01 * (i % 3) for i in range(N)] * 2
    assert f.key == "6d" and f.n == 2 * N and f.effect == pytest.approx(sum(diffs) / (2 * N))
    assert f.p_value == pytest.approx(wilcoxon(diffs).pvalue) and f.verdict == REPRODUCED
    assert f"the same answer in {2 * N} of {2 * N} pairs" in f.measured and "per seed p" in f.measured
    assert "the shift is small" in f.reason and "differ in 0 of 80 pairs" in f.reason
    # the opposite (the gate raising P(correct) under a wrong think) is not reproduced; large, not small
    rise = [
        think_run("augment", 0, lambda i: 0.1),
        think_run("augment+faithful", 0, lambda i: 0.5 + i / 1000),
    ]
    up = F.gate_finding(rise)
    assert up.verdict == NOT_REPRODUCED and "small" not in up.reason


def test_gate_finding_without_pairs_or_differences_is_null():
    none = F.gate_finding([think_run("augment", 0, lambda i: 0.2)])
    assert none.p_value is None and none.verdict == INCONCLUSIVE and "no augment+faithful" in none.reason
    same = F.gate_finding(
        [think_run("augment", 0, lambda i: 0.2), think_run("augment+faithful", 0, lambda i: 0.2)]
    )
    assert same.p_value is None and same.n == N and "nothing to test" in same.reason


# ----------------------------------------------------------------------------- 7: drops, whole


def test_misleading_drops_on_the_sft_model():
    sft = run("sft", None, {"base": first(36), "wrong_think": first(2), "wrong_caption": first(30)})
    think = F.drop_finding([sft], "wrong_think", "7a")
    assert think.verdict == REPRODUCED and think.n == N and think.effect == pytest.approx(-0.85)
    assert think.p_value == pytest.approx(binomtest(0, 34, 0.5).pvalue)
    assert "outside the paper's 5-40 points" in think.reason
    caption = F.drop_finding([sft], "wrong_caption", "7b")
    assert caption.verdict == REPRODUCED and caption.test.startswith("exact McNemar")
    assert "pooled" not in caption.test  # one model against itself: nothing to pool


def test_a_drop_of_a_variant_not_evaluated_is_null():
    f = F.drop_finding([run("sft", None, {"base": right})], "wrong_caption", "7b")
    assert f.p_value is None and f.verdict == INCONCLUSIVE and "not evaluated" in f.reason


def test_confidence_drop_is_wilcoxon_over_samples_with_probabilities():
    from scipy.stats import wilcoxon

    base = [rec(i, "base", True, p=0.9) for i in range(N)]
    caption = [rec(i, "wrong_caption", i % 2 == 0, p=0.9 - 0.02 * (i % 7)) for i in range(N)]
    caption.append(rec(N, "wrong_caption", True, p=0.1))  # no base record: not a pair
    f = F.confidence_drop_finding([EvalRun("sft", None, base + caption)], "wrong_caption", "7d")
    diffs = [-0.02 * (i % 7) for i in range(N)]
    assert f.n == N and f.effect == pytest.approx(sum(diffs) / N)
    assert f.p_value == pytest.approx(wilcoxon(diffs).pvalue) and f.verdict == REPRODUCED
    # a rise is not reproduced; no probabilities at all is null with the reason
    rise = [rec(i, "wrong_caption", True, p=0.95 + 0.001 * i) for i in range(N)]
    assert (
        F.confidence_drop_finding([EvalRun("sft", None, base + rise)], "wrong_caption", "7d").verdict
        == NOT_REPRODUCED
    )
    none = F.confidence_drop_finding(
        [run("sft", None, {"base": right, "wrong_think": wrong})], "wrong_think", "7c"
    )
    assert none.p_value is None and none.verdict == INCONCLUSIVE and "letter probabilities" in none.reason
    same = F.confidence_drop_finding(
        [EvalRun("sft", None, base + [rec(i, "wrong_think", True, p=0.9) for i in range(N)])],
        "wrong_think",
        "7c",
    )
    assert same.p_value is None and "nothing to test" in same.reason


def test_nothing_evaluated_gives_every_finding_null_with_a_reason():
    found = F.compute_findings([], {})
    assert [f.key for f in found] == [
        *("1", "2", "3", "4a", "4b", "5a", "5b", "6a", "6d", "6b", "6c"),
        *("7a", "7b", "7c", "7d"),
    ]
    for f in found:
        assert f.p_value is None and f.verdict == INCONCLUSIVE and f.reason


def test_markdown_has_a_row_per_finding_with_p_or_null():
    sft = run("sft", None, {"base": first(36), "wrong_think": first(2)})
    found = F.compute_findings([sft], {})
    text = F.findings_markdown(found)
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(table) == len(found)
    for line, f in zip(table, found, strict=True):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells[0] == f.key and cells[5] == F.fmt_p(f.p_value)
        assert cells[6].startswith(f"**{f.verdict}** (")
    assert F.findings_json(found)["findings"][0]["p_text"] == "null"


def test_fmt_p():
    assert [F.fmt_p(p) for p in (None, 1.0, 0.5, 0.0512, 0.00049, 0.0)] == [
        "null",
        "1",
        "0.5",
        "0.051",
        "0.00049",
        "0",
    ]
    assert not math.isnan(float(F.fmt_p(1e-16)))


def test_sampled_evaluations_add_findings_2s_and_6s_on_their_own_records():
    """With sampled evaluations (the study's sampled/), findings 2 and 6a are tested on them as well,
    as 2s and 6s, each on the sampled records only; without them the rows are absent."""
    half = {"base": lambda i: "inconsistent" if i % 2 else "consistent"}
    greedy = [run("sft", None, {"base": right})]
    greedy += [run(a, s, {"base": right}) for a in ("plain", "faithful") for s in (0, 1)]
    # sampled: the SFT model leaves its reasoning on half the samples, the arms never
    sampled = [run("sft", None, {"base": right}, half)]
    sampled += [run(a, s, {"base": right}) for a in ("plain", "faithful") for s in (0, 1)]
    without = by_key(F.compute_findings(greedy, {}))
    assert "2s" not in without and "6s" not in without
    found = F.compute_findings(greedy, {}, sampled)
    keys = [f.key for f in found]
    assert keys.index("2s") == keys.index("2") + 1 and keys.index("6s") == keys.index("6a") + 1
    found = by_key(found)
    assert found["2"].p_value == 1 and found["2"].effect == 0  # greedy: consistent everywhere
    assert found["2s"].verdict == NOT_REPRODUCED and found["2s"].effect == pytest.approx(0.5)
    assert "sampled" in found["2s"].claim and found["2s"].measured.startswith("sampled base CoT")
    assert found["6s"].verdict == INCONCLUSIVE and found["6s"].p_value == 1
