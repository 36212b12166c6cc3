"""The paper's tables: rows are runs (models), columns are variants, numbers from metrics.json.

A table is data (Table, Row, Cell), rendered three ways: HTML (the Jinja template), Markdown and
LaTeX (here). Every cell keeps the number it shows and where in metrics.json that number lives, so
a test can hold each shown value against the file. Shares are shown in percent and probabilities
(P, AUROC, ECE, Brier) as fractions; a metric that is null shows as "–", never as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from vlmstress.report.palette import QUADRANT_LABELS, QUADRANTS, order_variants
from vlmstress.report.runs import Run
from vlmstress.report.stats import McNemar, outcomes, paired_test

NULL = "–"
MINUS = "−"
ALPHA = 0.05


@dataclass(frozen=True)
class Cell:
    """`text` formats `value`; `source` says where `value` comes from ("accuracy",
    "quadrants.unknown", or "derived:..." for differences of metrics.json numbers)."""

    text: str
    value: float | None = None
    source: str | None = None
    variant: str | None = None
    note: str | None = None
    title: str | None = None
    strong: bool = False


@dataclass(frozen=True)
class Row:
    label: str
    metric: str | None
    cells: list[Cell]
    run: int | None = None
    first_of_group: bool = True


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    caption: str
    columns: list[str]
    rows: list[Row]
    metric_header: str | None = None


# --- number formats ---------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return NULL if x is None else _minus(f"{100 * x:.1f}")


def points(x: float | None) -> str:
    return NULL if x is None else _minus(f"{100 * x:+.1f}")


def prob(x: float | None) -> str:
    return NULL if x is None else _minus(f"{x:.3f}")


def count(x: float | None) -> str:
    return NULL if x is None else f"{int(x)}"


def p_text(p: float | None) -> str:
    if p is None:
        return "p " + NULL
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _minus(text: str) -> str:
    # A real minus sign: the hyphen is too short to read in a column of numbers.
    return text.replace("-", MINUS)


def _get(metrics: dict | None, path: str) -> Any:
    value: Any = metrics
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


# --- the tables -------------------------------------------------------------------------------


def all_variants(runs: Sequence[Run]) -> list[str]:
    return order_variants(v for r in runs for v in r.variants)


def _metric_cell(run: Run, variant: str, path: str, fmt: Callable[[float | None], str]) -> Cell:
    value = _get(run.variant_metrics(variant), path)
    return Cell(fmt(value), value, path, variant)


def _evaluated(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if r.metrics is not None]


def _metric_table(
    key: str,
    title: str,
    caption: str,
    runs: Sequence[Run],
    variants: list[str],
    metrics: list[tuple[str, str, Callable[[float | None], str]]],
    metric_header: str | None = "metric",
) -> Table:
    """Rows (run x metric) of plain metrics.json values; one sub-row per (label, path, format)."""
    rows = [
        Row(
            run.label,
            label if metric_header else None,
            [_metric_cell(run, v, path, fmt) for v in variants],
            run.index,
            first_of_group=i == 0,
        )
        for run in _evaluated(runs)
        for i, (label, path, fmt) in enumerate(metrics)
    ]
    return Table(key, title, caption, variants, rows, metric_header)


def accuracy_table(runs: Sequence[Run]) -> Table:
    variants = all_variants(runs)
    rows = []
    for run in _evaluated(runs):
        cells = []
        for v in variants:
            m = run.variant_metrics(v) or {}
            ci = m.get("accuracy_ci")
            note = f"[{pct(ci[0])}, {pct(ci[1])}]" if ci and None not in ci else None
            title = f"n={m.get('n')}, errors={m.get('errors')}" if m else None
            cells.append(Cell(pct(m.get("accuracy")), m.get("accuracy"), "accuracy", v, note, title))
        rows.append(Row(run.label, None, cells, run.index))
    return Table(
        "accuracy",
        "Accuracy",
        "Accuracy (%) per variant, with the 95% bootstrap confidence interval in brackets.",
        variants,
        rows,
    )


def base_outcomes(run: Run) -> dict[str, bool]:
    return outcomes(run.records, "base")


def drop_table(runs: Sequence[Run]) -> Table | None:
    """Accuracy minus base accuracy, in points, with McNemar's exact p for base vs the variant."""
    variants = [v for v in all_variants(runs) if v != "base"]
    if not variants:
        return None
    rows = []
    for run in _evaluated(runs):
        base_acc = _get(run.variant_metrics("base"), "accuracy")
        base = base_outcomes(run)
        cells = []
        for v in variants:
            acc = _get(run.variant_metrics(v), "accuracy")
            if acc is None or base_acc is None:
                cells.append(Cell(NULL, None, "derived:accuracy-base", v))
                continue
            test = paired_test(base, outcomes(run.records, v))
            cells.append(_diff_cell(acc - base_acc, "derived:accuracy-base", v, test, "base", v))
        rows.append(Row(run.label, None, cells, run.index))
    return Table(
        "drop",
        "Drop against base",
        "Accuracy of each variant minus base accuracy (points), with the p-value of McNemar's exact "
        f"test on the samples answered under both (bold: p < {ALPHA}).",
        variants,
        rows,
    )


