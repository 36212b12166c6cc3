"""Metrics over records: pure functions from records.jsonl rows to the metrics.json object (the
summary.md table that renders it is report/summary.py).

Every definition follows design.md "Definitions". Two rules shape the code: records with an `error`
enter only the `errors` count, and a metric that cannot be computed is None (JSON null), never 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special
from sklearn.metrics import roc_auc_score

from vlmstress.judge.agreement import fleiss_kappa, verdict_counts
from vlmstress.registry import Registry

# A record as the metrics read it: a records.jsonl dict, a data.schema.Record or a RecordSummary.
Record = Mapping[str, Any]

BOOTSTRAP_RESAMPLES = 2000
ECE_BINS = 10
QUADRANTS = ("consistent_correct", "consistent_incorrect", "inconsistent_correct", "inconsistent_incorrect")


# ---------------------------------------------------------------- letter distributions


def _normalised(probs: Mapping[str, float]) -> dict[str, float]:
    """The distribution renormalised to sum 1 (backends already do; replayed files may be off by
    rounding). Raises ValueError on an empty, negative or all-zero distribution."""
    values = [float(p) for p in probs.values()]
    total = sum(values)
    if not values or any(not math.isfinite(p) or p < 0 for p in values) or total <= 0:
        raise ValueError(f"not a probability distribution: {dict(probs)}")
    return {k: float(p) / total for k, p in probs.items()}


def letter_entropy(probs: Mapping[str, float]) -> float:
    """H = -sum p ln p over the option letters, in nats (0 ln 0 = 0).

    scipy.stats.entropy's own arithmetic (normalise, special.entr, sum: the same bits), without its
    array-API and nan-policy wrapper, which costs 20 times the sum on a few letters and is called
    for every record and again by the metrics.
    """
    pk = np.asarray(list(_normalised(probs).values()), dtype=float)
    return float(np.sum(special.entr(pk / np.sum(pk, keepdims=True))))


def p_correct(probs: Mapping[str, float] | None, target: str | None) -> float | None:
    """Probability of the right letter; None without a distribution or a target (open-ended)."""
    if not probs or target is None:
        return None
    return _normalised(probs).get(target, 0.0)


# ---------------------------------------------------------------- compact records


class RecordSummary(Mapping):
    """What the metrics read of a record, and nothing else (no response, think, judge reasons or
    backend meta), held compactly so that a run's metrics need not hold its records.jsonl in memory:
    about 300 bytes a record instead of several KB. It reads as the record would for every field
    the metrics (and runner.family_accuracy / official_scores) use: `letter_probs` is rebuilt as the
    same dict, `judge` as {"verdict": ...}, `judges` as [{"by", "verdict"}, ...], `prefill` as its
    truth value with `prefill_mode` already resolved (record_prefill_mode). `parse_mode` is missing
    (a KeyError, as from the record) where the record predates it. Made by `summarize`."""

    __slots__ = (
        "sample_id",
        "variant",
        "target",
        "misleading",
        "answer",
        "correct",
        "parsed",
        "error",
        "family",
        "difficulty",
        "prefill",
        "prefill_mode",
        "_probs",
        "_judge",
        "_judges",
        "_parse_mode",
    )
    _PLAIN = frozenset(__slots__[:12])
    FIELDS = (*__slots__[:12], "letter_probs", "judge", "judges", "parse_mode")

    def __getitem__(self, key: str) -> Any:
        if key in self._PLAIN:
            return getattr(self, key)
        if key == "letter_probs":
            probs = self._probs
            return dict(zip(*probs)) if isinstance(probs, tuple) else probs
        if key == "judge":
            judge = self._judge
            return {"verdict": judge[0]} if isinstance(judge, tuple) else judge
        if key == "judges":
            judges = self._judges
            if isinstance(judges, tuple):
                return [{"by": by, "verdict": verdict} for by, verdict in judges]
            return judges
        if key == "parse_mode" and self._parse_mode is not _UNRECORDED:
            return self._parse_mode
        raise KeyError(key)

    def __iter__(self):
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    def _fields(self) -> tuple[str, ...]:
        return self.FIELDS if self._parse_mode is not _UNRECORDED else self.FIELDS[:-1]


# A record written before `parse_mode` existed: how its answer was read is not known.
_UNRECORDED = object()


def summarize(record: Record, strings: dict | None = None) -> RecordSummary:
    """A record's RecordSummary. `strings` (one dict for a whole run) shares equal strings between
    summaries: a sample id, a variant, a letter is then held once, not once a record."""
    memo: dict = {} if strings is None else strings

    def share(value: Any) -> Any:
        return memo.setdefault(value, value) if isinstance(value, str | tuple) else value

    out = RecordSummary()
    for name in ("sample_id", "variant", "target", "misleading", "answer", "family", "difficulty"):
        setattr(out, name, share(record.get(name)))
    out.correct, out.parsed, out.error = record.get("correct"), record.get("parsed"), record.get("error")
    out.prefill = bool(record.get("prefill"))
    out.prefill_mode = share(record_prefill_mode(record))
    probs = record.get("letter_probs")
    if isinstance(probs, dict) and all(isinstance(k, str) for k in probs):
        probs = (share(tuple(probs)), tuple(probs.values()))
    out._probs = probs
    judge = record.get("judge")
    out._judge = (share(judge.get("verdict")),) if isinstance(judge, dict) else judge
    judges = record.get("judges")
    if isinstance(judges, list) and all(isinstance(v, dict) and "by" in v and "verdict" in v for v in judges):
        judges = tuple((share(v["by"]), share(v["verdict"])) for v in judges)
    out._judges = judges
    out._parse_mode = share(record["parse_mode"]) if "parse_mode" in record else _UNRECORDED
    return out


# ---------------------------------------------------------------- helpers


def _is_error(record: Record) -> bool:
    return record.get("error") is not None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _bootstrap_ci(hits: Sequence[bool], seed: int) -> list[float] | None:
    """95% percentile bootstrap interval of the accuracy; None below two records.

    Hand-written because it is exact and O(resamples): the mean of n draws with replacement from 0/1
    data is Binomial(n, accuracy) / n, so drawing that directly is the same bootstrap distribution as
    resampling records, without an n x resamples index matrix (scipy.stats.bootstrap also rejects a
    single record and has renamed its seed argument across the versions we support).
    """
    n = len(hits)
    if n < 2:
        return None
    accuracy = float(np.mean(hits))
    means = np.random.default_rng(seed).binomial(n, accuracy, size=BOOTSTRAP_RESAMPLES) / n
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def _read_by(records: Sequence[Record], mode: str) -> float | None:
    """Share of `records` whose answer was read by `mode` (a record's parse_mode); None without
    records, or where one predates parse_mode: how it was read is unknown, and 0 would claim it."""
    if not records or not all("parse_mode" in r for r in records):
        return None
    return _mean([r["parse_mode"] == mode for r in records])


def quadrant(record: Record) -> str:
    """The record's quadrant (consistent/inconsistent x correct/incorrect), or "unknown" for a verdict
    of unknown or error, or no judge at all: the one rule behind metrics.json's quadrants and the
    report's sample browser. (Error records are outside every variant's n; callers leave them out.)"""
    verdict = (record.get("judge") or {}).get("verdict")
    if verdict not in ("consistent", "inconsistent"):
        return "unknown"
    return f"{verdict}_{'correct' if record.get('correct') else 'incorrect'}"


def _judged(record: Record) -> bool:
    return (record.get("judge") or {}).get("verdict") in ("consistent", "inconsistent")


def _quadrants(records: Sequence[Record]) -> dict[str, float | None]:
    """The five shares; all null when no record got a consistent / inconsistent verdict (no judge
    ran, or none could tell), since then every share but `unknown` would read 0 for "not measured"."""
    names = (*QUADRANTS, "unknown")
    if not any(map(_judged, records)):
        return dict.fromkeys(names)
    counts = dict.fromkeys(names, 0)
    for r in records:
        counts[quadrant(r)] += 1
    return {k: v / len(records) for k, v in counts.items()}


def _auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """AUROC with ties counted 1/2 (roc_auc_score's trapezoids do exactly that); None on one class."""
    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


@dataclass(frozen=True)
class Calibration:
    """Per confidence bin (ECE_BINS equal-width bins on [0, 1]): count, mean confidence and accuracy
    (None for an empty bin), and the ECE over them (None without scored records). The one binning
    behind metrics.json's `ece` and the report's reliability diagrams."""

    counts: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]
    ece: float | None


