"""The paper's findings, tested on one study's runs: pure functions over evaluation records and
training dynamics rows, so that each can be checked on hand-made inputs (tests/test_findings.py).

Each finding is one claim of the paper (docs/findings.md restates them), a statistical test of it on
this study's runs, and a verdict by one rule (`decide`):

  reproduced      the effect has the paper's sign and p < ALPHA
  not reproduced  p < ALPHA with the opposite sign, or the paper's claimed value lies outside this
                  run's 95% interval (the AUROC findings), or the contrast the paper claims is absent
                  while its first half is present (augmentation's wrong_think row)
  inconclusive    anything else: p >= ALPHA, or a test that cannot be computed (p is then None and
                  the reason says why; a number is never made up)

Paired tests pool over seeds: every (seed, test sample) is one pair, so a run's seeds count as
replicates of one training recipe; the SFT model has one evaluation, whose outcome on a sample
enters as many pairs as there are seeds. The per-seed p-values are given beside the pooled one.

The study's inputs: one `EvalRun` per evaluation (the SFT model has label "sft" and seed None, an
arm's final policy its arm name and GRPO seed) and, per arm, its seeds' dynamics.jsonl rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import kendalltau, mannwhitneyu, rankdata, wilcoxon

from vlmstress.report.stats import McNemar, mcnemar, outcomes, robustness_scores

Record = Mapping[str, object]
Row = Mapping[str, object]

ALPHA = 0.05
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
SFT = "sft"
# The paper's GRPO: format + accuracy reward, no augmentation. Findings about "RL" use this arm.
PLAIN, AUGMENT, FAITHFUL, BOTH = "plain", "augment", "faithful", "augment+faithful"
# Survival under a wrong caption is the robustness label of the AUROC findings: of the misleading
# variants it is the one whose outcome is mixed on models that follow a wrong think almost always
# (fixed in advance, not chosen per run).
ROBUSTNESS_VARIANT = "wrong_caption"
PAPER_AUROC_P = 0.94  # "AUROC 0.94 and above"
PAPER_AUROC_NEG_H = 0.73  # "-H alone only about 0.73"
BOOTSTRAP_RESAMPLES = 2000
FLAT_ENTROPY = 0.01  # nats: below this at every step there is no room for entropy to fall


@dataclass(frozen=True)
class EvalRun:
    label: str  # "sft" or an arm's name
    seed: int | None  # the arm's GRPO seed; None for the SFT model
    records: Sequence[Record]


@dataclass(frozen=True)
class Finding:
    key: str  # "1", "4a", ...
    claim: str  # what the paper claims, as a testable statement
    paper: str  # what the paper reports
    measured: str  # what this run measured, with n
    n: int | None  # pairs, rows or samples the test used
    test: str  # the test, named
    p_value: float | None  # None: the test could not be computed (`reason` says why)
    effect: float | None  # the signed effect the verdict reads (a difference, tau or AUROC)
    verdict: str  # REPRODUCED | NOT_REPRODUCED | INCONCLUSIVE
    reason: str  # why this verdict
    # A trend finding's data, as its test read it: {"arm", "field", "points": [{seed, step, value}]}
    # (the report plots it beside the finding); None for the other findings.
    series: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def decide(effect: float | None, p: float | None, sign: int, why_null: str = "") -> tuple[str, str]:
    """The verdict rule: the paper's sign (`sign` = +1 or -1) and p < ALPHA reproduce; the opposite
    sign with p < ALPHA does not; anything else is inconclusive."""
    if p is None or effect is None or not math.isfinite(effect):
        return INCONCLUSIVE, why_null or "the test could not be computed"
    if effect == 0:
        return INCONCLUSIVE, f"no effect at all (p = {fmt_p(p)})"
    agrees = (effect > 0) == (sign > 0)
    if p < ALPHA:
        if agrees:
            return REPRODUCED, f"the paper's direction, p = {fmt_p(p)} < {ALPHA}"
        return NOT_REPRODUCED, f"significant in the opposite direction (p = {fmt_p(p)})"
    side = "the paper's direction" if agrees else "the opposite direction"
    return INCONCLUSIVE, f"{side} but p = {fmt_p(p)} >= {ALPHA}: not distinguishable from no effect at this n"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "null"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}".rstrip("0").rstrip(".") if p < 1 else "1"


# ---------------------------------------------------------------------------------------- pairing

Outcome = Callable[[Sequence[Record], str], dict[str, bool]]


def correct(records: Sequence[Record], variant: str) -> dict[str, bool]:
    """sample_id -> answered right (records without error)."""
    return outcomes(records, variant)


def consistent(records: Sequence[Record], variant: str) -> dict[str, bool]:
    """sample_id -> the judge found the answer consistent with the think, over the records it could
    judge (consistent / inconsistent; `unknown` and `error` verdicts are left out, as in the
    quadrants' consistency)."""
    out = {}
    for r in records:
        verdict = (r.get("judge") or {}).get("verdict")  # type: ignore[union-attr]
        if r["variant"] == variant and r.get("error") is None and verdict in ("consistent", "inconsistent"):
            out[str(r["sample_id"])] = verdict == "consistent"
    return out


@dataclass(frozen=True)
class Paired:
    """Pooled paired outcomes of A against B: McNemar over all pairs, each side's rate on them, and
    the p of each (A run, B run) pair of runs alone."""

    test: McNemar
    rate_a: float | None
    rate_b: float | None
    runs: int
    per_run: list[tuple[str, int | None, float | None]]  # (A's label, A's seed, p)

    @property
    def effect(self) -> float | None:
        return None if self.rate_a is None or self.rate_b is None else self.rate_a - self.rate_b


def paired(
    pairs: Sequence[tuple[EvalRun, EvalRun]], variant_a: str, variant_b: str, outcome: Outcome
) -> Paired:
    """McNemar of A's `variant_a` outcomes against B's `variant_b` ones, pooled over the run pairs,
    over the samples both runs of a pair have."""
    a_all: list[bool] = []
    b_all: list[bool] = []
    per_run = []
    for a, b in pairs:
        oa, ob = outcome(a.records, variant_a), outcome(b.records, variant_b)
        common = [s for s in oa if s in ob]
        xs, ys = [oa[s] for s in common], [ob[s] for s in common]
        per_run.append((a.label, a.seed, mcnemar(xs, ys).p_value))
        a_all += xs
        b_all += ys
    rate_a = sum(a_all) / len(a_all) if a_all else None
    rate_b = sum(b_all) / len(b_all) if b_all else None
    return Paired(mcnemar(a_all, b_all), rate_a, rate_b, len(pairs), per_run)


def _runs(evaluations: Sequence[EvalRun], label: str) -> list[EvalRun]:
    return [e for e in evaluations if e.label == label]


def _by_seed(a: Sequence[EvalRun], b: Sequence[EvalRun]) -> list[tuple[EvalRun, EvalRun]]:
    """Runs of two arms paired by GRPO seed (seeds only one arm has are left out)."""
    other = {e.seed: e for e in b}
    return [(e, other[e.seed]) for e in a if e.seed in other]


def _has(runs: Sequence[EvalRun], variant: str) -> bool:
    return any(r["variant"] == variant for e in runs for r in e.records)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _paired_text(t: Paired, name_a: str, name_b: str, what: str = "", word: str = "right") -> str:
    m = t.test
    text = (
        f"{what}{name_a} {_pct(t.rate_a)} vs {name_b} {_pct(t.rate_b)}"
        + ("" if t.effect is None else f" ({100 * t.effect:+.1f} points)")
        + f"; n = {m.n} pairs"
        + (f" over {t.runs} pairs of runs" if t.runs > 1 else "")
        + f" ({m.a_only} {word} only in {name_a}, {m.b_only} only in {name_b})"
    )
    if t.runs > 1:
        named = len({label for label, _, _ in t.per_run}) > 1  # several arms: say whose seed
        text += "; per seed p: " + ", ".join(
            f"{label + ' ' if named else ''}seed {s}: {fmt_p(p)}" for label, s, p in t.per_run
        )
    return text


MCNEMAR = "exact McNemar (binomial on discordant pairs), two-sided, pooled over seeds"


def _paired_finding(
    key: str,
    claim: str,
    paper: str,
    pairs: Sequence[tuple[EvalRun, EvalRun]],
    variants: tuple[str, str],
    names: tuple[str, str],
    outcome: Outcome,
    sign: int,
    missing: str | None,
    what: str = "",
    note: Callable[[Paired], str] = lambda t: "",
) -> Finding:
    test_name = MCNEMAR if len(pairs) != 1 else MCNEMAR.replace(", pooled over seeds", "")
    if missing is None and not pairs:
        missing = f"no {names[0]} / {names[1]} runs to pair"
    if missing is not None:
        return Finding(key, claim, paper, "not measured", None, test_name, None, None, INCONCLUSIVE, missing)
    t = paired(pairs, *variants, outcome)
    why_null = "no paired samples" if t.test.n == 0 else ""
    verdict, reason = decide(t.effect, t.test.p_value, sign, why_null)
    extra = note(t)
    if extra:
        reason = f"{reason}; {extra}"
    return Finding(
        key,
        claim,
        paper,
        _paired_text(t, *names, what, "consistent" if outcome is consistent else "right"),
        t.test.n,
        test_name,
        t.test.p_value,
        t.effect,
        verdict,
        reason,
    )


# --------------------------------------------------------------------------------------- findings


def drop_finding(evaluations: Sequence[EvalRun], variant: str, key: str) -> Finding:
    """Misleading text costs accuracy: the SFT model on `variant` against itself on base."""
    sft = _runs(evaluations, SFT)[:1]
    paper = {
        "wrong_think": "a wrong think placed in the model's mouth costs 5 to 40 accuracy points, by model",
        "wrong_caption": "a misleading caption in the prompt causes large accuracy drops",
    }[variant]
    missing = (
        None
        if sft and _has(sft, variant) and _has(sft, "base")
        else f"SFT model not evaluated on {variant} and base"
    )

    def size(t: Paired) -> str:
        if t.effect is None or variant != "wrong_think":
            return ""
        drop = -100 * t.effect
        if 5 <= drop <= 40:
            return "the drop is within the paper's 5-40 points"
        return f"the drop ({drop:.1f} points) is outside the paper's 5-40 points"

    return _paired_finding(
        key,
        f"{variant} lowers accuracy against base",
        paper,
        [(s, s) for s in sft],
        (variant, "base"),
        (variant, "base"),
        correct,
        -1,
        missing,
        what="SFT model: ",
        note=size,
    )


def p_correct_by_sample(records: Sequence[Record], variant: str) -> dict[str, float]:
    """sample_id -> P(correct letter) of the variant's records that have letter probabilities."""
    out = {}
    for r in records:
        p = r.get("p_correct")
        if r["variant"] == variant and r.get("error") is None and isinstance(p, int | float):
            out[str(r["sample_id"])] = float(p)
    return out


def confidence_drop_finding(evaluations: Sequence[EvalRun], variant: str, key: str) -> Finding:
    """Misleading text costs confidence: the SFT model's P(correct) on `variant` against its own on
    base, sample by sample (Wilcoxon signed-rank, two-sided; samples whose P(correct) is the same on
    both are dropped, scipy's zero_method="wilcox")."""
    claim = f"{variant} lowers the model's confidence in the right answer (P(correct)) against base"
    paper = "misleading text causes large drops in accuracy and confidence"
    test = "Wilcoxon signed-rank (two-sided) of per-sample P(correct), variant vs base"
    sft = _runs(evaluations, SFT)[:1]
    base = p_correct_by_sample(sft[0].records, "base") if sft else {}
    other = p_correct_by_sample(sft[0].records, variant) if sft else {}
    both = sorted(set(base) & set(other))
    if not both:
        why = f"SFT model has no {variant} and base records with letter probabilities"
        return Finding(key, claim, paper, "not measured", None, test, None, None, INCONCLUSIVE, why)
    diffs = np.array([other[s] - base[s] for s in both])
    mean_base, mean_other = np.mean([base[s] for s in both]), np.mean([other[s] for s in both])
    effect = float(diffs.mean())
    measured = (
        f"SFT model: mean P(correct) {mean_other:.3f} on {variant} vs {mean_base:.3f} on base "
        f"({effect:+.3f}), n = {len(both)} samples"
    )
    if not np.any(diffs):
        why = "P(correct) is the same on both variants for every sample: nothing to test"
        return Finding(key, claim, paper, measured, len(both), test, None, effect, INCONCLUSIVE, why)
    p = float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    verdict, reason = decide(effect, p, -1)
    return Finding(key, claim, paper, measured, len(both), test, p, effect, verdict, reason)


def grpo_accuracy_finding(evaluations: Sequence[EvalRun]) -> Finding:
    plain, sft = _runs(evaluations, PLAIN), _runs(evaluations, SFT)[:1]
    missing = None if plain and sft else "no plain GRPO arm and SFT model evaluated"
    return _paired_finding(
        "1",
        "GRPO raises clean (base) accuracy over its SFT start",
        "RL fine-tuning raises visual-reasoning scores; in its Table 1 the RL-tuned models range from "
        "-5.9 to +3.7 points against their base model, by model and benchmark",
        [(p, sft[0]) for p in plain] if sft else [],
        ("base", "base"),
        ("plain GRPO", "SFT"),
        correct,
        +1,
        missing,
    )


SAMPLED = " (answers sampled at temperature 1, as the RL policy samples)"


def faithfulness_finding(evaluations: Sequence[EvalRun], key: str = "2", sampled: bool = False) -> Finding:
    """2: plain GRPO's base CoT consistency against the SFT model's; with `sampled`, the same on
    evaluations whose answers were sampled (temperature 1) instead of decoded greedily."""
    plain, sft = _runs(evaluations, PLAIN), _runs(evaluations, SFT)[:1]
    pairs = [(p, sft[0]) for p in plain] if sft else []
    missing = None if plain and sft else "no plain GRPO arm and SFT model evaluated"
    if missing is None and not any(consistent(e.records, "base") for e in [*plain, *sft]):
        missing = "nothing on base was judged consistent or inconsistent"

    def accuracy_side(t: Paired) -> str:
        acc = paired(pairs, "base", "base", correct)
        caa = [_caa(p.records) for p in plain]
        caa_sft = _caa(sft[0].records)
        text = f"accuracy {_pct(acc.rate_b)} -> {_pct(acc.rate_a)} (p = {fmt_p(acc.test.p_value)})"
        if caa_sft is not None and all(c is not None for c in caa):
            text += f", consistency-adjusted accuracy {_pct(caa_sft)} -> {_pct(float(np.mean(caa)))}"
        if t.rate_a is not None and t.rate_b is not None and min(t.rate_a, t.rate_b) > 0.99:
            text += (
                "; the judge finds nearly every answer consistent in both, so there is little room to fall"
            )
        return text

    return _paired_finding(
        key,
        "RL trades faithfulness for accuracy: base CoT consistency falls under GRPO (the accuracy side "
        "is finding 1)" + (SAMPLED if sampled else ""),
        "accuracy rises while CoT consistency (judged by an LLM) falls over RL fine-tuning",
        pairs,
        ("base", "base"),
        ("plain GRPO", "SFT"),
        consistent,
        -1,
        missing,
        what=("sampled " if sampled else "") + "base CoT consistency (judged samples): ",
        note=accuracy_side,
    )


def _caa(records: Sequence[Record]) -> float | None:
    """consistency_adjusted_accuracy on base, as metrics.py defines it (None when nothing was judged)."""
    rows = [r for r in records if r["variant"] == "base" and r.get("error") is None]
    if not rows or not any(consistent(rows, "base")):
        return None
    hits = [
        (r.get("judge") or {}).get("verdict") == "consistent" and bool(r.get("correct"))  # type: ignore[union-attr]
        for r in rows
    ]
    return sum(hits) / len(rows)


def trend(rows: Sequence[Row], field: str, variant: str = "base") -> tuple[list[int], list[float]]:
    """(step, value) of `field` over dynamics rows of `variant`, every seed pooled; nulls skipped."""
    steps, values = [], []
    for r in rows:
        v = r.get(field)
        if r.get("variant", "base") == variant and isinstance(v, int | float) and math.isfinite(v):
            steps.append(int(r["step"]))  # type: ignore[arg-type]
            values.append(float(v))
    return steps, values


def trend_points(rows: Sequence[Row], field: str, variant: str = "base") -> list[dict]:
    """The rows `trend` reads, each with its seed: what a finding's plot draws."""
    return [
        {"seed": r.get("seed"), "step": int(r["step"]), "value": float(r[field])}  # type: ignore[arg-type]
        for r in rows
        if r.get("variant", "base") == variant
        and isinstance(r.get(field), int | float)
        and math.isfinite(r[field])  # type: ignore[arg-type]
    ]


def _step_means(steps: Sequence[int], values: Sequence[float]) -> dict[int, float]:
    by: dict[int, list[float]] = {}
    for s, v in zip(steps, values, strict=True):
        by.setdefault(s, []).append(v)
    return {s: float(np.mean(by[s])) for s in sorted(by)}


def trend_finding(
    key: str,
    claim: str,
    paper: str,
    rows: Sequence[Row],
    field: str,
    arm: str,
    unit: str,
    digits: int,
    note: Callable[[list[float]], str] = lambda values: "",
) -> Finding:
    """Kendall's tau of `field` against the training step over the arm's dynamics rows (base variant,
    seeds pooled); the paper's direction is a fall (tau < 0)."""
    test = "Kendall's tau (tau-b) of value vs step, base variant, rows of every seed pooled"
    steps, values = trend(rows, field)
    if not steps:
        return Finding(
            key,
            claim,
            paper,
            "not measured",
            None,
            test,
            None,
            None,
            INCONCLUSIVE,
            f"no {arm} dynamics rows with {field}",
        )
    means = _step_means(steps, values)
    seeds = len({r.get("seed") for r in rows})
    series = {"arm": arm, "field": field, "unit": unit.strip(), "points": trend_points(rows, field)}
    first, last = next(iter(means)), next(reversed(means))
    measured = (
        f"{arm} arm, {field} (mean over seeds): "
        + ", ".join(f"step {s} {v:.{digits}f}" for s, v in means.items())
        + f"{unit}; n = {len(steps)} rows ({len(means)} steps x {seeds} seed{'s' if seeds != 1 else ''})"
    )
    tau = p = None
    why = ""
    if len(set(steps)) < 2:
        why = "rows of a single step: no trend to test"
    elif len(set(values)) < 2:
        why = f"{field} is {values[0]:.{digits}f}{unit} at every step: no variation to test"
    else:
        result = kendalltau(steps, values)
        tau, p = float(result.statistic), float(result.pvalue)
        measured += (
            f"; tau = {tau:+.2f} (step {first} -> {last}: {means[last] - means[first]:+.{digits}f}{unit})"
        )
    verdict, reason = decide(tau, p, -1, why)
    extra = note(values)
    if extra:
        reason = f"{reason}; {extra}"
    return Finding(key, claim, paper, measured, len(steps), test, p, tau, verdict, reason, series)


def entropy_finding(dynamics: Mapping[str, Sequence[Row]]) -> Finding:
    def flat(values: list[float]) -> str:
        if values and max(values) < FLAT_ENTROPY:
            return (
                f"entropy is below {FLAT_ENTROPY} nats at every step (at most {max(values):.4f}): "
                "the model is already certain of its letters, so there is no room to fall"
            )
        return ""

    return trend_finding(
        "3",
        "answer-letter entropy falls over RL steps (confidence grows)",
        "answer entropy falls monotonically over GRPO steps",
        dynamics.get(PLAIN, ()),
        "mean_entropy",
        PLAIN,
        " nats",
        4,
        note=flat,
    )


def augmentation_findings(evaluations: Sequence[EvalRun]) -> list[Finding]:
    """4a: augmentation raises wrong_caption accuracy; 4b: it does not raise wrong_think accuracy.
    Augmented arms against the arms that differ from them in augmentation only, seed by seed."""
    pairs = _by_seed(_runs(evaluations, AUGMENT), _runs(evaluations, PLAIN)) + _by_seed(
        _runs(evaluations, BOTH), _runs(evaluations, FAITHFUL)
    )
    names = ("augmented", "not augmented")
    paper = "adversarial augmentation repairs wrong_caption robustness but not wrong_think"

    def one(key: str, variant: str) -> tuple[Finding, Paired | None]:
        runs = [e for pair in pairs for e in pair]
        missing = None if not pairs or _has(runs, variant) else f"{variant} not evaluated"
        f = _paired_finding(
            key,
            f"augmentation raises {variant} accuracy"
            if variant == "wrong_caption"
            else f"augmentation does not raise {variant} accuracy",
            paper,
            pairs,
            (variant, variant),
            names,
            correct,
            +1,
            missing,
            what=f"{variant} accuracy: ",
        )
        return f, (paired(pairs, variant, variant, correct) if f.p_value is not None else None)

    caption, caption_t = one("4a", "wrong_caption")
    think, think_t = one("4b", "wrong_think")
    if think_t is not None and think.p_value is not None:
        verdict, reason = no_repair_verdict(
            think.p_value, think_t.effect or 0.0, caption.verdict, caption_t.effect if caption_t else None
        )
        think = Finding(**{**think.as_dict(), "verdict": verdict, "reason": reason})
    return [caption, think]


def no_repair_verdict(
    p: float, gain: float, caption_verdict: str, caption_gain: float | None
) -> tuple[str, str]:
    """4b's rule. The paper's claim is a contrast, a repair on wrong_caption and none on wrong_think:
    not reproduced when augmentation does raise wrong_think accuracy (p < ALPHA); reproduced when it
    does not while the wrong_caption repair (4a) is reproduced and larger; inconclusive otherwise (an
    absent effect alone, at a small n, says little)."""
    if p < ALPHA and gain > 0:
        return NOT_REPRODUCED, f"augmentation does raise wrong_think accuracy (p = {fmt_p(p)})"
    if caption_verdict == REPRODUCED and caption_gain is not None and gain < caption_gain:
        return (
            REPRODUCED,
            f"no wrong_think gain (p = {fmt_p(p)}) while wrong_caption's is significant and larger",
        )
    return INCONCLUSIVE, (
        f"no significant wrong_think gain (p = {fmt_p(p)}), but without a wrong_caption repair (4a) "
        "to set it against, an absent effect at this n says little"
    )


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties 1/2: the AUROC (= Mann-Whitney U / n1 n0)."""
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")  # negatives under each positive
    tied = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (pos.size * neg.size))


def auroc_ci(pos: Sequence[float], neg: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the AUROC, bootstrapped within each class (stratified).

    Hand-written: a bootstrap over all samples can draw a single class (AUROC undefined), and
    scipy.stats.bootstrap, which could resample the two classes as two samples, has renamed its seed
    argument across the scipy versions this project supports (as metrics._bootstrap_ci notes)."""
    p, n = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    rng = np.random.default_rng(seed)
    draws = np.concatenate(
        [rng.choice(p, (BOOTSTRAP_RESAMPLES, p.size)), rng.choice(n, (BOOTSTRAP_RESAMPLES, n.size))], axis=1
    )
    # Per resample, AUROC = (rank sum of the positives - n1 (n1 + 1) / 2) / (n1 n0), ties averaged.
    ranks = rankdata(draws, axis=1)[:, : p.size].sum(axis=1)
    stats = (ranks - p.size * (p.size + 1) / 2) / (p.size * n.size)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def auroc_finding(
    evaluations: Sequence[EvalRun], score: str, key: str, paper_value: float, at_least: bool
) -> Finding:
    """Base confidence predicts survival under ROBUSTNESS_VARIANT (SFT model). p: Mann-Whitney U,
    two-sided, of AUROC = 0.5. Verdict: not reproduced when the paper's value lies outside the 95%
    bootstrap interval (for "0.94 and above": above its upper end), or when the AUROC is
    significantly below 0.5; reproduced when it is significantly above 0.5 and the interval holds
    the paper's value; otherwise inconclusive."""
    name = "P(correct)" if score == "p_base" else "-H"
    paper = f"base {name} predicts which answers survive a perturbation with AUROC " + (
        f"{paper_value} and above" if at_least else f"about {paper_value}"
    )
    claim = f"base {name} predicts survival under {ROBUSTNESS_VARIANT}: AUROC " + (
        f">= {paper_value}" if at_least else f"about {paper_value}"
    )
    test = "Mann-Whitney U (two-sided, AUROC = 0.5), 95% stratified bootstrap interval of the AUROC"
    sft = _runs(evaluations, SFT)[:1]
    scores, labels = robustness_scores(sft[0].records, ROBUSTNESS_VARIANT, score) if sft else ([], [])  # type: ignore[arg-type]
    if not scores:
        why = f"SFT model has no {ROBUSTNESS_VARIANT} records with base letter probabilities"
        return Finding(key, claim, paper, "not measured", None, test, None, None, INCONCLUSIVE, why)
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    measured = f"SFT model: {len(pos)} of {len(scores)} samples survive {ROBUSTNESS_VARIANT}"
    if not pos or not neg:
        why = f"every sample {'survives' if pos else 'fails'}: one class, no AUROC"
        return Finding(key, claim, paper, measured, len(scores), test, None, None, INCONCLUSIVE, why)
    auc = _auroc(np.asarray(pos), np.asarray(neg))
    if len(set(scores)) == 1:
        why = f"base {name} is {scores[0]:.3g} on every sample: nothing to rank"
        return Finding(key, claim, paper, measured, len(scores), test, None, auc, INCONCLUSIVE, why)
    lo, hi = auroc_ci(pos, neg)
    p = float(mannwhitneyu(pos, neg, alternative="two-sided").pvalue)
    measured += f"; AUROC {auc:.3f} [{lo:.3f}, {hi:.3f}], n = {len(scores)}"
    below_paper = hi < paper_value
    above_paper = not at_least and lo > paper_value
    if p < ALPHA and auc < 0.5:
        verdict, reason = NOT_REPRODUCED, f"significantly below chance (p = {fmt_p(p)})"
    elif below_paper or above_paper:
        side = "above" if below_paper else "below"
        verdict, reason = (
            NOT_REPRODUCED,
            (
                f"the paper's {paper_value} lies {side} the 95% interval [{lo:.3f}, {hi:.3f}]"
                + (f" (better than chance, p = {fmt_p(p)})" if p < ALPHA and auc > 0.5 else "")
            ),
        )
    elif p < ALPHA:
        verdict, reason = REPRODUCED, f"above chance (p = {fmt_p(p)}) and the interval holds {paper_value}"
    else:
        verdict, reason = (
            INCONCLUSIVE,
            f"p = {fmt_p(p)} >= {ALPHA}: not distinguishable from chance at this n",
        )
    return Finding(key, claim, paper, measured, len(scores), test, p, auc, verdict, reason)


def faithful_reward_findings(
    evaluations: Sequence[EvalRun], dynamics: Mapping[str, Sequence[Row]]
) -> list[Finding]:
    """6a: the faithful arm's base consistency against the plain arm's; 6d: with augmentation, the
    gate holds answers to a wrong think (gate_finding); 6b, 6c: the faithful + augmentation arm's
    completions grow shorter and more alike over its steps (the shortcut)."""
    consistency = faithful_consistency_finding(evaluations)
    shortcut = (
        "faithfulness reward plus augmentation can collapse into short, templated CoTs that satisfy the judge"
    )
    rows = dynamics.get(BOTH, ())
    length = trend_finding(
        "6b",
        f"under the faithful reward with augmentation ({BOTH}), completions grow shorter over steps",
        shortcut,
        rows,
        "mean_completion_tokens",
        BOTH,
        " tokens",
        1,
    )
    templated = trend_finding(
        "6c",
        f"under the faithful reward with augmentation ({BOTH}), the thinks grow alike (distinct share falls)",
        shortcut,
        rows,
        "distinct_think_share",
        BOTH,
        "",
        3,
    )
    return [consistency, gate_finding(evaluations), length, templated]


SMALL_SHIFT = 0.01  # below this mean shift in P(correct) a significant difference is called small


def gate_finding(evaluations: Sequence[EvalRun], key: str = "6d") -> Finding:
    """6d: where the faithfulness gate bites. On a wrong_think prompt the plain reward pays an answer
    that leaves the wrong think for the right letter, and the gated reward pays it nothing (the judge
    finds it inconsistent) while still paying format to an answer that follows the think. So, with
    augmentation, the augment+faithful policy should keep less probability on the right letter under
    wrong_think than the augment policy: per-sample P(correct), paired by seed and sample (Wilcoxon
    signed-rank, two-sided, every (seed, sample) pair pooled); the paper's direction is a fall."""
    claim = (
        f"with augmentation, the faithfulness-aware reward holds answers to a wrong think placed in "
        f"their mouth: under wrong_think, {BOTH} puts less probability on the right letter than {AUGMENT}"
    )
    paper = (
        "faithfulness reward plus augmentation can collapse into shortcuts that satisfy the judge "
        "(R x 1[consistent] pays an answer only when it follows its think, a wrong one included)"
    )
    test = "Wilcoxon signed-rank (two-sided) of per-sample P(correct) on wrong_think, paired by seed, pooled"
    pairs = _by_seed(_runs(evaluations, BOTH), _runs(evaluations, AUGMENT))
    diffs: list[float] = []
    a_p: list[float] = []
    b_p: list[float] = []
    same = 0
    per_seed = []
    for a, b in pairs:
        pa, pb = p_correct_by_sample(a.records, "wrong_think"), p_correct_by_sample(b.records, "wrong_think")
        common = sorted(set(pa) & set(pb))
        d = [pa[s] - pb[s] for s in common]
        if any(d):
            per_seed.append(f"seed {a.seed}: {fmt_p(float(wilcoxon(d, zero_method='wilcox').pvalue))}")
        diffs += d
        a_p += [pa[s] for s in common]
        b_p += [pb[s] for s in common]
        ans_a, ans_b = _answers(a.records), _answers(b.records)
        same += sum(ans_a.get(s) == ans_b.get(s) for s in common)
    if not diffs:
        why = f"no {BOTH} / {AUGMENT} runs with wrong_think letter probabilities to pair"
        return Finding(key, claim, paper, "not measured", None, test, None, None, INCONCLUSIVE, why)
    effect = float(np.mean(diffs))
    measured = (
        f"mean P(correct) on wrong_think: {BOTH} {np.mean(a_p):.4f} vs {AUGMENT} {np.mean(b_p):.4f} "
        f"({effect:+.4f}); n = {len(diffs)} pairs over {len(pairs)} seed{'s' if len(pairs) != 1 else ''}; "
        f"the same answer in {same} of {len(diffs)} pairs"
        + (f"; per seed p: {', '.join(per_seed)}" if len(per_seed) > 1 else "")
    )
    if not any(diffs):
        why = "P(correct) on wrong_think is the same in both arms for every sample: nothing to test"
        return Finding(key, claim, paper, measured, len(diffs), test, None, effect, INCONCLUSIVE, why)
    p = float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    verdict, reason = decide(effect, p, -1)
    if abs(effect) < SMALL_SHIFT:
        reason += (
            f"; the shift is small ({abs(effect):.4f} of probability on average) and the answers differ "
            f"in {len(diffs) - same} of {len(diffs)} pairs: the gate changes how firmly the policy "
            "follows a given think more than what it answers"
        )
    return Finding(key, claim, paper, measured, len(diffs), test, p, effect, verdict, reason)


def _answers(records: Sequence[Record]) -> dict[str, object]:
    """sample_id -> the wrong_think answer (records without error)."""
    return {
        str(r["sample_id"]): r.get("answer")
        for r in records
        if r["variant"] == "wrong_think" and r.get("error") is None
    }


def faithful_consistency_finding(
    evaluations: Sequence[EvalRun], key: str = "6a", sampled: bool = False
) -> Finding:
    """6a: the faithful arm's base CoT consistency against the plain arm's, seed by seed; with
    `sampled`, on evaluations whose answers were sampled at temperature 1."""
    faithful, plain = _runs(evaluations, FAITHFUL), _runs(evaluations, PLAIN)
    pairs = _by_seed(faithful, plain)
    missing = None if pairs else "no faithful and plain arms with a common seed"
    if missing is None and not any(consistent(e.records, "base") for p in pairs for e in p):
        missing = "nothing on base was judged consistent or inconsistent"

    def accuracy_side(t: Paired) -> str:
        acc = paired(pairs, "base", "base", correct)
        text = f"base accuracy {_pct(acc.rate_a)} vs {_pct(acc.rate_b)} (p = {fmt_p(acc.test.p_value)})"
        if t.rate_a is not None and t.rate_b is not None and min(t.rate_a, t.rate_b) > 0.99:
            text += (
                "; the judge finds nearly every answer consistent in both arms, so the gate "
                "R x 1[consistent] has almost nothing to take away"
            )
        return text

    return _paired_finding(
        key,
        "the faithfulness-aware reward (R x 1[judge: consistent]) raises CoT consistency over plain GRPO"
        + (SAMPLED if sampled else ""),
        "the reward is meant to keep answers faithful to their reasoning (no effect size known here; "
        "see 6b, 6c for what it can do instead)",
        pairs,
        ("base", "base"),
        ("faithful", "plain"),
        consistent,
        +1,
        missing,
        what=("sampled " if sampled else "") + "base CoT consistency (judged samples): ",
        note=accuracy_side,
    )


def compute_findings(
    evaluations: Sequence[EvalRun],
    dynamics: Mapping[str, Sequence[Row]],
    sampled: Sequence[EvalRun] = (),
) -> list[Finding]:
    """Every finding, in the order of docs/findings.md; `dynamics` maps an arm to its seeds' rows.
    `sampled`: evaluations on base with answers sampled at temperature 1 (the study's `sampled/`);
    when given, findings 2 and 6a are also tested on them (2s, 6s)."""
    faithfulness = [faithfulness_finding(evaluations)]
    if sampled:
        faithfulness.append(faithfulness_finding(sampled, "2s", sampled=True))
    reward = faithful_reward_findings(evaluations, dynamics)
    if sampled:
        reward.insert(1, faithful_consistency_finding(sampled, "6s", sampled=True))
    return [
        grpo_accuracy_finding(evaluations),
        *faithfulness,
        entropy_finding(dynamics),
        *augmentation_findings(evaluations),
        auroc_finding(evaluations, "p_base", "5a", PAPER_AUROC_P, at_least=True),
        auroc_finding(evaluations, "neg_entropy", "5b", PAPER_AUROC_NEG_H, at_least=False),
        *reward,
        drop_finding(evaluations, "wrong_think", "7a"),
        drop_finding(evaluations, "wrong_caption", "7b"),
        confidence_drop_finding(evaluations, "wrong_think", "7c"),
        confidence_drop_finding(evaluations, "wrong_caption", "7d"),
    ]


# -------------------------------------------------------------------------------------- rendering

RULE = (
    f"Verdict rule: reproduced when the effect has the paper's sign and p < {ALPHA}; not reproduced "
    f"when p < {ALPHA} with the opposite sign, or when the paper's value lies outside this run's 95% "
    "interval (5a, 5b), or when augmentation does raise wrong_think accuracy (4b); inconclusive "
    "otherwise, and whenever a test cannot be computed (p null, with the reason). Paired tests pool "
    "every (seed, test sample) pair of the runs compared."
)


def findings_json(findings: Sequence[Finding]) -> dict:
    """findings.json (and what the HTML report shows): the rule, and each finding with its p as text."""
    return {
        "alpha": ALPHA,
        "rule": RULE,
        "findings": [{**f.as_dict(), "p_text": fmt_p(f.p_value)} for f in findings],
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def findings_markdown(findings: Sequence[Finding]) -> str:
    """study.md's Findings section: one row per finding."""
    lines = [
        "## Findings",
        "",
        "The paper's claims tested on this study's runs (docs/findings.md). " + RULE,
        "",
        "| # | claim | paper | this run | test | p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in findings:
        verdict = f"**{f.verdict}** ({f.reason})"
        cells = [f.key, f.claim, f.paper, f.measured, f.test, fmt_p(f.p_value), verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