def _diff_cell(diff: float, source: str, variant: str, test: McNemar, a: str, b: str) -> Cell:
    title = (
        f"{test.n} paired samples: right only under {a}: {test.a_only}, right only under {b}: {test.b_only}"
    )
    strong = test.p_value is not None and test.p_value < ALPHA
    return Cell(points(diff), diff, source, variant, p_text(test.p_value), title, strong)


def comparison_pairs(runs: Sequence[Run], reference: Run | None, all_pairs: bool) -> list[tuple[Run, Run]]:
    """(a, b) pairs of evaluation runs on the same data, b compared with a: every pair, or each run
    against the reference (the first evaluation run by default). Nine runs make 36 pairs, more than
    a reader compares; the runs against one baseline are the comparison a paper's table makes."""
    evaluated = _evaluated(runs)
    if all_pairs:
        pairs = list(combinations(evaluated, 2))
    else:
        ref = reference or (evaluated[0] if evaluated else None)
        pairs = [(ref, b) for b in evaluated if ref is not None and b is not ref]
    return [(a, b) for a, b in pairs if a.data == b.data]


def comparison_table(
    runs: Sequence[Run], reference: Run | None = None, all_pairs: bool = False
) -> Table | None:
    """Accuracy difference and McNemar's exact p per variant, of each run against the reference run
    (or of every pair, `all_pairs`), on the same data."""
    pairs = comparison_pairs(runs, reference, all_pairs)
    if not pairs:
        return None
    variants = all_variants(_evaluated(runs))
    rows = []
    for a, b in pairs:
        cells = []
        for v in variants:
            acc_a, acc_b = _get(a.variant_metrics(v), "accuracy"), _get(b.variant_metrics(v), "accuracy")
            if acc_a is None or acc_b is None:
                cells.append(Cell(NULL, None, "derived:accuracy-diff", v))
                continue
            test = paired_test(outcomes(a.records, v), outcomes(b.records, v))
            cells.append(_diff_cell(acc_b - acc_a, "derived:accuracy-diff", v, test, a.label, b.label))
        rows.append(Row(b.label, f"vs {a.label}", cells))
    against = "every other run on the same data" if all_pairs else f"the reference run, {pairs[0][0].label}"
    return Table(
        "comparison",
        "Run against run",
        f"Accuracy of a run minus that of {against} (points), on the same data and variant, with the "
        "p-value of McNemar's exact test on the samples both runs answered "
        f"(bold: p < {ALPHA}).",
        variants,
        rows,
        "compared with",
    )