def calibration(scored: Sequence[tuple[Mapping[str, float], str]]) -> Calibration:
    """Confidence = the top letter's probability (renormalised: replayed files may be off by
    rounding), hit = (top letter == target); ties go to the first letter alphabetically, so the
    result does not depend on dict order; a confidence of exactly 1.0 belongs to the last bin."""
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(ECE_BINS)]
    for probs, target in scored:
        top = max(sorted(probs), key=probs.__getitem__)
        confidence = float(probs[top]) / sum(probs.values())
        bins[min(int(confidence * ECE_BINS), ECE_BINS - 1)].append((confidence, top == target))
    counts = [len(b) for b in bins]
    mean_conf = [float(np.mean([c for c, _ in b])) if b else None for b in bins]
    mean_hit = [float(np.mean([hit for _, hit in b])) if b else None for b in bins]
    if not scored:
        return Calibration(counts, mean_conf, mean_hit, None)
    total = len(scored)
    ece = sum(n / total * abs(h - c) for n, h, c in zip(counts, mean_hit, mean_conf) if n)  # type: ignore[operator]
    return Calibration(counts, mean_conf, mean_hit, float(ece))


def _ece(scored: Sequence[tuple[dict[str, float], str]]) -> float | None:
    """Expected calibration error, 10 equal-width bins [0, .1), [.1, .2), ..., [.9, 1]."""
    return calibration(scored).ece


