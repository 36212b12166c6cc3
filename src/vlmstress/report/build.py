"""`vlmstress report DIR [DIR ...]`: load the runs, build tables, figures and the sample browser,
write report.html with report.md and report.tex beside it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vlmstress import __version__
from vlmstress.errors import UsageError
from vlmstress.report import plots
from vlmstress.report.browser import sample_views
from vlmstress.report.export import latex_document, markdown_document
from vlmstress.report.html import render_html
from vlmstress.report.palette import (
    QUADRANT_COLOURS,
    QUADRANT_LABELS,
    QUADRANTS,
    order_variants,
    variant_colours,
)
from vlmstress.report.runs import Run, load_runs, writable
from vlmstress.report.tables import NULL, all_variants, build_tables
from vlmstress.runlog import write_atomic
from vlmstress.usage import check_can_create


@dataclass(frozen=True)
class RunFigures:
    label: str
    distribution: str | None
    roc: str | None
    reliability: str | None
    dynamics: str | None


def default_html_path(runs: Sequence[Run]) -> Path:
    """One run: inside it. Several: their common parent (e.g. runs/), unless that is the root."""
    if len(runs) == 1:
        return runs[0].path / "report.html"
    common = Path(os.path.commonpath([r.path for r in runs]))
    return (common if common != Path(common.anchor) else runs[0].path) / "report.html"


def _uri(fig: Figure | None) -> str | None:
    return plots.data_uri(fig) if fig is not None else None


def run_figures(run: Run, variants: list[str], colours: dict[str, str]) -> RunFigures:
    mine = [v for v in variants if v in run.variants]
    return RunFigures(
        label=run.label,
        distribution=_uri(plots.distribution_figure(run, mine, colours)),
        roc=_uri(plots.roc_figure(run, mine, colours)),
        reliability=_uri(plots.reliability_figure(run, mine, colours)),
        dynamics=_uri(plots.dynamics_figure(run, colours)),
    )


def run_row(run: Run) -> dict[str, Any]:
    metrics = run.metrics or {}
    kappa = (metrics.get("judge_agreement") or {}).get("fleiss_kappa")
    judges = run.config.get("judges") or list(metrics.get("judges") or [])
    return {
        "index": run.index,
        "label": run.label,
        "model": run.model,
        "data": run.data,
        "n_samples": metrics.get("n_samples", run.config.get("n_samples", NULL)),
        "seed": run.config.get("seed", NULL),
        "judges": ", ".join(map(str, judges)) or NULL,
        "kappa": NULL if kappa is None else f"{kappa:.3f}",
        "path": str(run.path),
        "dirname": run.path.name,
        # What makes this run's numbers differ from what they claim (metrics.json `warnings`).
        "warnings": [str(w) for w in metrics.get("warnings") or []],
        "user_mode": [
            v
            for v, m in (metrics.get("variants") or {}).items()
            if m.get("prefill_mode") in ("user", "mixed")
        ],
    }


def report_context(runs: Sequence[Run], findings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain values. `findings`: a study's findings.json (its
    Findings section, shown at the top), or None for a report that is not a study's."""
    variants = all_variants(runs)
    # The browser shows every record; after a resume with fewer --variants, records.jsonl holds
    # variants that metrics.json (so the tables) no longer lists.
    browsed = order_variants(variants + [str(rec["variant"]) for r in runs for rec in r.records])
    # Variants that only appear in training dynamics or records still get their own colour.
    dyn_variants = [str(row.get("variant")) for r in runs for row in r.dynamics if row.get("variant")]
    colours = variant_colours(order_variants(browsed + dyn_variants))
    tables = build_tables(runs)
    samples, total = sample_views(runs, browsed)
    evaluated = [r for r in runs if r.metrics is not None]
    return {
        "title": " · ".join(dict.fromkeys(r.data for r in runs)),
        "runs": runs,
        "run_rows": [run_row(r) for r in runs],
        "variants": variants,
        "browsed_variants": browsed,
        "colours": colours,
        "tables": {t.key: t for t in tables},
        "figures": {
            "accuracy": _uri(plots.accuracy_figure(evaluated, variants, colours)),
            "quadrants": _uri(plots.quadrant_figure(evaluated, variants)),
        },
        "per_run": [run_figures(r, variants, colours) for r in runs],
        "has_dynamics": any(r.dynamics for r in runs),
        "samples": samples,
        "n_samples_total": total,
        "quadrant_choices": [(q, QUADRANT_LABELS[q]) for q in QUADRANTS] + [("error", "error record")],
        "quadrant_colours": QUADRANT_COLOURS,
        "quadrant_labels": QUADRANT_LABELS,
        "findings": dict(findings) if findings else None,
        "version": __version__,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def build_report(
    dirs: list[Path], html: Path | None = None, findings: Mapping[str, Any] | None = None
) -> Path:
    """Write the HTML report of the runs in `dirs` (and report.md / report.tex beside it); return
    the HTML path. Default: `<dir>/report.html` for one run, the runs' common parent for several.
    `findings` (a study's findings.json) puts the study's Findings at the top of the page."""
    runs = load_runs([Path(d) for d in dirs])
    out = Path(html) if html is not None else default_html_path(runs)
    if out.suffix.lower() in (".md", ".tex"):
        raise UsageError(f"report: --html {out} would be overwritten by the {out.suffix} tables beside it")
    if out.is_dir():
        raise UsageError(f"report: --html {out} is a directory; name the HTML file to write")
    check_can_create(out.parent, "report: --html")
    out.parent.mkdir(parents=True, exist_ok=True)
    context = report_context(runs, findings)
    write_atomic(out, writable(render_html(context)))
    tables = list(context["tables"].values())  # in the order build_tables made them
    write_atomic(out.with_suffix(".md"), writable(markdown_document(runs, tables)))
    write_atomic(out.with_suffix(".tex"), writable(latex_document(tables)))
    return out
