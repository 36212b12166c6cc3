"""Markdown and LaTeX versions of the report's tables, for a README, a paper or a slide.

The same Table objects the HTML shows, so the three can never disagree. LaTeX tables use booktabs
(\\usepackage{booktabs}); every label is escaped, since model SPECs are full of underscores.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlmstress.report.runs import Run
from vlmstress.report.tables import MINUS, NULL, Cell, Table


def _cell_text(cell: Cell) -> str:
    if not cell.note:
        return cell.text
    # A CI is bracketed already; a p-value gets parentheses on one line.
    return f"{cell.text} {cell.note}" if cell.note.startswith("[") else f"{cell.text} ({cell.note})"


# Labels come from model SPECs and paths: no pipe may split a row, no tag reach a Markdown renderer.
_MD_SPECIAL = {"\\": "\\\\", "|": "\\|", "*": "\\*", "_": "\\_", "`": "\\`", "<": "&lt;", ">": "&gt;"}


def _md_escape(text: str) -> str:
    return "".join(_MD_SPECIAL.get(ch, ch) for ch in text)


def table_markdown(table: Table) -> str:
    head = ["run"] + ([table.metric_header] if table.metric_header else []) + table.columns
    lines = [
        f"### {table.title}",
        "",
        table.caption,
        "",
        "| " + " | ".join(_md_escape(h) for h in head) + " |",
        "|" + "---|" * (len(head) - len(table.columns)) + "---:|" * len(table.columns),
    ]
    for row in table.rows:
        left = [_md_escape(row.label if row.first_of_group else "")]
        if table.metric_header:
            left.append(_md_escape(row.metric or ""))
        cells = [(f"**{_cell_text(c)}**" if c.strong else _cell_text(c)) for c in row.cells]
        lines.append("| " + " | ".join(left + cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    MINUS: "$-$",
    NULL: "--",
    "·": r"$\cdot$",
    "<": r"$<$",
    ">": r"$>$",
    '"': "''",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def table_latex(table: Table) -> str:
    left = 2 if table.metric_header else 1
    head = ["run"] + ([table.metric_header] if table.metric_header else []) + table.columns
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.key}}}",
        r"\begin{tabular}{" + "l" * left + "r" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in head) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(table.rows):
        if i and row.first_of_group and table.metric_header:
            lines.append(r"\addlinespace")
        cells = [latex_escape(row.label if row.first_of_group else "")]
        if table.metric_header:
            cells.append(latex_escape(row.metric or ""))
        for c in row.cells:
            text = latex_escape(c.text)
            text = rf"\textbf{{{text}}}" if c.strong else text
            if c.note:
                text += rf" {{\scriptsize {latex_escape(c.note)}}}"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def runs_markdown(runs: Sequence[Run]) -> str:
    lines = ["| # | run | model | data | directory |", "|---|---|---|---|---|"]
    for r in runs:
        cells = [str(r.index + 1), r.label, r.model, r.data, str(r.path)]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_document(runs: Sequence[Run], tables: Sequence[Table]) -> str:
    parts = ["# vlmstress report", "", runs_markdown(runs)]
    parts += [table_markdown(t) for t in tables]
    return "\n".join(parts)


def latex_document(tables: Sequence[Table]) -> str:
    header = (
        "% vlmstress report tables. Needs \\usepackage{booktabs}; \\input{} it or copy a table.\n"
        "% Numbers are read from each run's metrics.json.\n\n"
    )
    return header + "\n".join(table_latex(t) for t in tables)
