"""`vlmstress report DIR [DIR ...]`: load the runs, build tables, figures and the sample browser,
write report.html with report.md and report.tex beside it.

Evaluation runs (metrics.json) are the report's runs: its tables, figures, browser and run count.
Training runs (dynamics.jsonl only, e.g. a study's arm folders) feed the training-dynamics figures.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vlmstress import __version__
from vlmstress.errors import UsageError
from vlmstress.report import plots
from vlmstress.report.browser import rebuilt_runs, sample_views, system_prompts
from vlmstress.report.export import latex_document, markdown_document
from vlmstress.report.html import render_html
from vlmstress.report.palette import (
    QUADRANT_COLOURS,
    QUADRANT_LABELS,
    QUADRANTS,
    order_variants,
    variant_colours,
)
from vlmstress.report.runs import UNKNOWN, Run, load_runs, writable
from vlmstress.report.tables import NULL, all_variants, build_tables
from vlmstress.runlog import write_atomic
from vlmstress.usage import check_can_create

Log = Callable[[str], None]
# Where the progress lines go by default: silent unless the caller configures logging (the command
# line prints them to stderr instead; a report of a study's nine runs takes a while).
_logger = logging.getLogger("vlmstress.report")
MAX_NAMED_TRAINING = 4  # training runs the header names; more are counted


@dataclass(frozen=True)
class RunFigures:
    label: str
    evaluated: bool
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


def _uri(fig: Figure | None, tight: bool = True) -> str | None:
    return plots.data_uri(fig, tight) if fig is not None else None


def run_figures(run: Run, variants: list[str], colours: dict[str, str]) -> RunFigures:
    mine = [v for v in variants if v in run.variants]
    evaluated = run.evaluated  # a training run has no records: its only figure is its dynamics
    return RunFigures(
        label=run.label,
        evaluated=evaluated,
        # these three keep every artist inside their panels' layout: no tight box to draw for
        distribution=_uri(plots.distribution_figure(run, mine, colours), tight=False) if evaluated else None,
        roc=_uri(plots.roc_figure(run, mine, colours), tight=False) if evaluated else None,
        reliability=_uri(plots.reliability_figure(run, mine, colours), tight=False) if evaluated else None,
        dynamics=_uri(plots.dynamics_figure(run, colours)),
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def header_parts(runs: Sequence[Run], variants: Sequence[str]) -> list[str]:
    """The page's subtitle: how many evaluation runs and variants, on what data, and which training
    runs the dynamics come from. Only what the run folders record: a training run, which records no
    model or data, is named, never counted as a run."""
    evaluated = [r for r in runs if r.evaluated]
    trained = [r.label for r in runs if not r.evaluated]
    parts = []
    if evaluated:
        parts += [_plural(len(evaluated), "run"), _plural(len(variants), "variant")]
        parts += [d for d in dict.fromkeys(r.data for r in evaluated) if d != UNKNOWN]
    if trained:
        named = ", ".join(trained[:MAX_NAMED_TRAINING])
        more = len(trained) - MAX_NAMED_TRAINING
        parts.append(f"training dynamics of {named}" + (f" and {more} more" if more > 0 else ""))
    return parts


def resolve_reference(runs: Sequence[Run], reference: str | None) -> Run | None:
    """The evaluation run named `reference` (its label or its folder's name); None for the default."""
    if reference is None:
        return None
    evaluated = [r for r in runs if r.evaluated]
    for run in evaluated:
        if reference in (run.label, run.path.name):
            return run
    names = ", ".join(repr(r.label) for r in evaluated) or "none"
    raise UsageError(f"report: --reference {reference!r} is none of the evaluation runs ({names})")


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


def _stopwatch(log: Log) -> Log:
    start = time.monotonic()
    return lambda text: log(f"report [{time.monotonic() - start:5.1f} s] {text}")


def report_context(
    runs: Sequence[Run],
    findings: Mapping[str, Any] | None = None,
    reference: Run | None = None,
    all_pairs: bool = False,
    log: Log = _logger.info,
) -> dict[str, Any]:
    """Everything the template shows, as plain values. `findings`: a study's findings.json (its
    Findings section, shown at the top), or None for a report that is not a study's. `reference`
    and `all_pairs`: the run-against-run comparisons (tables.comparison_pairs). `log` gets a line
    as each part starts."""
    evaluated = [r for r in runs if r.evaluated]
    variants = all_variants(runs)
    # The browser shows every record; after a resume with fewer --variants, records.jsonl holds
    # variants that metrics.json (so the tables) no longer lists.
    browsed = order_variants(variants + [str(rec["variant"]) for r in runs for rec in r.records])
    # Variants that only appear in training dynamics or records still get their own colour.
    dyn_variants = [str(row.get("variant")) for r in runs for row in r.dynamics if row.get("variant")]
    colours = variant_colours(order_variants(browsed + dyn_variants))
    log(f"tables of {_plural(len(evaluated), 'evaluation run')}")
    tables = build_tables(runs, reference, all_pairs)
    log("accuracy and quadrant figures")
    figures = {
        "accuracy": _uri(plots.accuracy_figure(evaluated, variants, colours)),
        "quadrants": _uri(plots.quadrant_figure(evaluated, variants)),
    }
    per_run = []
    for i, run in enumerate(runs, start=1):
        log(f"figures of {run.label} ({i}/{len(runs)})")
        per_run.append(run_figures(run, variants, colours))
    # beside each trend finding, the dynamics it was tested on (findings.json carries the points)
    finding_figures = {
        f["key"]: _uri(plots.finding_figure(f))
        for f in (findings or {}).get("findings", [])
        if f.get("series")
    }
    log("sample browser")
    samples, total = sample_views(evaluated, browsed)
    return {
        "title": " · ".join(dict.fromkeys(r.data for r in evaluated)) or "training dynamics",
        "header": " · ".join(header_parts(runs, variants)),
        "runs": evaluated,
        "n_dirs": len(runs),
        "run_rows": [run_row(r) for r in evaluated],
        "variants": variants,
        "browsed_variants": browsed,
        "colours": colours,
        "tables": {t.key: t for t in tables},
        "figures": figures,
        "per_run": per_run,
        "has_dynamics": any(r.dynamics for r in runs),
        "samples": samples,
        "n_samples_total": total,
        "system_prompts": system_prompts(evaluated),
        "rebuilt_runs": rebuilt_runs(evaluated),
        "quadrant_choices": [(q, QUADRANT_LABELS[q]) for q in QUADRANTS] + [("error", "error record")],
        "quadrant_colours": QUADRANT_COLOURS,
        "quadrant_labels": QUADRANT_LABELS,
        "findings": dict(findings) if findings else None,
        "finding_figures": {k: v for k, v in finding_figures.items() if v},
        "version": __version__,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def build_report(
    dirs: list[Path],
    html: Path | None = None,
    findings: Mapping[str, Any] | None = None,
    reference: str | None = None,
    all_pairs: bool = False,
    log: Log = _logger.info,
) -> Path:
    """Write the HTML report of the runs in `dirs` (and report.md / report.tex beside it); return
    the HTML path. Default: `<dir>/report.html` for one run, the runs' common parent for several.
    `findings` (a study's findings.json) puts the study's Findings at the top of the page.
    Run against run compares each evaluation run with `reference` (a run's label or folder name;
    default: the first evaluation run), or every pair with `all_pairs`. `log` gets progress lines."""
    if all_pairs and reference is not None:
        raise UsageError("report: --all-pairs compares every pair of runs; it takes no --reference")
    step = _stopwatch(log)
    runs = load_runs([Path(d) for d in dirs])
    ref = resolve_reference(runs, reference)
    out = Path(html) if html is not None else default_html_path(runs)
    if out.suffix.lower() in (".md", ".tex"):
        raise UsageError(f"report: --html {out} would be overwritten by the {out.suffix} tables beside it")
    if out.is_dir():
        raise UsageError(f"report: --html {out} is a directory; name the HTML file to write")
    check_can_create(out.parent, "report: --html")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Only now, when nothing can be refused: bad usage is one line on stderr, and nothing before it.
    step(f"read {_plural(len(runs), 'run folder')}")
    context = report_context(runs, findings, ref, all_pairs, step)
    page = writable(render_html(context))
    write_atomic(out, page)
    tables = list(context["tables"].values())  # in the order build_tables made them
    write_atomic(out.with_suffix(".md"), writable(markdown_document(context["runs"], tables)))
    write_atomic(out.with_suffix(".tex"), writable(latex_document(tables)))
    step(f"wrote {out} ({len(page.encode('utf-8')) / 1e6:.1f} MB)")
    return out


def report(
    runs: str | Path | Sequence[str | Path],
    *,
    html: str | Path | None = None,
    reference: str | None = None,
    all_pairs: bool = False,
) -> Path:
    """`vlmstress report` from Python: the HTML report (with report.md and report.tex beside it) of
    one or more run folders (evaluation runs; training folders add their dynamics plots); returns
    the HTML path. `reference` names the run the others are compared with (default the first),
    `all_pairs` compares every pair."""
    dirs = [Path(runs)] if isinstance(runs, str | Path) else [Path(r) for r in runs]
    return build_report(
        dirs, Path(html) if html is not None else None, reference=reference, all_pairs=all_pairs
    )
