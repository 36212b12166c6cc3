"""The report's figures, drawn with matplotlib's Agg backend and embedded as base64 PNG.

Figures are `matplotlib.figure.Figure` objects on an Agg canvas, never pyplot: no global figure
state outlives a call (a report of many runs would otherwise keep every figure in memory), and the
caller's own backend (a notebook's, say) is left alone, with no display needed. PNG
rather than inline SVG: an <img> with a data URI carries no markup, so nothing in a label (model
names come from the user) can reach the page as HTML.
"""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from vlmstress.metrics import ECE_BINS
from vlmstress.report import stats
from vlmstress.report.palette import QUADRANT_COLOURS, QUADRANT_LABELS, QUADRANTS
from vlmstress.report.runs import Run

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e5e5e5",
    "legend.frameon": False,
    "savefig.dpi": 110,
}
DYNAMICS_METRICS = {
    "accuracy": "accuracy",
    "consistency_adjusted_accuracy": "consistency-adjusted accuracy",
    "mean_entropy": "mean entropy H (nats)",
    "mean_completion_tokens": "completion length (tokens)",
    "mean_p_correct": "mean P(correct)",
    "reward": "reward",
    "distinct_think_share": "distinct think share",
    "followed_misleading": "followed misleading",
}
# Always drawn when the file has them; the rest only when present.
CORE_DYNAMICS = ("accuracy", "consistency_adjusted_accuracy", "mean_entropy", "mean_completion_tokens")
ARM_STYLES = ("-", "--", ":", "-.")
# The widest a figure is drawn (inches): the page shrinks a wider one to its width, text and all.
MAX_WIDTH = 14.0
TICK_WRAP = 16  # characters a line of a run's tick label holds (a longer word keeps its own line)


def data_uri(fig: Figure, tight: bool = True) -> str:
    """The figure as a `data:image/png;base64,...` URI, in 256 colours: flat fills and thin lines
    lose nothing a reader sees, and the PNG is ~60% smaller (a report holds dozens of figures).
    `tight` (bbox_inches="tight") for a figure legend wider than its panels, which constrained
    layout leaves outside the figure; it costs a second draw, a third of a figure's time."""
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="png", bbox_inches="tight" if tight else None)
    buf.seek(0)
    small = io.BytesIO()
    with Image.open(buf) as img:
        img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(small, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(small.getvalue()).decode("ascii")


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, list]:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _shorten(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def tick_label(label: str) -> str:
    """A run label on at most two lines, broken between words ("augment+faithful,\nseed 1")."""
    width = max([TICK_WRAP, *(len(w) for w in label.split())])
    lines = textwrap.wrap(label, width, max_lines=2, placeholder=" …", break_on_hyphens=False)
    return "\n".join(lines) or label


def tick_label_boxes(ax) -> list:
    """The window extents of the drawn x tick labels, left to right (the figure must be drawn)."""
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    return sorted(boxes, key=lambda b: b.x0)


def overlapping(boxes: Sequence) -> bool:
    return any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))


def _fit_xticks(fig: Figure, ax) -> None:
    """Widen the figure until its x tick labels (run names, as long as their users made them) sit side
    by side; where even MAX_WIDTH cannot hold them, stand them upright."""
    fig.draw_without_rendering()
    boxes = tick_label_boxes(ax)
    if not overlapping(boxes):
        return
    widest = max(b.width for b in boxes) / fig.dpi
    axes_width = ax.get_window_extent().width / fig.dpi
    needed = fig.get_figwidth() + len(boxes) * 1.15 * widest - axes_width
    fig.set_figwidth(min(MAX_WIDTH, needed))
    fig.draw_without_rendering()
    if not overlapping(tick_label_boxes(ax)):
        return
    # Upright labels on one line each, and the figure taller by them, so the bars keep their height.
    ax.set_xticks(
        ax.get_xticks(), [_shorten(t.get_text().replace("\n", " "), 36) for t in ax.get_xticklabels()]
    )
    for t in ax.get_xticklabels():
        t.set_rotation(90)
    fig.draw_without_rendering()
    fig.set_figheight(fig.get_figheight() + max(b.height for b in tick_label_boxes(ax)) / fig.dpi)