def quadrant_table(runs: Sequence[Run]) -> Table:
    return _metric_table(
        "quadrants",
        "CoT-consistency quadrants",
        "Share (%) of answers per quadrant: judged consistent or inconsistent with their own reasoning, "
        "correct or incorrect; unknown holds judge verdicts unknown and error. The five sum to 100.",
        runs,
        all_variants(runs),
        [(QUADRANT_LABELS[q], f"quadrants.{q}", pct) for q in QUADRANTS],
        "quadrant",
    )


def build_tables(runs: Sequence[Run], reference: Run | None = None, all_pairs: bool = False) -> list[Table]:
    """All tables, in the order the report shows them (absent when nothing to show); `reference` and
    `all_pairs` choose the run-against-run comparisons (comparison_pairs)."""
    variants = all_variants(runs)
    non_base = [v for v in variants if v != "base"]
    tables = [
        accuracy_table(runs),
        drop_table(runs),
        comparison_table(runs, reference, all_pairs),
        _metric_table(
            "caa",
            "Consistency-adjusted accuracy",
            "Share (%) of answers both correct and consistent with their reasoning.",
            runs,
            variants,
            [("", "consistency_adjusted_accuracy", pct)],
            None,
        ),
        quadrant_table(runs),
        _metric_table(
            "confidence",
            "Answer-letter entropy and P(correct)",
            "At the first answer-letter token, over the option letters: mean entropy H (nats) and "
            "mean probability of the correct letter, over records with letter probabilities.",
            runs,
            variants,
            [("mean H (nats)", "mean_entropy", prob), ("mean P(correct)", "mean_p_correct", prob)],
        ),
        _metric_table(
            "auroc",
            "Predicting robustness from the base answer",
            'AUROC of the base P(correct) and of −H on base as predictors of "still correct under '
            'the variant" (0.5 = chance).',
            runs,
            non_base,
            [("AUROC P_base", "auroc_p_base", prob), ("AUROC −H", "auroc_neg_entropy", prob)],
        ),
        _metric_table(
            "calibration",
            "Calibration",
            "Expected calibration error (10 equal-width bins of max letter probability) and Brier "
            "score; lower is better.",
            runs,
            variants,
            [("ECE", "ece", prob), ("Brier", "brier", prob)],
        ),
        _metric_table(
            "details",
            "Following the perturbation",
            "Share (%) answering the misleading option; flip rate: share right on base and wrong "
            "under the variant; unparsed answers; records that failed (count) and records scored.",
            runs,
            variants,
            [
                ("followed misleading (%)", "followed_misleading", pct),
                ("flip rate (%)", "flip_rate", pct),
                ("unparsed (%)", "unparsed_rate", pct),
                ("errors", "errors", count),
                ("n", "n", count),
            ],
        ),
        family_table(runs),
    ]
    return [t for t in tables if t is not None and t.rows]


def family_table(runs: Sequence[Run]) -> Table | None:
    """Accuracy (%) per task family, from metrics.json's "families" (written by the runner)."""
    variants = all_variants(runs)
    rows = []
    for run in _evaluated(runs):
        families = run.metrics.get("families") or {}
        names = sorted({f for per in families.values() for f in per})
        for i, fam in enumerate(names):
            cells = []
            for v in variants:
                m = families.get(v, {}).get(fam)
                acc = m.get("accuracy") if m else None
                title = (
                    (
                        f"n={m.get('n')}, most-common-letter baseline "
                        f"{pct(m.get('most_common_letter_baseline'))}%"
                    )
                    if m
                    else None
                )
                cells.append(Cell(pct(acc), acc, f"families.{fam}.accuracy", v, title=title))
            rows.append(Row(run.label, fam, cells, run.index, first_of_group=i == 0))
    if not rows:
        return None
    return Table(
        "families",
        "Accuracy by task family",
        "Accuracy (%) per task family and variant.",
        variants,
        rows,
        "family",
    )
