"""summary.md: the table a person reads first, rendered from a run's metrics.json object
(metrics.py computes the numbers; this module only writes them down)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_DASH = "\u2013"
# Marks a variant whose prefill went into the user turn, wherever variants are tabled.
USER_MODE_MARK = "\u2020"


def _pct(x: float | None) -> str:
    return _DASH if x is None else f"{100 * x:.1f}"


def _accuracy_cell(v: Mapping[str, Any]) -> str:
    ci = v.get("accuracy_ci")
    if v.get("accuracy") is None or ci is None:
        return _pct(v.get("accuracy"))
    return f"{_pct(v['accuracy'])} [{_pct(ci[0])}, {_pct(ci[1])}]"


# Names in summary.md come from file names, SPECs and user variants; Markdown viewers render raw
# HTML, so tags are escaped, and a pipe must not split a table cell. A file name that is not UTF-8
# reaches Python with lone surrogates, which cannot be written: they become U+FFFD.
_MD_TEXT = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|"}


def _md_text(text: object) -> str:
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else _MD_TEXT.get(ch, ch) for ch in str(text))


def _md_names(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """`metrics` with its model, data and variant names as Markdown text (_md_text)."""
    variants = metrics.get("variants") or {}
    return {
        **metrics,
        "model": _md_text(metrics.get("model", "?")),
        "data": _md_text(metrics.get("data", "?")),
        "variants": {_md_text(name): v for name, v in variants.items()},
    }


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """The table a person reads first: one row per variant, shares in percent with one decimal,
    the drop against base in points, entropy in nats, "–" where a metric is null."""
    metrics = _md_names(metrics)
    variants: Mapping[str, Mapping[str, Any]] = metrics.get("variants", {})
    base_acc = variants.get("base", {}).get("accuracy")
    # Beside unparsed, how many answers only a fallback read; the extractor's share only in runs
    # where it read any (most runs have none, and a column of zeros would say nothing).
    extracted = any(v.get("extract_rate") for v in variants.values())
    header = (
        "| variant | n | accuracy % [95% CI] | Δ vs base (pts) | consistency-adj. acc % | unparsed % "
        "| lenient % "
        + ("| extracted % " if extracted else "")
        + "| mean entropy (nats) | mean P(correct) % | followed misleading % | flip rate % | AUROC P_base % |"
    )
    lines = [f"# {metrics.get('model', '?')} on {metrics.get('data', '?')}", ""]
    lines += [f"> **Warning:** {w}" for w in metrics.get("warnings") or []]
    if metrics.get("warnings"):
        lines.append("")
    lines += [
        header,
        "|" + "---|" * header.count(" | ") + "---|",
    ]
    for name, v in variants.items():
        acc = v.get("accuracy")
        drop = (
            _DASH if name == "base" or acc is None or base_acc is None else f"{100 * (acc - base_acc):+.1f}"
        )
        entropy = _DASH if v.get("mean_entropy") is None else f"{v['mean_entropy']:.3f}"
        n_errors = v.get("errors") or 0
        errors = f" ({n_errors} error{'s' if n_errors > 1 else ''})" if n_errors else ""
        cells = [
            name + (f" {USER_MODE_MARK}" if v.get("prefill_mode") in ("user", "mixed") else ""),
            f"{v.get('n', 0)}{errors}",
            _accuracy_cell(v),
            drop,
            _pct(v.get("consistency_adjusted_accuracy")),
            _pct(v.get("unparsed_rate")),
            _pct(v.get("lenient_rate")),
            *([_pct(v.get("extract_rate"))] if extracted else []),
            entropy,
            _pct(v.get("mean_p_correct")),
            _pct(v.get("followed_misleading")),
            _pct(v.get("flip_rate")),
            _pct(v.get("auroc_p_base")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(v.get("prefill_mode") in ("user", "mixed") for v in variants.values()):
        lines += [
            "",
            f"{USER_MODE_MARK} prefill written into the user turn, not the model's own (prefill_mode)",
        ]
    lines += _user_metrics_table(variants)
    kappa = metrics.get("judge_agreement", {}).get("fleiss_kappa", None)
    if "judge_agreement" in metrics:
        shown = _DASH if kappa is None else f"{kappa:.3f}"
        lines += ["", f"Judge agreement (Fleiss' kappa, {len(metrics.get('judges', {}))} judges): {shown}"]
    return "\n".join(lines) + "\n"


def _user_metrics_table(variants: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A second table, of the registered user metrics (register_metric), when a run has any."""
    names = list(dict.fromkeys(n for v in variants.values() for n in v.get("user_metrics") or {}))
    if not names:
        return []
    lines = ["", "| variant | " + " | ".join(map(_md_text, names)) + " |", "|---|" + "---|" * len(names)]
    for variant, v in variants.items():
        values = v.get("user_metrics") or {}
        cells = [_DASH if values.get(n) is None else f"{values[n]:.4g}" for n in names]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines
