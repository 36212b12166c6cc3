"""Reports people would rather look at: paper-style tables, figures, paired tests and a sample
browser, in one self-contained HTML file (plus Markdown and LaTeX tables) comparing runs."""

from vlmstress.report.build import build_report

__all__ = ["build_report"]
