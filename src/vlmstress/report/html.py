"""HTML rendering: one self-contained page (CSS, figures, images and script all inline).

Jinja2 with autoescape on renders every value; the only markup not written by the template is the
filter script, our own static file, allowed by the page's Content-Security-Policy through its hash.
So even a model response that slipped past escaping could not run a script of its own.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

TEMPLATE = "report.html.j2"
SCRIPT = "browser.js"


def environment() -> Environment:
    # autoescape=True for every template, whatever its file name ends with.
    return Environment(
        loader=PackageLoader("vlmstress.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def script_text() -> str:
    return (files("vlmstress.report") / "templates" / SCRIPT).read_text(encoding="utf-8")


def csp_hash(script: str) -> str:
    """The CSP source expression that allows exactly this inline script."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


# The template's indentation before a tag: a tenth of a study's page, and nothing a browser shows.
# Model text cannot match (the template escapes its "<"); a newline stays, as the space it renders.
_INDENT = re.compile(r">\n[ \t]+<")


def render_html(context: dict[str, Any]) -> str:
    script = script_text()
    page = environment().get_template(TEMPLATE).render(**context, script=script, script_hash=csp_hash(script))
    return _INDENT.sub(">\n<", page)