def accuracy_figure(runs: Sequence[Run], variants: list[str], colours: dict[str, str]) -> Figure | None:
    """Grouped bars: one group per run, one bar per variant, 95% CI as error bars."""
    evaluated = [r for r in runs if r.metrics is not None]
    if not evaluated or not variants:
        return None
    fig, (ax,) = _figure(min(13.0, max(8.0, 1.5 + 0.3 * len(variants) * len(evaluated))), 3.8)
    with matplotlib.rc_context(STYLE):
        width = 0.8 / len(variants)
        for j, v in enumerate(variants):
            xs, ys, lo, hi = [], [], [], []
            for i, run in enumerate(evaluated):
                m = run.variant_metrics(v) or {}
                if m.get("accuracy") is None:
                    continue
                acc = 100 * m["accuracy"]
                ci = m.get("accuracy_ci") or [m["accuracy"], m["accuracy"]]
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(acc)
                lo.append(max(0.0, acc - 100 * ci[0]))
                hi.append(max(0.0, 100 * ci[1] - acc))
            ax.bar(
                xs,
                ys,
                width * 0.92,
                color=colours[v],
                label=v,
                yerr=[lo, hi],
                error_kw={"elinewidth": 0.9, "capsize": 2, "ecolor": "#333333"},
            )
        ax.set_xticks(range(len(evaluated)), [tick_label(r.label) for r in evaluated])
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.grid(axis="x", visible=False)
        # one legend row for up to six variants, else two balanced rows
        ncols = len(variants) if len(variants) <= 6 else -(-len(variants) // 2)
        ax.legend(ncols=ncols, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=9)
        _fit_xticks(fig, ax)
    return fig


def quadrant_figure(runs: Sequence[Run], variants: list[str]) -> Figure | None:
    """Stacked bars of the five quadrant shares, one panel per run, one bar per variant."""
    evaluated = [r for r in runs if r.metrics is not None]
    if not evaluated:
        return None
    cols = min(len(evaluated), 2)
    rows = -(-len(evaluated) // cols)
    fig, axes = _figure(max(6.0, 0.55 * len(variants) * cols + 1.5), 3.2 * rows + 0.5, rows, cols)
    with matplotlib.rc_context(STYLE):
        for ax, run in zip(axes, evaluated, strict=False):
            bottom = [0.0] * len(variants)
            for q in QUADRANTS:
                heights = [
                    # a null share (nothing judged) draws no bar, rather than failing
                    100 * (((run.variant_metrics(v) or {}).get("quadrants") or {}).get(q) or 0.0)
                    for v in variants
                ]
                ax.bar(
                    range(len(variants)),
                    heights,
                    0.75,
                    bottom=bottom,
                    color=QUADRANT_COLOURS[q],
                    label=QUADRANT_LABELS[q],
                    edgecolor="white",
                    linewidth=0.5,
                )
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
            ax.set_title(_shorten(run.label, 48))
            ax.set_xticks(range(len(variants)), variants, rotation=35, ha="right")
            ax.set_ylim(0, 100)
            ax.set_ylabel("share of answers (%)")
            ax.grid(axis="x", visible=False)
        for ax in axes[len(evaluated) :]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=5, fontsize=9)
    return fig


def distribution_figure(run: Run, variants: list[str], colours: dict[str, str]) -> Figure | None:
    """Violins of entropy and P(correct) per variant; the dashed line is base's median."""
    panels = [("entropy", "answer-letter entropy H (nats)"), ("p_correct", "P(correct letter)")]
    data = {f: {v: stats.values(run.records, v, f) for v in variants} for f, _ in panels}
    if not any(vals for per in data.values() for vals in per.values()):
        return None
    fig, axes = _figure(max(7.0, 0.6 * len(variants) * 2 + 2), 3.4, 1, 2)
    with matplotlib.rc_context(STYLE):
        for ax, (field, title) in zip(axes, panels, strict=True):
            shown = [v for v in variants if len(data[field][v]) > 0]
            positions = [variants.index(v) for v in shown]
            multi = [v for v in shown if len(set(data[field][v])) > 1]
            if multi:
                parts = ax.violinplot(
                    [data[field][v] for v in multi],
                    [variants.index(v) for v in multi],
                    widths=0.8,
                    showextrema=False,
                )
                for body, v in zip(parts["bodies"], multi, strict=True):
                    body.set_facecolor(colours[v])
                    body.set_edgecolor(colours[v])
                    body.set_alpha(0.45)
            for v, x in zip(shown, positions, strict=True):
                median = float(np.median(data[field][v]))
                ax.plot([x - 0.25, x + 0.25], [median, median], color=colours[v], linewidth=2.2)
                if v == "base":
                    ax.axhline(median, color=colours[v], linestyle="--", linewidth=0.8, alpha=0.7)
            ax.set_xticks(range(len(variants)), variants, rotation=35, ha="right")
            ax.set_title(title)
            ax.set_xlim(-0.6, len(variants) - 0.4)
            ax.grid(axis="x", visible=False)
    return fig


def roc_figure(run: Run, variants: list[str], colours: dict[str, str]) -> Figure | None:
    """ROC curves of base P(correct) and of -H for "still correct under the variant"; one legend
    (colour = variant) gives both AUROCs."""
    panels = [("p_base", "score: P(correct) on base"), ("neg_entropy", "score: −H on base")]
    curves = {s: {v: stats.roc(run.records, v, s) for v in variants if v != "base"} for s, _ in panels}
    if not any(c for per in curves.values() for c in per.values()):
        return None
    fig, axes = _figure(9.6, 3.7, 1, 2)
    with matplotlib.rc_context(STYLE):
        for ax, (score, title) in zip(axes, panels, strict=True):
            ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1)
            for v, curve in curves[score].items():
                if curve is not None:
                    ax.plot(curve.fpr, curve.tpr, color=colours[v], linewidth=1.6, drawstyle="steps-post")
            ax.set_title(title)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_aspect("equal")
        handles, labels = [], []
        for v in variants:
            p, h = curves["p_base"].get(v), curves["neg_entropy"].get(v)
            if p or h:
                handles.append(Line2D([], [], color=colours[v], linewidth=2))
                labels.append(f"{v}\nAUROC P {_auc(p)} · −H {_auc(h)}")
        fig.legend(handles, labels, loc="outside right center", fontsize=8.5, labelspacing=0.9)
    return fig


