"""Reports people would rather look at: paper-style tables, figures, paired tests and a sample
browser, in one self-contained HTML file (plus Markdown and LaTeX tables) comparing runs; and
summary.md, the table every run writes (report/summary.py)."""

import sys
from types import ModuleType

__all__ = ["build_report"]


def __getattr__(name: str):
    # build_report is imported on first use (PEP 562): the runner renders summary.md through
    # report.summary, and importing the package must not load the plotting stack for that.
    if name == "build_report":
        from vlmstress.report.build import build_report

        return build_report
    raise AttributeError(f"module 'vlmstress.report' has no attribute {name!r}")


class _Package(ModuleType):
    """`vlmstress.report` is two things: the API's `report()` (docs/api.md; report/build.py) and
    this package. Once the package is imported (the runner does, for summary.md), the import system
    binds the name to it, so the package itself calls `report()`: `vlmstress.report(...)` works
    either way."""

    def __call__(self, *args, **kwargs):
        from vlmstress.report.build import report

        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