def _brier(scored: Sequence[tuple[dict[str, float], str]]) -> float | None:
    if not scored:
        return None
    return _mean(
        [
            # sorted: a set of strings iterates in hash-seed order, and float sums depend on order
            sum((probs.get(ltr, 0.0) - (ltr == target)) ** 2 for ltr in sorted({*probs, target}))
            for probs, target in scored
        ]
    )


# ---------------------------------------------------------------- fidelity of a run

# Earlier records name the assistant mode `continue`.
_MODE_NAMES = {"continue": "assistant"}


def record_prefill_mode(record: Record) -> str | None:
    """Where a record's prefill went: `assistant` (the start of the model's own turn) or `user`
    (written into the user turn); None without a prefill. Records written before the field existed
    kept the openai backend's mode in `meta`; every other backend continues the assistant turn."""
    if not record.get("prefill"):
        return None
    mode = record.get("prefill_mode") or (record.get("meta") or {}).get("prefill_mode") or "assistant"
    return _MODE_NAMES.get(mode, mode)


def _prefill_mode(records: Sequence[Record]) -> str | None:
    modes = {record_prefill_mode(r) for r in records} - {None}
    if not modes:
        return None
    return modes.pop() if len(modes) == 1 else "mixed"


def run_warnings(records: Sequence[Record], variants: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What makes this run's numbers differ from what they claim to measure, one line each: shown
    at the top of summary.md and the report, and printed at the end of a run."""
    warnings = []
    moved = [name for name, v in variants.items() if v.get("prefill_mode") in ("user", "mixed")]
    if moved:
        warnings.append(
            f"{', '.join(moved)}: the prefill was written into the user turn (the server could not "
            "continue an assistant turn), so these are not the paper's prefilled variants"
        )
    scorable = [r for r in records if not _is_error(r) and r.get("target") is not None]
    missing = sum(not r.get("letter_probs") for r in scorable)
    if scorable and missing == len(scorable):
        warnings.append(
            "no letter probabilities from this model: entropy, P(correct), AUROC, ECE and Brier are null"
        )
    elif missing:
        warnings.append(
            f"letter probabilities missing on {missing} of {len(scorable)} records: entropy, "
            "P(correct), ECE and Brier are over the others"
        )
    ok = [r for r in records if not _is_error(r)]
    if ok and not any(map(_judged, ok)):
        why = (
            "no judge ran"
            if all(r.get("judge") is None for r in ok)
            else "no verdict was consistent/inconsistent"
        )
        warnings.append(f"{why}: consistency-adjusted accuracy and the quadrants are null")
    return warnings


# ---------------------------------------------------------------- per variant


def variant_metrics(
    records_of_variant: Sequence[Record],
    base_records_by_id: Mapping[str, Record] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every field of one metrics.json variant object (design.md), from that variant's records.

    `base_records_by_id` maps sample_id to the base variant's record; without it (or on the base
    variant itself) flip_rate and the AUROCs are None. `seed` makes the bootstrap CI reproducible.
    """
    ok = [r for r in records_of_variant if not _is_error(r)]
    n = len(ok)
    hits = [bool(r.get("correct")) for r in ok]
    quadrants = _quadrants(ok)

    with_probs = [r for r in ok if r.get("letter_probs")]
    scored = [
        (_normalised(r["letter_probs"]), r["target"]) for r in with_probs if r.get("target") is not None
    ]
    misleading = [r for r in ok if r.get("misleading") is not None]

    is_base = any(r.get("variant") == "base" for r in records_of_variant)
    pairs: list[tuple[Record, Record]] = []
    if base_records_by_id is not None and not is_base:
        for r in ok:
            b = base_records_by_id.get(r.get("sample_id"))
            if b is not None and not _is_error(b):
                pairs.append((b, r))
    # Robustness prediction needs the base distribution and a target to score P(correct) against.
    scorable = [(b, r) for b, r in pairs if b.get("letter_probs") and b.get("target") is not None]
    survived = [bool(r.get("correct")) for _, r in scorable]

    return {
        "n": n,
        "accuracy": _mean(hits),
        "accuracy_ci": _bootstrap_ci(hits, seed),
        "unparsed_rate": _mean([not r.get("parsed") for r in ok]),
        # Answers the rules read only by a fallback, and answers only the extractor read: with the
        # strict share and unparsed_rate, how all n answers were read (the four sum to 1).
        "lenient_rate": _read_by(ok, "lenient"),
        "extract_rate": _read_by(ok, "extract"),
        "errors": len(records_of_variant) - n,
        "quadrants": quadrants,
        "consistency_adjusted_accuracy": quadrants["consistent_correct"],
        "mean_entropy": _mean([letter_entropy(r["letter_probs"]) for r in with_probs]),
        "mean_p_correct": _mean([probs.get(target, 0.0) for probs, target in scored]),
        # Over all n records (design.md: shares are over n), but null where no record has a letter.
        "followed_misleading": (
            _mean([r.get("answer") == r.get("misleading") for r in ok]) if misleading else None
        ),
        "flip_rate": (
            _mean([bool(b.get("correct")) and not r.get("correct") for b, r in pairs]) if pairs else None
        ),
        "auroc_p_base": _auroc(survived, [p_correct(b["letter_probs"], b["target"]) for b, _ in scorable]),
        "auroc_neg_entropy": _auroc(survived, [-letter_entropy(b["letter_probs"]) for b, _ in scorable]),
        "ece": _ece(scored),
        "brier": _brier(scored),
        "prefill_mode": _prefill_mode(ok),
    }


# ---------------------------------------------------------------- user metrics

MetricFn = Callable[[Sequence[Record]], Any]
# Users' metrics (register_metric): each is computed on every variant of every run made while it is
# registered, into metrics.json's `variants.V.user_metrics.NAME`.
METRICS: Registry[MetricFn] = Registry("metric")


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """A decorator: `fn(records) -> number | None` over one variant's records without an error
    (mappings holding RecordSummary.FIELDS: sample_id, variant, target, misleading, answer, correct,
    parsed, letter_probs, judge, ...), written to `variants.V.user_metrics.NAME` of every run. None
    means "cannot be computed" (null). A name already taken is a ValueError."""
    return METRICS.register(name)


def user_metrics(variant: str, records: Sequence[Record], warnings: list[str]) -> dict[str, Any]:
    """Every registered metric on one variant's records without an error. A metric that raises, or
    returns anything but a finite number or None, is null, with a line in `warnings` saying why: one
    user's bug must not cost the run its metrics.json."""
    # As summaries on every path (a run in memory holds whole records), so a metric reads the same
    # fields whether the run was logged to a folder or not.
    ok = [r if isinstance(r, RecordSummary) else summarize(r) for r in records if not _is_error(r)]
    out: dict[str, Any] = {}
    for name, fn in METRICS.items():
        try:
            value = fn(ok)
        except Exception as exc:  # the user's code, any bug at all
            why = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
            value = None
        else:
            why = _not_a_number(value)
        if why:
            warnings.append(f"metric {name} on {variant} {why}; it is null")
            value = None
        if isinstance(value, numbers.Integral):
            value = int(value)  # numpy's integers, which json cannot write, as ints
        elif value is not None:
            value = float(value)
        out[name] = value
    return out


def _not_a_number(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"returned a {type(value).__name__}, not a number"
    if not math.isfinite(value):
        return f"returned {value}, not a finite number"
    return None


# ---------------------------------------------------------------- whole run


def _group_by_variant(records: Iterable[Record]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {}  # dicts keep first-seen order
    for r in records:
        grouped.setdefault(r["variant"], []).append(r)
    return grouped


def _judge_agreement(records: Sequence[Record]) -> tuple[dict[str, dict[str, int]], float | None]:
    """Verdict tallies per judge name and Fleiss' kappa over the records every judge rated."""
    rated = [r for r in records if not _is_error(r) and r.get("judges")]
    names: list[str] = []
    for r in rated:
        for v in r["judges"]:
            if v["by"] not in names:
                names.append(v["by"])
    by_name = [{v["by"]: v["verdict"] for v in r["judges"]} for r in rated]
    counts = {name: verdict_counts([vs[name] for vs in by_name if name in vs]) for name in names}
    complete = [vs for vs in by_name if all(name in vs for name in names)]
    kappa = fleiss_kappa([[vs[name] for vs in complete] for name in names])
    return counts, kappa


def compute_metrics(
    records: Iterable[Record], *, model: str, data: str, n_samples: int, seed: int = 0
) -> dict[str, Any]:
    """The whole metrics.json object, variants in first-seen order.

    When any record carries `judges` (several judges ran), adds `judges` (verdict counts per judge,
    over records without error) and `judge_agreement` ({"fleiss_kappa": ...}).
    """
    records = list(records)
    grouped = _group_by_variant(records)
    base = {r["sample_id"]: r for r in grouped.get("base", []) if not _is_error(r)}
    metrics: dict[str, Any] = {
        "model": model,
        "data": data,
        "n_samples": n_samples,
        "variants": {
            name: variant_metrics(rs, None if name == "base" else base, seed) for name, rs in grouped.items()
        },
    }
    metrics["warnings"] = run_warnings(records, metrics["variants"])
    if METRICS:
        for name, rs in grouped.items():
            metrics["variants"][name]["user_metrics"] = user_metrics(name, rs, metrics["warnings"])
    if any(r.get("judges") for r in records):
        counts, kappa = _judge_agreement(records)
        metrics["judges"] = counts
        metrics["judge_agreement"] = {"fleiss_kappa": kappa}
    return metrics