def _auc(curve: stats.Roc | None) -> str:
    return "–" if curve is None else f"{curve.auc:.3f}"


def reliability_figure(run: Run, variants: list[str], colours: dict[str, str]) -> Figure | None:
    """Reliability diagrams, one small panel per variant: accuracy of the argmax letter per
    confidence bin (bars) against perfect calibration (the diagonal), with the share of answers
    in each bin below; the title gives the ECE."""
    diagrams = {v: stats.reliability(run.records, v) for v in variants}
    diagrams = {v: d for v, d in diagrams.items() if d.ece is not None}
    if not diagrams:
        return None
    cols = min(len(diagrams), 5)
    rows = -(-len(diagrams) // cols)
    fig, axes = _figure(2.45 * cols, 2.55 * rows, rows, cols)
    bins = ECE_BINS
    centres = [(k + 0.5) / bins for k in range(bins)]
    with matplotlib.rc_context(STYLE):
        for ax, (v, d) in zip(axes, diagrams.items(), strict=False):
            most = max(d.counts)
            ax.bar(
                centres,
                [a or 0.0 for a in d.accuracy],
                1 / bins,
                color=colours[v],
                alpha=0.85,
                edgecolor="white",
                linewidth=0.6,
            )
            # below the axis: how many answers each bin holds (tallest = most), so a bar resting on
            # two answers is not read like one resting on two hundred
            ax.bar(
                centres,
                [-0.22 * n / most for n in d.counts],
                1 / bins,
                color="#9aa3b2",
                edgecolor="white",
                linewidth=0.6,
            )
            ax.plot([0, 1], [0, 1], color="#333333", linestyle=":", linewidth=1)
            ax.axhline(0, color="#333333", linewidth=0.6)
            ax.set_title(f"{v}\nECE {d.ece:.3f}", fontsize=9.5)
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.27, 1.02)
            ax.set_yticks([0, 0.5, 1.0])
            ax.tick_params(labelsize=8)
        for ax in axes[len(diagrams) :]:
            ax.set_visible(False)
        fig.supxlabel("confidence (max letter probability)", fontsize=9.5)
        fig.supylabel("accuracy of the top letter", fontsize=9.5)
    return fig


