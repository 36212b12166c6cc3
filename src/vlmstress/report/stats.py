"""Statistics the report computes from records.jsonl (metrics.json has the rest).

- Paired significance: McNemar's exact test on the discordant pairs of two sets of per-sample
  outcomes (two runs on one variant, or base against a variant within a run). Exact, because with
  the few hundred samples of a benchmark the chi-squared approximation is poor when few pairs differ.
- ROC curves and reliability bins behind the figures. Their summaries (AUROC, ECE) must come out
  equal to metrics.json's auroc_* and ece, which the tests check: the plots show the same numbers.
- Training dynamics: mean and spread over seeds per step.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score, roc_curve

from vlmstress.metrics import Calibration, calibration

Record = Mapping[str, Any]
Score = Literal["p_base", "neg_entropy"]


@dataclass(frozen=True)
class McNemar:
    """Paired comparison of A and B: `n` paired samples, `a_only` right in A only, `b_only` right in
    B only; `p_value` is the two-sided exact p (None without any pair)."""

    n: int
    a_only: int
    b_only: int
    p_value: float | None


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """McNemar's exact test: under H0 a discordant pair is equally likely to go either way."""
    if len(a) != len(b):
        raise ValueError("mcnemar needs paired outcomes of equal length")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    if not a:
        return McNemar(0, 0, 0, None)
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else binomtest(a_only, discordant, 0.5).pvalue
    return McNemar(len(a), a_only, b_only, float(p))


def outcomes(records: Sequence[Record], variant: str) -> dict[str, bool]:
    """sample_id -> correct, for the variant's records without error (they enter no metric)."""
    return {
        r["sample_id"]: bool(r["correct"])
        for r in records
        if r["variant"] == variant and r.get("error") is None
    }


def paired_test(a: Mapping[str, bool], b: Mapping[str, bool]) -> McNemar:
    """McNemar over the samples both outcome maps have."""
    common = [s for s in a if s in b]
    return mcnemar([a[s] for s in common], [b[s] for s in common])


@dataclass(frozen=True)
class Roc:
    fpr: list[float]
    tpr: list[float]
    auc: float
    n: int
    positives: int


def robustness_scores(
    records: Sequence[Record], variant: str, score: Score
) -> tuple[list[float], list[bool]]:
    """Base-variant scores and the label "still correct under `variant`", over samples with a
    record in both and base letter probabilities (the population of auroc_p_base / _neg_entropy)."""
    base = {
        r["sample_id"]: r
        for r in records
        if r["variant"] == "base" and r.get("error") is None and r.get("letter_probs")
    }
    scores, labels = [], []
    for r in records:
        b = base.get(r["sample_id"])
        if r["variant"] != variant or r.get("error") is not None or b is None:
            continue
        value = b["p_correct"] if score == "p_base" else (None if b["entropy"] is None else -b["entropy"])
        if value is None:
            continue
        scores.append(float(value))
        labels.append(bool(r["correct"]))
    return scores, labels


def roc(records: Sequence[Record], variant: str, score: Score) -> Roc | None:
    """The ROC curve of a base score for robustness under `variant`; None when one class is missing."""
    if variant == "base":
        return None
    scores, labels = robustness_scores(records, variant, score)
    if len(set(labels)) < 2:
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    # roc_auc_score counts tied scores as half, as the contract's AUROC does.
    return Roc(fpr.tolist(), tpr.tolist(), float(roc_auc_score(labels, scores)), len(labels), sum(labels))


def reliability(records: Sequence[Record], variant: str) -> Calibration:
    """A variant's calibration bins over its scored records: metrics.calibration, the binning behind
    metrics.json's `ece`, so the diagram and the number cannot disagree."""
    scored = [
        (r["letter_probs"], r["target"])
        for r in records
        if r["variant"] == variant
        and r.get("error") is None
        and r.get("letter_probs")
        and r.get("target") is not None
    ]
    return calibration(scored)


def values(records: Sequence[Record], variant: str, field: str) -> list[float]:
    """A numeric record field (entropy, p_correct) over a variant's scored records."""
    return [
        float(r[field])
        for r in records
        if r["variant"] == variant and r.get("error") is None and r.get(field) is not None
    ]


@dataclass(frozen=True)
class Series:
    """A dynamics metric over steps: mean over seeds and its spread (min, max, std)."""

    steps: list[int]
    mean: list[float]
    lo: list[float]
    hi: list[float]
    std: list[float]
    seeds: int


def dynamics_series(rows: Sequence[Record], metric: str) -> dict[tuple[str | None, str], Series]:
    """(arm, variant) -> Series of `metric`; rows missing the metric (or with null) are skipped."""
    groups: dict[tuple[str | None, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[tuple[str | None, str], set] = defaultdict(set)
    for r in rows:
        value = r.get(metric)
        if value is None or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        key = (r.get("arm"), str(r.get("variant", "base")))
        groups[key][int(r["step"])].append(float(value))
        seeds[key].add(r.get("seed"))
    out = {}
    for key, by_step in groups.items():
        steps = sorted(by_step)
        arrays = [np.asarray(by_step[s]) for s in steps]
        out[key] = Series(
            steps=steps,
            mean=[float(a.mean()) for a in arrays],
            lo=[float(a.min()) for a in arrays],
            hi=[float(a.max()) for a in arrays],
            std=[float(a.std()) for a in arrays],
            seeds=len(seeds[key]),
        )
    return out