def dynamics_figure(run: Run, colours: dict[str, str]) -> Figure | None:
    """Training curves per metric: the mean over seeds, with the min-max band of the seeds."""
    if not run.dynamics:
        return None
    series = {m: stats.dynamics_series(run.dynamics, m) for m in DYNAMICS_METRICS}
    metrics = [m for m in DYNAMICS_METRICS if m in CORE_DYNAMICS or series[m]]
    cols = 3 if len(metrics) > 4 else 2
    rows = -(-len(metrics) // cols)
    fig, axes = _figure(4.0 * cols, 3.0 * rows + 0.4, rows, cols)
    arms = sorted({arm for per in series.values() for arm, _ in per if arm is not None})
    with matplotlib.rc_context(STYLE):
        for ax, metric in zip(axes, metrics, strict=False):
            for (arm, variant), s in sorted(series[metric].items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
                colour = colours.get(variant, "#555555")
                style = ARM_STYLES[arms.index(arm) % len(ARM_STYLES)] if arm is not None else "-"
                label = variant if arm is None else f"{variant} · {arm}"
                ax.plot(
                    s.steps,
                    s.mean,
                    color=colour,
                    linestyle=style,
                    linewidth=1.6,
                    marker="o",
                    markersize=3,
                    label=label,
                )
                if s.seeds > 1:
                    ax.fill_between(s.steps, s.lo, s.hi, color=colour, alpha=0.15, linewidth=0)
            ax.set_title(DYNAMICS_METRICS[metric])
            ax.set_xlabel("step")
            if not series[metric]:
                ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="#888888")
        for ax in axes[len(metrics) :]:
            ax.set_visible(False)
        handles, labels = [], []
        for ax in axes:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(h)
                    labels.append(label)
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6), fontsize=9)
    return fig


def finding_figure(finding: Mapping[str, Any]) -> Figure | None:
    """A trend finding's data (findings.json `series`): the value at each step, one line per seed,
    and their mean, which is what its Kendall's tau was computed on."""
    series = finding.get("series") or {}
    points = series.get("points") or []
    if not points:
        return None
    by_seed: dict[Any, list[tuple[int, float]]] = {}
    for pt in points:
        by_seed.setdefault(pt.get("seed"), []).append((int(pt["step"]), float(pt["value"])))
    steps = sorted({s for line in by_seed.values() for s, _ in line})
    mean = [float(np.mean([v for line in by_seed.values() for s, v in line if s == step])) for step in steps]
    fig, (ax,) = _figure(4.2, 2.9)
    with matplotlib.rc_context(STYLE):
        for seed, line in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
            xs, ys = zip(*sorted(line), strict=True)
            ax.plot(xs, ys, color="#9aa5b1", linewidth=1, marker="o", markersize=2.5, label=f"seed {seed}")
        ax.plot(steps, mean, color="#1f4e79", linewidth=2, marker="o", markersize=3.5, label="mean")
        unit = f" ({series['unit']})" if series.get("unit") else ""
        ax.set_title(
            f"{finding.get('key')}: {series.get('arm')} arm, {series.get('field')}{unit}", fontsize=10
        )
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=8, frameon=False)
    return fig
